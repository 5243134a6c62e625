"""Animation and composition: every mode of vqclip from one config, all driving the same `Run`.

    image        one picture (`vqclip.generate.generate`)
    story        one run whose prompts change scene by scene (`run_story`)
    zoom         frames that zoom, pan and rotate into the picture (`run_zoom`)
    interpolate  frames that move from prompt to prompt (`run_interpolate`)
    restyle      every frame of an input video under the prompts (`run_restyle`)

`run_mode(config)` runs whichever `config.mode` names. Importing this package loads nothing heavy;
the modes import their modules when run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig
    from vqclip.generate import Callback, Models


def run_mode(config: "GenerateConfig", *, models: Optional["Models"] = None, callbacks: Sequence["Callback"] = (),
             progress: bool = True, save: bool = True) -> Any:
    """Run `config` in its `mode`; returns a GenerationResult (image, story) or an AnimationResult."""
    kwargs = dict(models=models, callbacks=callbacks, progress=progress, save=save)
    if config.mode == "story":
        from vqclip.animate.story import run_story

        return run_story(config, **kwargs)
    if config.mode == "zoom":
        from vqclip.animate.zoom import run_zoom

        return run_zoom(config, **kwargs)
    if config.mode == "interpolate":
        from vqclip.animate.interpolate import run_interpolate

        return run_interpolate(config, **kwargs)
    if config.mode == "restyle":
        from vqclip.animate.restyle import run_restyle

        return run_restyle(config, **kwargs)
    from vqclip.generate import generate

    return generate(config, **kwargs)
