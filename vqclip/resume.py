"""Resumable run state: what `vqclip resume RUN_DIR` needs to continue a run exactly where it stopped.

`state.pt` in a run folder holds only tensors and plain containers, so it is read back with
`torch.load(weights_only=True)` and nothing in it can run code: the config as YAML text, the latent
and its starting point, the optimiser's state_dict, the number of steps done, the loss of each step,
the count of numerical faults, and torch's RNG states (CPU, and CUDA when used). It is written
atomically when a run ends, whether finished, interrupted or stopped by a numerical fault.

Resuming rebuilds the run from its config (same seed, so the same targets), then puts the saved
latent, optimiser state, step and RNG state back. The cutouts and augmentations draw from torch's
global RNG, so restoring it exactly where it was after the last completed step makes a resumed run
on the CPU reach the same final image, byte for byte, as one that was never interrupted.

Not here: the loop (generate.py) and the files of a run (outputs.py).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

import torch

from vqclip.errors import ResumeError, VQClipError

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig
    from vqclip.generate import GenerationResult, Models, Run

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FORMAT = 1
# Keys a resumed run may change: its length, where it runs, and how often it writes frames.
# Anything else (prompts, size, models, lr, ...) would make it a different run: start a new one.
RESUMABLE_KEYS = ("steps", "device", "output.save_every", "output.video_every")


def capture_state(run: "Run") -> Dict[str, Any]:
    """The state of a run between steps, as CPU tensors and plain containers (nothing is saved yet)."""
    from vqclip.config import to_yaml

    opt = run.opt.state_dict()
    return {
        "format": FORMAT,
        "config": to_yaml(run.config),
        "step": int(run.step_index),
        "losses": [float(x) for x in run.losses],
        "faults": int(getattr(run, "faults", 0)),
        "z": run.z.detach().cpu().clone(),
        "z_start": run.z_start.detach().cpu().clone(),
        "optimizer": _to_cpu(opt),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
    }


def _to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_state(state: Dict[str, Any], run_dir: Path) -> Path:
    """Write `state` to `run_dir/state.pt` atomically; return the path."""
    import io

    from vqclip.outputs import atomic_write

    buf = io.BytesIO()  # serialise in memory: a failing file write is then a plain OSError (full disk, size limit)
    torch.save(state, buf)
    return atomic_write(Path(run_dir) / STATE_FILE, lambda tmp: tmp.write_bytes(buf.getvalue()))


def load_state(run_dir: str | Path) -> Dict[str, Any]:
    """Read and check `run_dir/state.pt` (weights_only: tensors and plain containers only)."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume {run_dir}: no such run folder")
    if not path.is_file():
        raise ResumeError(f"cannot resume {run_dir}: it has no {STATE_FILE} (written when a run ends or is "
                          "interrupted; runs made with --no-save or by an animation mode have none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ResumeError(f"refused to load {path}: it holds something other than tensors and plain "
                          f"containers ({str(exc).splitlines()[0][:200]}); nothing in it was run") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ResumeError(f"cannot resume {run_dir}: {STATE_FILE} is corrupt or truncated "
                          f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    need = {"format": int, "config": str, "step": int, "losses": list, "faults": int, "z": torch.Tensor,
            "z_start": torch.Tensor, "optimizer": dict, "rng_cpu": torch.Tensor, "rng_cuda": list}
    bad = [k for k, t in need.items() if not isinstance(state, dict) or not isinstance(state.get(k), t)]
    if bad:
        raise ResumeError(f"cannot resume {run_dir}: {STATE_FILE} lacks or has a wrong '{bad[0]}'")
    if state["format"] != FORMAT:
        raise ResumeError(f"cannot resume {run_dir}: {STATE_FILE} has format {state['format']}; "
                          f"this vqclip reads format {FORMAT}")
    return state


def resume_config(state: Dict[str, Any], overrides: Sequence[str] = ()) -> "GenerateConfig":
    """The saved config with the allowed `overrides` (see RESUMABLE_KEYS) applied and checked."""
    from vqclip.config import apply_overrides, from_yaml_text

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise ResumeError(f"override '{item}' is not of the form key=value (e.g. steps=500)")
        if key not in RESUMABLE_KEYS:
            raise ResumeError(f"config key '{key}' cannot change when resuming (it would be a different run); "
                              f"allowed: {', '.join(RESUMABLE_KEYS)}")
    config = apply_overrides(from_yaml_text(state["config"]), overrides)
    if config.mode != "image":
        raise ResumeError(f"cannot resume a mode={config.mode} run; allowed: mode=image runs")
    done = state["step"]
    if config.steps < done:
        raise ResumeError(f"bad value for config key 'steps': {config.steps}, but the run has done {done} steps; "
                          f"allowed: steps >= {done}")
    if config.steps == done:
        raise ResumeError(f"the run is finished ({done} of {done} steps); give steps=N with N > {done} to extend it")
    return config


def apply_state(run: "Run", state: Dict[str, Any]) -> None:
    """Put a saved latent, optimiser state, step, losses and RNG state into a freshly built `Run`."""
    from vqclip.config import batch_count

    # A race's state holds every copy until its first cut, fewer after each cut (race_halving), one
    # latent per image after the race. How many copies were saved is read from the latent itself: a
    # finished run whose race outlasted it (its last step ended the race) and is now extended to more
    # steps has cuts past the saved step.
    images = batch_count(run.config)
    saved = state["z"].shape[0] // images if state["z"].shape[0] % images == 0 else 0
    if getattr(run, "racing", False) and 1 <= saved < run.copies:
        run.cut_race(saved, choose=False)  # saved after a cut: that many copies per image, replaced just below
    if tuple(state["z"].shape) != tuple(run.z.shape):
        raise ResumeError(f"the saved latent has shape {tuple(state['z'].shape)}, the run needs {tuple(run.z.shape)}")
    with torch.no_grad():
        run.z.copy_(state["z"].to(run.z))
        run.z_start = state["z_start"].to(run.z)
    try:
        run.opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ResumeError(f"the saved optimiser state does not fit this run: {exc}") from None
    run.step_index = state["step"]
    run.losses = list(state["losses"])
    run.faults = state["faults"]
    torch.set_rng_state(state["rng_cpu"])
    if run.device.type == "cuda" and state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in `run_dir`."""
    import shlex

    return f"vqclip resume {shlex.quote(str(run_dir))}"


def resume(run_dir: str | Path, overrides: Sequence[str] = (), *, models: Optional["Models"] = None,
           callbacks: Sequence[Any] = (), progress: bool = True) -> "GenerationResult":
    """Continue the run saved in `run_dir` (interrupted, or finished and extended with steps=N).

    Writes into the same folder: frames continue, the progress video is rewritten as one video with
    the earlier frames first, and config.yaml, image.png and state.pt are replaced atomically.
    """
    from vqclip.generate import generate

    run_dir = Path(run_dir)
    state = load_state(run_dir)
    from vqclip.config import one_line

    try:
        config = resume_config(state, overrides)
    except ResumeError as exc:
        raise ResumeError(one_line(str(exc))) from None
    except VQClipError as exc:
        raise ResumeError(f"cannot resume {run_dir}: {one_line(str(exc))}") from None
    log.info("resuming %s at step %d of %d", run_dir, state["step"], config.steps)
    return generate(config, models=models, callbacks=callbacks, progress=progress, resume=(run_dir, state))
