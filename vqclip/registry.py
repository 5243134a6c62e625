"""Named VQGAN models: the registry (registry.yaml) and fetching a model's files into the cache.

`load_registry()` reads registry.yaml into `ModelEntry` records; `ensure_model(name)` returns the
paths of a model's config and checkpoint, downloading what is missing through `vqclip.download`.
`cached_status` and `format_model_table` are what a `vqclip models` listing needs. Cached files
live in `<cache>/<name>/config.yaml` and `<cache>/<name>/model.ckpt`.

Not here: HTTP and verification (download.py), building or loading models (models/).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

import yaml

from vqclip.download import (DEFAULT_TIMEOUT, FetchError, Timeout, cache_path, describe_failures, fetch,
                             resolve_cache_dir)
from vqclip.errors import ConfigError, DownloadError

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
FAMILIES = ("VQModel", "GumbelVQ")
CONFIG_FILENAME = "config.yaml"
CHECKPOINT_FILENAME = "model.ckpt"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its mirrors (tried in order), and its size/sha256 where published."""

    urls: Tuple[str, ...]
    size: Optional[int] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class ModelEntry:
    """A named VQGAN: taming class, downsampling factor, codebook size, and where its files live."""

    name: str
    family: str  # "VQModel" or "GumbelVQ"
    factor: int  # pixels per latent cell along each side
    codebook_size: int
    description: str
    source: str
    config: RemoteFile
    checkpoint: RemoteFile


@dataclass(frozen=True)
class ModelStatus:
    """What the cache holds for one model (by file presence and size; no hashing)."""

    name: str
    config_path: Path
    checkpoint_path: Path
    config_cached: bool
    checkpoint_cached: bool
    partial_bytes: int  # bytes in a leftover checkpoint `.part`, resumed on the next fetch

    @property
    def state(self) -> str:
        """'cached', 'partial' (something there, not all) or 'missing'."""
        if self.config_cached and self.checkpoint_cached:
            return "cached"
        if self.config_cached or self.checkpoint_cached or self.partial_bytes:
            return "partial"
        return "missing"


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}")


def _remote(raw: Any, where: str) -> RemoteFile:
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a mapping with 'urls'")
    unknown = set(raw) - {"urls", "size", "sha256"}
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}; allowed: urls, size, sha256")
    urls = raw.get("urls")
    if not isinstance(urls, list) or not urls:
        raise _fail(where, "'urls' must be a non-empty list")
    for url in urls:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(where, f"{url!r} is not an http(s) URL")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise _fail(where, f"size must be a positive integer or null, not {size!r}")
    sha = raw.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise _fail(where, "sha256 must be 64 hex digits or null")
    return RemoteFile(tuple(urls), size, sha.lower() if sha else None)


def _entry(name: Any, raw: Any, where: str) -> ModelEntry:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(where, f"model name {name!r} must match {_NAME.pattern}")
    where = f"{where}: {name}"
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a mapping")
    required = {"family", "factor", "codebook", "description", "source", "config", "checkpoint"}
    missing, unknown = required - set(raw), set(raw) - required
    if missing or unknown:
        raise _fail(where, f"missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    if raw["family"] not in FAMILIES:
        raise _fail(where, f"family {raw['family']!r} is not one of {', '.join(FAMILIES)}")
    for key in ("factor", "codebook"):
        value = raw[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value & (value - 1):
            raise _fail(where, f"{key} must be a positive power of two, not {value!r}")
    for key in ("description", "source"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise _fail(where, f"{key} must be a non-empty string")
    return ModelEntry(name=name, family=raw["family"], factor=raw["factor"], codebook_size=raw["codebook"],
                      description=raw["description"].strip(), source=raw["source"].strip(),
                      config=_remote(raw["config"], f"{where}.config"),
                      checkpoint=_remote(raw["checkpoint"], f"{where}.checkpoint"))


def load_registry(path: Optional[PathLike] = None) -> Dict[str, ModelEntry]:
    """Read a registry YAML (default: the one shipped with vqclip) into {name: ModelEntry}."""
    path = Path(path) if path is not None else REGISTRY_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read model registry {path}: {exc}") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise _fail(str(path), "needs a non-empty 'models' mapping")
    return {name: _entry(name, raw, str(path)) for name, raw in models.items()}


def get_entry(name: str, registry: Optional[Mapping[str, ModelEntry]] = None) -> ModelEntry:
    """The registry entry for `name`; an unknown name gets a ConfigError listing the known ones."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown VQGAN model {name!r}; known models: {', '.join(sorted(registry))} "
                          "(or give vqgan.config and vqgan.checkpoint as paths or URLs)")
    return registry[name]


def model_paths(name: str, cache_dir: Optional[PathLike] = None) -> Tuple[Path, Path]:
    """Where a model's (config, checkpoint) live in the cache; also where to place them by hand."""
    if not _NAME.fullmatch(name):
        raise DownloadError(f"refusing model name {name!r}: it must match {_NAME.pattern}")
    return (cache_path(cache_dir, name, CONFIG_FILENAME), cache_path(cache_dir, name, CHECKPOINT_FILENAME))


def ensure_model(name: str, cache_dir: Optional[PathLike] = None, progress: bool = True, *,
                 registry: Optional[Mapping[str, ModelEntry]] = None,
                 timeout: Timeout = DEFAULT_TIMEOUT) -> Tuple[Path, Path]:
    """Return (config path, checkpoint path) of a named model, downloading and verifying what is missing.

    Both files are attempted before failing, so one `DownloadError` names everything that could not
    be fetched, each URL tried with its reason, and the exact paths to place the files by hand.
    """
    entry = get_entry(name, registry)
    config_path, checkpoint_path = model_paths(name, cache_dir)
    failures = []
    for remote, dest, kind in ((entry.config, config_path, "config"),
                               (entry.checkpoint, checkpoint_path, "checkpoint")):
        try:
            fetch(remote.urls, dest, size=remote.size, sha256=remote.sha256, kind=kind,
                  progress=progress, timeout=timeout, label=f"{name} {kind}")
        except FetchError as err:
            failures.append(err)
    if failures:
        raise DownloadError(describe_failures(failures)) from failures[0]
    return config_path, checkpoint_path


def cached_status(name: str, cache_dir: Optional[PathLike] = None, *,
                  registry: Optional[Mapping[str, ModelEntry]] = None) -> ModelStatus:
    """Which of a model's files are in the cache (present, right size when known); reads no file."""
    entry = get_entry(name, registry)
    config_path, checkpoint_path = model_paths(name, cache_dir)
    size = entry.checkpoint.size
    ckpt_ok = checkpoint_path.is_file() and (size is None or checkpoint_path.stat().st_size == size)
    part = checkpoint_path.with_name(checkpoint_path.name + ".part")
    return ModelStatus(name=name, config_path=config_path, checkpoint_path=checkpoint_path,
                       config_cached=config_path.is_file(), checkpoint_cached=ckpt_ok,
                       partial_bytes=part.stat().st_size if part.is_file() else 0)


def _human(size: Optional[int]) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:,.0f} MB" if size >= 1_000_000 else f"{size:,} B"


def format_model_table(cache_dir: Optional[PathLike] = None, *,
                       registry: Optional[Mapping[str, ModelEntry]] = None) -> str:
    """A plain-text table of the registry (name, family, factor, codebook, size, cache state) for `vqclip models`."""
    registry = load_registry() if registry is None else registry
    rows = [("name", "family", "f", "codebook", "size", "cached", "description")]
    for name in sorted(registry):
        entry = registry[name]
        status = cached_status(name, cache_dir, registry=registry)
        state = status.state
        if state == "partial" and status.partial_bytes and entry.checkpoint.size:
            state = f"partial {100 * status.partial_bytes // entry.checkpoint.size}%"
        rows.append((name, entry.family, str(entry.factor), str(entry.codebook_size),
                     _human(entry.checkpoint.size), state, entry.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"cache: {resolve_cache_dir(cache_dir)} (set $VQCLIP_CACHE or cache_dir to move it)")
    return "\n".join(lines)
