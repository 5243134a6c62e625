"""Ctrl-C during a run: the first finishes the step and writes complete files; handlers are scoped."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from vqclip import generate, load_config


def test_first_sigint_stops_after_the_step_and_writes_everything(tiny_overrides):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen = []

    def interrupt_at_step_3(info):
        seen.append(info["step"])
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = load_config([], tiny_overrides + ["steps=50", "output.video=true"], prompts=["x"])
    result = generate(cfg, callbacks=[interrupt_at_step_3], progress=False)
    assert result.interrupted and len(result.losses) == 4 and seen == [0, 1, 2, 3, 4]
    assert Image.open(result.run_dir / "image.png").text["steps"] == "4"
    assert (result.run_dir / "progress.mp4").stat().st_size > 0
    assert not [p for p in result.run_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_no_handler_installed_by_import():
    code = ("import signal; d = signal.getsignal(signal.SIGINT); import vqclip, vqclip.generate, vqclip.cli; "
            "assert signal.getsignal(signal.SIGINT) is d; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "ok", out.stderr


def test_cli_sigterm_exits_130_with_complete_files(tiny_overrides, tmp_path):
    out_dir = tmp_path / "out"
    args = [o for o in tiny_overrides if not o.startswith("output.dir")] + [f"output.dir={out_dir}", "steps=100000",
                                                                             "output.save_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "vqclip", "x", *args, "-q"], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out_dir.glob("*/frames/000002.png")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    png = [Path(p) for p in stdout.split() if p.endswith("image.png")]
    assert len(png) == 1 and Image.open(png[0]).size == (64, 64)
    assert "interrupted after step" in stderr
    assert not [p for p in out_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]
