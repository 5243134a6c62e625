"""mode=story: one run whose prompts change scene by scene, with weights that can cross-fade.

The story is resolved from the config (`vqclip.animate.schedule`), every scene's prompts are
embedded once by every CLIP model, and `generate` runs as usual with targets whose weights follow
the schedule at each step, so a story gets the same outputs as an image: frames, one progress
video over the whole story, and the final PNG.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

from vqclip.animate.schedule import Story, resolve_story
from vqclip.animate.targets import ScaledTarget, clip_models, embed_text, set_text_targets
from vqclip.config import GenerateConfig, validate
from vqclip.generate import Callback, GenerationResult, Models, Run, generate

log = logging.getLogger(__name__)


def install_story(run: Run, story: Story) -> None:
    """Give `run` the story's targets: prompts held throughout plus each scene's, weighted by step."""
    def factor(scene: int):
        return lambda: story.weights(run.step_index)[scene]

    per_model = []
    for clip in clip_models(run):
        targets = list(embed_text(clip, story.global_prompts, run.device))
        for i, scene in enumerate(story.scenes):
            targets += [ScaledTarget(t, factor(i)) for t in embed_text(clip, scene.prompts, run.device)]
        per_model.append(targets)
    set_text_targets(run, per_model)


def run_story(config: GenerateConfig, *, models: Optional[Models] = None, callbacks: Sequence[Callback] = (),
              progress: bool = True, save: bool = True) -> GenerationResult:
    """Run a story (mode=story): `generate` with the prompts following the scene schedule.

    The run lasts the story's length, which replaces `steps` in the recorded config when the
    scenes set it (see `vqclip.animate.schedule`). Returns `generate`'s result.
    """
    validate(config)
    story = resolve_story(config)
    for i, scene in enumerate(story.scenes):
        log.info("scene %d: steps %d-%d: %s", i, scene.start, scene.end - 1, " | ".join(scene.prompts))
    if story.total != config.steps:
        log.info("the story lasts %d steps (its scenes' lengths), not steps=%d", story.total, config.steps)
        config = dataclasses.replace(config, steps=story.total)
    return generate(config, models=models, callbacks=callbacks, progress=progress, save=save,
                    setup=lambda run: install_story(run, story))
