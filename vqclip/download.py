"""Fetching model files into the cache: mirrors, resume, verification, clear offline errors.

`fetch(urls, dest, ...)` puts one file at `dest`, trying each mirror in turn. A download streams
into `dest.part` and is renamed to `dest` only once it is complete and verified (size when known,
sha256 when known, and a format check: a torch file for checkpoints, a taming YAML for configs).
A dropped connection is resumed with an HTTP Range request, within a run and across runs (a
leftover `.part`). A file already in the cache is checked before it is handed out: against the
published size/sha256 and against the sha256 recorded in a `<file>.sha256` sidecar when it was
first verified, so a truncated or damaged file is fetched again instead of reaching torch.load.

`fetch_url(url, ...)` does the same for a plain http(s) URL given by a user. Cache file names come
from the registry name or a hash of the URL, never from the server.

Not here: which models exist and where (registry.py), loading the files (models/, checkpoints).
HTTP is done with `requests` (see docs/downloads.md for why).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Literal, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

import requests
import yaml
from tqdm import tqdm

from vqclip.errors import DownloadError

log = logging.getLogger(__name__)

Kind = Literal["checkpoint", "config", "any"]
Timeout = Union[float, Tuple[float, float]]

ENV_CACHE = "VQCLIP_CACHE"
# Connect fast or move on (DNS failures and refused connections fail at once anyway); allow a slow
# server a minute between bytes before giving up on it.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
DEFAULT_TIMEOUT: Tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)
OFFLINE_HINT = "or run offline with the bundled demo models: --config configs/shapes.yaml"

_CHUNK = 1 << 20
_MAX_RESUMES = 5  # reconnections per mirror, each of which must have made progress
_MAX_CONFIG_BYTES = 1 << 20
_HEADERS = {
    "User-Agent": "vqclip",
    # Ranges count raw bytes; a compressed transfer would make resume offsets meaningless.
    "Accept-Encoding": "identity",
}


class FetchError(DownloadError):
    """No URL could deliver a file; `attempts` holds (url, short reason) for each one tried."""

    def __init__(self, label: str, dest: Path, attempts: Sequence[Tuple[str, str]], note: Optional[str] = None):
        self.label = label
        self.dest = dest
        self.attempts = list(attempts)
        self.note = note
        super().__init__(describe_failures([self]))


class _Unusable(Exception):
    """What a server delivered is not the file we asked for (HTML page, wrong size, bad format)."""


# ---------------------------------------------------------------------------------------------
# Cache folder and paths


def default_cache_dir() -> Path:
    """The cache folder when none is given: `$VQCLIP_CACHE`, else the user's cache dir + `vqclip`."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return (base / "vqclip" / "Cache").absolute()
    if sys.platform == "darwin":
        return (Path.home() / "Library" / "Caches" / "vqclip").absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return (base / "vqclip").absolute()


def resolve_cache_dir(cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """The explicit `cache_dir` if given (as the config passes it), else `default_cache_dir()`."""
    if cache_dir is None or str(cache_dir).strip() == "":
        return default_cache_dir()
    return Path(cache_dir).expanduser().absolute()


def clip_cache_dir(cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """Where open_clip keeps CLIP weights: `<cache>/clip`, for `create_model(..., cache_dir=...)`."""
    return resolve_cache_dir(cache_dir) / "clip"


def cache_path(cache_dir: Union[str, os.PathLike, None], *parts: str) -> Path:
    """`<cache>/<parts...>`, refusing any path that would land outside the cache folder."""
    root = resolve_cache_dir(cache_dir)
    path = root.joinpath(*parts)
    real_root, real_path = root.resolve(), path.resolve()
    if real_path == real_root or real_root not in real_path.parents:
        raise DownloadError(f"refusing to use {path}: it is outside the cache folder {root}")
    return path


def safe_filename(name: str, default: str = "file") -> str:
    """`name` reduced to `[A-Za-z0-9._-]`, no leading dots, at most 80 characters (else `default`)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:80]
    return cleaned if cleaned.strip("_") else default


# ---------------------------------------------------------------------------------------------
# Checking files


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<body"))


def _format_problem(path: Path, kind: Kind) -> Optional[str]:
    """Why `path` is not a file of `kind` (a noun phrase), or None."""
    if kind == "any":
        return None
    with open(path, "rb") as fh:
        head = fh.read(512)
    if _looks_html(head):
        return f"an HTML page, not a {kind}"
    if kind == "checkpoint":
        if head.startswith(b"PK\x03\x04"):
            try:
                with zipfile.ZipFile(path) as archive:  # reads the central directory at the end
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError):
                return "a truncated or damaged torch zip archive"
            if not any(n.endswith("data.pkl") for n in names):
                return "a zip archive that is not a torch checkpoint"
            return None
        if head.startswith(b"\x80"):  # torch's legacy (pre-1.6) pickle format
            return None
        return f"not a torch checkpoint (it starts with {head[:8]!r})"
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        return "too large to be a model config"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return f"not valid YAML ({str(exc).splitlines()[0]})"
    model = data.get("model") if isinstance(data, dict) else None
    if not (isinstance(model, dict) and isinstance(model.get("target"), str)):
        return "YAML without model.target, not a taming model config"
    return None


def check_file(path: Path, *, size: Optional[int] = None, sha256: Optional[str] = None,
               kind: Kind = "any") -> Optional[str]:
    """Why `path` is not the expected file (a noun phrase such as "a file of 3 bytes, ..."), or None."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"a file of {actual:,} bytes, expected {size:,}"
    if actual == 0:
        return "an empty file"
    problem = _format_problem(path, kind)
    if problem:
        return problem
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256.lower():
            return f"a file with sha256 {digest[:16]}..., expected {sha256.lower()[:16]}..."
    return None


def sidecar_path(path: Path) -> Path:
    """The `<file>.sha256` sidecar holding the digest recorded when `path` was first verified."""
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: Path) -> Optional[str]:
    """The sha256 recorded for `path`, or None when there is no (readable) record."""
    try:
        token = sidecar_path(path).read_text(encoding="ascii").split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return token if re.fullmatch(r"[0-9a-f]{64}", token) else None


def _write_sidecar(path: Path, digest: str) -> None:
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")  # `sha256sum -c` format
    os.replace(tmp, side)


def _discard(path: Path) -> None:
    for p in (path, sidecar_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def check_cached(dest: Path, *, size: Optional[int] = None, sha256: Optional[str] = None,
                 kind: Kind = "any") -> Optional[str]:
    """Why the cached `dest` may not be used (None: it is good). Records a sidecar if it has none."""
    problem = check_file(dest, size=size, kind=kind)
    if problem:
        return problem
    digest = file_sha256(dest)
    recorded = read_sidecar(dest)
    if sha256 is not None and digest != sha256.lower():
        return f"a file with sha256 {digest[:16]}..., expected {sha256.lower()[:16]}..."
    if recorded is not None and digest != recorded:
        return "a file whose sha256 no longer matches the one recorded when it was downloaded"
    if recorded is None:  # placed by hand, or the sidecar was lost: record what we verified
        _write_sidecar(dest, digest)
    return None


# ---------------------------------------------------------------------------------------------
# Downloading


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold `<dest>.lock` so two processes never write the same `.part` at once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; concurrent fetches of one file are rare
        yield
        return
    lock = dest.with_name(dest.name + ".lock")
    while True:
        fh = open(lock, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is fetching %s", dest)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file we locked: then lock the new one
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        fh.close()


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """(start, total) from `bytes a-b/total` or `bytes */total`; None for what is absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


@dataclass
class _Progress:
    bar: Optional[tqdm] = None

    def start(self, total: Optional[int], initial: int, desc: str, enabled: bool) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=desc, disable=not enabled)
        else:
            self.bar.reset(total=total)
            self.bar.update(initial)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Opener:
    """Opens the `.part` on the first write, so a rejected response leaves no empty file behind."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode, self.fh = path, mode, None

    def write(self, data: bytes) -> None:
        if self.fh is None:
            self.fh = open(self.path, self.mode)
        self.fh.write(data)

    def __enter__(self) -> "_Opener":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.fh is None and exc_type is None and self.mode == "wb":
            self.fh = open(self.path, "wb")  # an empty body still replaces what was there
        if self.fh is not None:
            self.fh.close()


def _download(session: requests.Session, url: str, part: Path, *, size: Optional[int], kind: Kind,
              timeout: Timeout, progress: bool, desc: str) -> int:
    """Stream `url` into `part`, resuming from what `part` holds. Returns the byte offset it resumed from."""
    resumed_from = part.stat().st_size if part.exists() else 0
    bar = _Progress()
    try:
        for _ in range(_MAX_RESUMES + 1):
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and offset:
                    _, total = _content_range(resp.headers.get("Content-Range"))
                    if total == offset:  # the .part already holds the whole file
                        return resumed_from
                    log.info("%s: cannot resume at byte %d; starting over", url, offset)
                    part.unlink()
                    continue
                resp.raise_for_status()
                if kind != "any" and "text/html" in resp.headers.get("Content-Type", "").lower():
                    raise _Unusable(f"served an HTML page, not a {kind}")
                start, total = _content_range(resp.headers.get("Content-Range"))
                if resp.status_code == 206:
                    if not offset or start != offset:
                        raise _Unusable(f"answered a request for bytes {offset}- with range {start}-")
                    mode = "ab"
                else:
                    if offset:
                        log.info("%s does not resume downloads; starting over", url)
                    offset, mode = 0, "wb"
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if size is not None and total is not None and total != size:
                    raise _Unusable(f"offers {total:,} bytes, expected {size:,}")
                total = total if total is not None else size
                bar.start(total, offset, desc, progress)
                # A connection that dies early should hand over the bytes it did deliver (they are
                # resumed from) instead of raising and dropping the last partial read.
                if hasattr(resp.raw, "enforce_content_length"):
                    resp.raw.enforce_content_length = False
                written = 0
                try:
                    with _Opener(part, mode) as out:
                        for chunk in resp.iter_content(_CHUNK):
                            if out.fh is None and not offset and kind != "any" and _looks_html(chunk[:512]):
                                raise _Unusable(f"served an HTML page, not a {kind}")
                            out.write(chunk)
                            written += len(chunk)
                            bar.bar.update(len(chunk))
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                        requests.Timeout) as exc:
                    if not written:
                        raise
                    log.info("%s: connection lost after %d bytes (%s); resuming", url, offset + written,
                             type(exc).__name__)
                    continue
                if total is not None and offset + written < total:
                    log.info("%s: stream ended at byte %d of %d; resuming", url, offset + written, total)
                    continue
                return resumed_from
        raise _Unusable(f"the connection kept dropping ({_MAX_RESUMES} resumes)")
    finally:
        bar.close()


def _reason(exc: BaseException) -> str:
    """A few words on why one URL failed."""
    if isinstance(exc, _Unusable):
        return str(exc)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken during the download"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS/SSL error"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if any(s in text for s in ("NameResolution", "Name or service not known", "getaddrinfo",
                                   "nodename nor servname", "Temporary failure in name resolution")):
            return "host name not found; offline?"
        if "Connection refused" in text or "ConnectionRefused" in text:
            return "connection refused"
        if "Read timed out" in text or isinstance(exc, requests.Timeout):
            return "read timed out"
        return "cannot connect"
    if isinstance(exc, requests.Timeout):
        return "read timed out"
    if isinstance(exc, requests.RequestException):
        return f"request failed ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def describe_failures(errors: Sequence[FetchError]) -> str:
    """One line for the CLI: which files, which URLs were tried and why each failed, where to put them."""
    parts = []
    for err in errors:
        tried = "; ".join(f"{url} ({why})" for url, why in err.attempts) or "no URLs"
        parts.append(f"{err.label} (tried {tried})")
    notes = " ".join(f"For {e.label}, {e.note}." for e in errors if e.note)
    where = " and ".join(str(e.dest) for e in errors)
    placed = "it" if len(errors) == 1 else "the files"
    msg = "Could not download " + " and ".join(parts) + "."
    if notes:
        msg += " " + notes
    return f"{msg} Place {placed} by hand at {where}, {OFFLINE_HINT}."


def fetch(urls: Union[str, Sequence[str]], dest: Union[str, os.PathLike], *, size: Optional[int] = None,
          sha256: Optional[str] = None, kind: Kind = "any", progress: bool = True,
          timeout: Timeout = DEFAULT_TIMEOUT, label: Optional[str] = None) -> Path:
    """Make sure a verified copy of a file is at `dest`, downloading it from the first mirror that works.

    Args:
        urls: mirrors of one file, tried in order.
        dest: where the file goes (its folder is created); the download streams to `dest.part`.
        size: expected size in bytes, when published.
        sha256: expected hex digest, when published. Otherwise the digest of the first verified
            copy is recorded in `dest.sha256` and checked on every later call.
        kind: "checkpoint" (a torch file), "config" (taming YAML with model.target) or "any".
        progress: show a tqdm progress bar (stderr).
        timeout: seconds to connect, or (connect, read).
        label: how messages name the file (default: its file name).

    Returns `dest`. Raises `FetchError` (a `DownloadError`) naming every URL tried and the path to
    place the file by hand; a partial download is left as `dest.part` and resumed next time.
    """
    dest = Path(dest)
    url_list = [urls] if isinstance(urls, str) else list(urls)
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        note = None
        bad = dest.with_name(dest.name + ".bad")
        if dest.exists():
            problem = check_cached(dest, size=size, sha256=sha256, kind=kind)
            if problem is None:
                log.debug("using cached %s", dest)
                return dest
            # Moved aside, not deleted: it may be a file someone placed by hand.
            os.replace(dest, bad)
            _discard(dest)
            log.warning("cached %s at %s is %s; moved it to %s and fetching it again", label, dest, problem, bad)
            note = f"the cached copy was {problem}; it was moved to {bad}"
        part = dest.with_name(dest.name + ".part")
        attempts = []
        with requests.Session() as session:
            session.headers.update(_HEADERS)
            for url in url_list:
                try:
                    digest = _fetch_one(session, url, part, size=size, sha256=sha256, kind=kind,
                                        timeout=timeout, progress=progress, desc=label)
                except (requests.RequestException, _Unusable) as exc:
                    reason = _reason(exc)
                    log.info("%s: %s", url, reason)
                    attempts.append((url, reason))
                    continue
                except OSError as exc:  # disk full, permissions: no mirror will help
                    raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
                os.replace(part, dest)
                _write_sidecar(dest, digest)
                with contextlib.suppress(FileNotFoundError):
                    bad.unlink()
                if attempts:
                    log.warning("%s: used %s; failed mirrors: %s", label, url,
                                "; ".join(f"{u} ({why})" for u, why in attempts))
                log.info("downloaded %s from %s to %s", label, url, dest)
                return dest
        raise FetchError(label, dest, attempts, note)


def _fetch_one(session: requests.Session, url: str, part: Path, *, size: Optional[int],
               sha256: Optional[str], kind: Kind, timeout: Timeout, progress: bool, desc: str) -> str:
    """Download and verify one mirror into `part`; returns the file's sha256."""
    for fresh in (False, True):
        resumed_from = _download(session, url, part, size=size, kind=kind, timeout=timeout,
                                 progress=progress, desc=desc)
        problem = check_file(part, size=size, kind=kind)
        digest = file_sha256(part) if problem is None else ""
        if problem is None and sha256 is not None and digest != sha256.lower():
            problem = f"a file with sha256 {digest[:16]}..., expected {sha256.lower()[:16]}..."
        if problem is None:
            return digest
        part.unlink()  # complete but wrong: nothing worth resuming
        if resumed_from and not fresh:
            log.info("%s: the resumed file is %s; downloading it again from the start", url, problem)
            continue
        break
    if problem.startswith("an HTML page"):
        raise _Unusable(f"served {problem}")
    raise _Unusable(f"delivered {problem}")


def fetch_url(url: str, cache_dir: Union[str, os.PathLike, None] = None, kind: Kind = "any", *,
              progress: bool = True, timeout: Timeout = DEFAULT_TIMEOUT) -> Path:
    """Fetch a user's http(s) URL into `<cache>/url/<hash>-<name>` (name sanitised) and return the path."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    if scheme == "http":
        log.warning("%s is plain http: the file could be altered on the way", url)
    raw_name = re.split(r"[\\/]", unquote(PurePosixPath(urlsplit(url).path).name))[-1]
    base = safe_filename(raw_name, default={"checkpoint": "model.ckpt", "config": "config.yaml"}.get(kind, "file"))
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    dest = cache_path(cache_dir, "url", f"{key}-{base}")
    return fetch([url], dest, kind=kind, progress=progress, timeout=timeout, label=base)
