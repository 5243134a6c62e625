"""A frozen CLIP model through open_clip, with its own input size and normalisation.

`load_clip(model, pretrained)` accepts an open_clip model name or a path to an open_clip
model-config JSON, and a pretrained tag (downloaded through open_clip's own cache), a local state
dict, or OpenAI's TorchScript archive. The returned `ClipModel` takes images in [0, 1] at its input
size and applies the model's normalisation itself, so callers never handle mean/std.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from vqclip.errors import CheckpointError, ConfigError, DownloadError, looked_up

log = logging.getLogger(__name__)

NO_WEIGHTS = (None, "", "none", "null")  # clip.pretrained values that mean random weights


class ClipModel(nn.Module):
    """Frozen open_clip model + tokenizer + preprocessing constants.

    - `input_size`: side of the square images `encode_image` expects.
    - `encode_image(x [N, 3, S, S] in [0, 1]) -> [N, D]` (unnormalised embeddings).
    - `encode_text(texts) -> [len(texts), D]`.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        sequence_first(getattr(model, "visual", model))
        self.tokenizer = tokenizer
        self.name = name
        size = getattr(model.visual, "image_size", 224)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, S, S] in [0, 1] (S = input_size) -> embeddings [N, D]."""
        return self.model.encode_image((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> embeddings [len(texts), D] (float32)."""
        device = self.mean.device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.model.encode_text(tokens).float()


def sequence_first(visual: nn.Module) -> bool:
    """Run a ViT image tower's attention on sequence-first (L, N, D) tensors, as OpenAI's CLIP code
    does, instead of open_clip's batch-first default; return whether anything changed.

    The arithmetic is the same. But with batch-first tensors `nn.MultiheadAttention` hands its
    input projection a transposed view, which `F.linear` turns into a batched matmul over a copy
    of the weight for every token position: under CPU bfloat16 autocast that copying took about
    two thirds of ViT-B-32's forward pass at 32 cutouts (about 1.1 of 1.6 s).
    """
    transformer = getattr(visual, "transformer", None)
    if transformer is None or getattr(transformer, "batch_first", None) is not True:
        return False
    attentions = [m for m in transformer.modules() if isinstance(m, nn.MultiheadAttention)]
    if not attentions or not all(m.batch_first for m in attentions):
        return False
    transformer.batch_first = False  # open_clip's Transformer then transposes in and out itself
    for m in attentions:
        m.batch_first = False
    return True


def _is_torchscript(path: Path) -> bool:
    """OpenAI's published CLIP files are TorchScript zip archives holding code/ and constants.pkl."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def resolve_model_name(model: str) -> str:
    """Register a model-config JSON path with open_clip, or check a model name; return the name."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"bad value for config key 'clip.model': {model!r}; the model-config JSON does not exist "
                              f"({looked_up(model)})")
        open_clip.add_model_config(path)
        return path.stem
    known: List[str] = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise ConfigError(f"bad value for config key 'clip.model': unknown open_clip model {model!r}{hint}")
    return model


def check_clip_files(model: str, pretrained: Optional[str]) -> None:
    """Fail now, before any model loads or downloads, when a local file that names this CLIP is
    missing: the model-config JSON `model` or the weights file `pretrained` (the same errors as
    `load_clip`'s; tags are checked as they load)."""
    if model.endswith(".json"):
        resolve_model_name(model)
    if pretrained not in NO_WEIGHTS and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise CheckpointError(f"CLIP weights file not found: {looked_up(pretrained)}")


def load_clip(model: str, pretrained: Optional[str] = None, *, device: str | torch.device = "cpu",
              cache_dir: Optional[str | Path] = None) -> ClipModel:
    """Build a frozen float32 CLIP from an open_clip name/JSON and a tag, weights file or None."""
    import open_clip

    name = resolve_model_name(model)
    kwargs = {"precision": "fp32", "device": "cpu"}
    if pretrained in NO_WEIGHTS:
        log.warning("CLIP %s has random weights (clip.pretrained is null): fine for tests, useless for images", name)
        net = open_clip.create_model(name, pretrained=None, **kwargs)
    elif Path(pretrained).is_file():
        path = Path(pretrained)
        if _is_torchscript(path):
            log.info("loading OpenAI TorchScript CLIP archive %s", path)
            try:
                net = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
            except Exception as exc:
                raise CheckpointError(f"CLIP weights {path} could not be read as an OpenAI archive: "
                                      f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        else:
            net = _create_from_file(open_clip, name, path, kwargs)
    elif _looks_like_path(pretrained):
        raise CheckpointError(f"CLIP weights file not found: {looked_up(pretrained)}")
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            allowed = ", ".join(tags) if tags else "none published; use a local weights file or null"
            raise ConfigError(f"bad value for config key 'clip.pretrained': {pretrained!r} is not a tag for "
                              f"{name}; allowed: {allowed}")
        if pretrained == "openai" and "quickgelu" not in name.lower():
            # OpenAI's weights were trained with QuickGELU; the plain config would load them silently wrong.
            log.warning("clip.model %s with OpenAI weights: using QuickGELU activations as those weights need", name)
            kwargs["force_quick_gelu"] = True
        try:
            with _hub_offline_when_unreachable():
                net = open_clip.create_model(name, pretrained=pretrained,
                                             cache_dir=str(cache_dir) if cache_dir else None, **kwargs)
        except Exception as exc:  # network failures surface as many exception types
            raise DownloadError(f"could not fetch CLIP weights {name}/{pretrained} through open_clip "
                                f"(cache {cache_dir or 'open_clip default'}): "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                                "Without network, pass a local weights file as clip.pretrained, or run the "
                                "bundled demo: --config configs/shapes.yaml") from None
    tokenizer = open_clip.get_tokenizer(name)
    return ClipModel(net, tokenizer, name).to(device)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (DNS failures return at once)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_when_unreachable():
    """Put huggingface_hub in offline mode while the hub cannot be reached.

    Without it, a cache miss with no network retries for most of a minute before failing; in offline
    mode a cached file is used at once and a missing one fails at once.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    offline = before or os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable()
    if offline and not before:
        log.info("huggingface.co is unreachable: using open_clip's cache only")
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create_from_file(open_clip, name: str, path: Path, kwargs: dict) -> nn.Module:
    """Build `name` and load a local state-dict file into it (strictly, through open_clip)."""
    try:
        return open_clip.create_model(name, pretrained=str(path), **kwargs)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(f"refused to load CLIP weights {path}: the file names code, not just tensors; "
                                  "nothing in it was run") from None
        raise CheckpointError(f"CLIP weights {path} do not fit model {name}: {text}") from None

