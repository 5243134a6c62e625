"""Safe loading of the published checkpoint files.

The published VQGAN `.ckpt` files are PyTorch Lightning 1.x pickles: besides tensors they name a few
Lightning classes (the ModelCheckpoint callback as a dict key) and hold optimiser states. We read
them with `torch.load(weights_only=True)`, whose unpickler only builds tensors and plain containers,
plus an explicit allow-list that maps those few class names to inert placeholders: nothing is
imported from Lightning and nothing in the file runs. A file that names anything else is refused.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from vqclip.errors import CheckpointError, looked_up

log = logging.getLogger(__name__)


class LightningPlaceholder:
    """Stands in for a Lightning class named in a checkpoint; it is never instantiated with code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Class names seen in published Lightning 1.x / 2.x checkpoints. Each maps to the inert placeholder.
ALLOWED_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)


def _allow_list() -> list:
    return [(LightningPlaceholder, name) for name in ALLOWED_GLOBALS]


def safe_load(path: str | Path) -> Dict[str, Any]:
    """Load a checkpoint on the CPU without running any code in it; raise CheckpointError if unsafe.

    Returns the unpickled object (for Lightning files a dict with a "state_dict" key).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {looked_up(path)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); fetch or copy it again")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        raise CheckpointError(f"checkpoint {path} is an HTML page, not a checkpoint (a failed download?)")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(f"checkpoint {path} is not a PyTorch file (unknown header {head[:4]!r})")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (its zip index is unreadable); fetch it again")
    try:
        with torch.serialization.safe_globals(_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if "Unsupported global" in detail or "GLOBAL" in detail or "not an allowed global" in detail:
            name = _unsupported_name(detail)
            raise CheckpointError(
                f"refused to load {path}: it references {name}, which is not an allowed type "
                "(a checkpoint that names code may run it when unpickled); nothing in it was run") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {_first_line(detail)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return "unreadable"


def _unsupported_name(detail: str) -> str:
    """Pull the offending global's name out of torch's weights_only error text."""
    for marker in ("GLOBAL ", "Unsupported global: "):
        if marker in detail:
            rest = detail.split(marker, 1)[1].split()
            if rest:
                name = rest[0].rstrip(".,:")
                if name != "GLOBAL":
                    return name
                if len(rest) > 1:
                    return rest[1].rstrip(".,:")
    return "a disallowed global"


def state_dict_of(ckpt: Any, path: str | Path) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: `ckpt["state_dict"]`, or the dict itself."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors")
    return sd
