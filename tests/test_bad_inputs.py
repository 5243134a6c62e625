"""Every bad input through the command line: one line on stderr, exit code 2, nothing or only complete files written."""
import contextlib
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from vqclip.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_error(capsys, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqclip: error: "), err
    assert re.search(pattern, err[0]), err[0]
    return err[0]


def _nothing_written(tmp_path):
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))


def _complete_files_only(folder: Path):
    """Every file under `folder` is whole: PNGs decode, no temporary or partial file is left."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name or ".part" in p.name], files
    for p in files:
        if p.suffix == ".png":
            with Image.open(p) as img:
                img.load()
    return files


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A real PNG of width x height, 1-bit grey, every row zero (a few KB on disk; PIL reads the size first)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _bad_image(kind: str, path: Path) -> Path:
    if kind == "text named .png":
        path.write_text("this is not an image\n")
    elif kind == "truncated png":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "1x1 image":
        Image.new("RGB", (1, 1)).save(path)
    elif kind == "20000x20000 image":
        _png_header_only(path, 20000, 20000)
    elif kind == "missing file":
        pass
    return path


IMAGES = [("text named .png", "not an image file"), ("truncated png", "truncated or corrupt"),
          ("1x1 image", "is 1x1; allowed: at least 8 pixels"), ("20000x20000 image", r"too large \(400,000,000 pixels\); allowed: at most 64 megapixels"),
          ("missing file", "not found")]


@pytest.mark.parametrize("key", ["init_image", "image_prompts"])
@pytest.mark.parametrize("kind, words", IMAGES)
def test_bad_image_files(tiny_overrides, tmp_path, capsys, key, kind, words):
    path = _bad_image(kind, tmp_path / "picture.png")
    value = f"[{path}:0.5]" if key == "image_prompts" else str(path)
    assert main(["x", *tiny_overrides, f"{key}={value}"]) == 2
    _one_error(capsys, ("init image" if key == "init_image" else "image prompt") + ".*" + words)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("argv, words", [
    ([""], "prompt '' is empty"),
    (["|||"], r"prompt '\|\|\|' is empty"),
    (["  |  "], "is empty"),
    (["a|"], "empty part between"),
    ([":1:2"], "has no text"),
    (["x:1e9"], r"weight 1000000000.0; allowed: a finite number with \|weight\| <= 10000"),
    (["x:nan"], "weight nan"),
    (["x:inf"], "weight inf"),
    (["x:0"], "weight 0"),
    (["x:1:nan"], "stop nan"),
    (["x", "optim.lr=nan"], "'optim.lr': nan; allowed: a finite number"),
    (["x", "init_weight=-inf"], "'init_weight': -inf; allowed: a finite number"),
    (["x", "cutouts.noise=inf"], "'cutouts.noise': inf"),
    (["x", "size=[0,64]"], "'size'.*two positive integers"),
    (["x", "size=[-64,64]"], "'size'.*two positive integers"),
    (["x", "size=[64]"], "'size'"),
    (["x", "steps=0"], "'steps': 0; allowed: a positive integer"),
    (["x", "steps=-5"], "'steps': -5; allowed: a positive integer"),
    (["x", "size=[62,64]"], r"multiple of .* factor 4.*size=\[64, 64\]"),
])
def test_bad_prompts_and_values(tiny_overrides, tmp_path, capsys, argv, words):
    prompt, *rest = argv
    assert main([prompt, *tiny_overrides, *rest]) == 2
    _one_error(capsys, words)
    _nothing_written(tmp_path)


def test_yaml_nan_and_syntax_error_name_the_key_or_the_position(tiny_overrides, tmp_path, capsys):
    nan = tmp_path / "nan.yaml"
    nan.write_text("optim:\n  lr: .nan\n")
    assert main(["x", "--config", str(nan), *tiny_overrides]) == 2
    _one_error(capsys, "'optim.lr': nan")
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: 10\ncutouts:\n  cutn: [8, 16\nseed: 1\n")
    assert main(["x", "--config", str(broken), *tiny_overrides]) == 2
    _one_error(capsys, r"broken\.yaml is not valid YAML at line \d+, column \d+")
    _nothing_written(tmp_path)


def test_size_beyond_memory_is_refused_before_the_weights_load(tiny_overrides, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint at all")  # reading it would be a different error
    args = [o for o in tiny_overrides if not o.startswith("vqgan.checkpoint")] + [f"vqgan.checkpoint={corrupt}"]
    assert main(["x", *args, "size=[8192,8192]"]) == 2
    _one_error(capsys, r"'size': \[8192, 8192\] needs about [\d.]+ GiB .* is free; allowed here: about size=\[\d+, \d+\]")
    _nothing_written(tmp_path)


def test_memory_estimate_suggests_a_size_that_fits():
    import torch

    from tests.fixtures import TINY_DDCONFIG
    from vqclip.config import load_config
    from vqclip.errors import ConfigError
    from vqclip.memory import check_memory, cutout_bytes, decoder_bytes

    cfg = load_config([], ["size=[1024,1024]", "cutouts.cutn=8"])
    free = decoder_bytes(TINY_DDCONFIG, [256, 256]) + cutout_bytes(8, size=(256, 256))
    with pytest.raises(ConfigError, match=r"size=\[(\d+), \d+\]") as exc:
        check_memory(cfg, TINY_DDCONFIG, torch.device("cpu"), free=free)
    side = int(re.search(r"size=\[(\d+),", str(exc.value)).group(1))
    assert 128 <= side <= 256 and side % 4 == 0
    check_memory(load_config([], ["size=[256,256]", "cutouts.cutn=8"]), TINY_DDCONFIG, torch.device("cpu"), free=free)
    # The estimate grows with the area, and faster once the attention matrix dominates.
    assert decoder_bytes(TINY_DDCONFIG, [512, 512]) > 4 * decoder_bytes(TINY_DDCONFIG, [256, 256])
    # Several images at once need that many times the memory; recomputing activations needs less.
    assert decoder_bytes(TINY_DDCONFIG, [256, 256], batch=3) == 3 * decoder_bytes(TINY_DDCONFIG, [256, 256])
    assert decoder_bytes(TINY_DDCONFIG, [256, 256], checkpointing=True) < 0.6 * decoder_bytes(TINY_DDCONFIG, [256, 256])
    with pytest.raises(ConfigError):
        check_memory(load_config([], ["size=[256,256]", "cutouts.cutn=8"]), TINY_DDCONFIG, torch.device("cpu"),
                     free=free, batch=2)


def test_a_race_is_checked_for_memory_with_every_copy(tiny_overrides, monkeypatch):
    import torch

    import vqclip.memory
    from tests.fixtures import TINY_DDCONFIG
    from vqclip import generate
    from vqclip.config import load_config
    from vqclip.errors import ConfigError
    from vqclip.memory import check_memory, cutout_bytes, decoder_bytes

    batches = []
    real = vqclip.memory.check_memory
    monkeypatch.setattr(vqclip.memory, "check_memory", lambda *a, **k: batches.append(k["batch"]) or real(*a, **k))
    cfg = load_config([], tiny_overrides + ["steps=2", "race=3", "batch_size=2"], prompts=["x"])
    generate(cfg, progress=False, save=False)
    assert batches and set(batches) == {6}  # 2 images x 3 copies, at model load and before the run
    monkeypatch.undo()
    free = decoder_bytes(TINY_DDCONFIG, [256, 256], batch=2) + cutout_bytes(8, batch=2, size=(256, 256))
    race = load_config([], ["size=[256,256]", "cutouts.cutn=8", "race=3"])
    with pytest.raises(ConfigError, match=r"'size'.*a smaller race \(race=3 holds"):
        check_memory(race, TINY_DDCONFIG, torch.device("cpu"), free=free, batch=3)


def test_output_folder_that_cannot_be_written(tiny_overrides, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [o for o in tiny_overrides if not o.startswith("output.dir")]
    assert main(["x", *args, f"output.dir={blocker / 'runs'}"]) == 2
    _one_error(capsys, "cannot create output folder .*a-file/runs: .*a-file exists and is not a folder")
    assert main(["x", *args, f"output.dir={blocker}"]) == 2  # the file itself as the folder
    _one_error(capsys, "cannot create output folder .*a-file: .*a-file exists and is not a folder")
    assert blocker.read_text() == "not a folder"


@contextlib.contextmanager
def _tmpfs(path: Path, options: str, why_skip: str) -> Iterator[Path]:
    """A small tmpfs mounted at `path` for the block (unmounted after); skip the test where it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(why_skip)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_output_folder(tiny_overrides, tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "ro,size=64k",
                "cannot mount a read-only tmpfs here (needs root); the not-a-folder case covers the rest") as ro:
        args = [o for o in tiny_overrides if not o.startswith("output.dir")]
        assert main(["x", *args, f"output.dir={ro / 'runs'}"]) == 2
        _one_error(capsys, "cannot create output folder .*Read-only file system")


def test_full_disk_on_a_small_tmpfs(tiny_overrides, tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "size=200k",
                "cannot mount a tmpfs here (needs root); test_file_size_limit covers a failing write") as disk:
        base = [o for o in tiny_overrides if not o.startswith("output.dir")]
        code = main(["x", *base, f"output.dir={disk}", "steps=400", "output.save_every=1", "output.video=true", "-q"])
        assert code == 2
        line = _one_error(capsys, r"cannot write .*: no space left on the device; free some space")
        assert re.search(r"cannot write (\S+): ", line).group(1).endswith(".png")
        files = _complete_files_only(disk)
        assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".png" for p in files)
        assert not any(p.suffix == ".mp4" for p in files)  # the unfinished video was removed, not left broken


def test_full_disk_while_encoding_the_video(tmp_path):
    from vqclip.errors import OutputError
    from vqclip.outputs import VideoWriter

    with _tmpfs(tmp_path / "disk", "size=64k", "cannot mount a tmpfs here (needs root)") as disk:
        writer = VideoWriter(disk / "progress.mp4", fps=30)
        noise = np.random.default_rng(0)  # noise does not compress: the disk fills within a few dozen frames
        with pytest.raises(OutputError, match=r"cannot write .*progress\.mp4: no space left on the device"):
            for _ in range(2000):
                writer.append(noise.integers(0, 255, (64, 64, 3), np.uint8))
            writer.close()
        assert list(disk.iterdir()) == []  # no partial video left behind


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))


def test_file_size_limit(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: threads only add overhead
    proc = subprocess.run([sys.executable, "-m", "vqclip", "x", *tiny_overrides, "steps=6", "output.save_every=1",
                           "-q"], cwd=ROOT, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
                          env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert re.search(r"vqclip: error: cannot write .*state\.pt: the file is larger than this process may write", err[0])
    files = _complete_files_only(out)
    assert {p.name for p in files} >= {"config.yaml", "image.png", "000000.png", "000005.png"}


def test_cutout_memory_estimate_counts_the_resampler_at_the_image_size():
    from vqclip.memory import cutout_bytes

    small, large = cutout_bytes(32, size=(256, 256)), cutout_bytes(32, size=(1024, 1024))
    assert large > small > cutout_bytes(32)
    assert cutout_bytes(32, size=(256, 256), batch=2) == 2 * small
