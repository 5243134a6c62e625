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
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))  # threads only slow tiny models
    deadline = time.time() + 120
    while time.time() < deadline and not list(out_dir.glob("*/frames/000002.png")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    png = [Path(p) for p in stdout.split() if p.endswith("image.png")]
    assert len(png) == 1 and Image.open(png[0]).size == (64, 64)
    assert "interrupted after step" in stderr and f"continue with: vqclip resume {png[0].parent}" in stderr
    assert (png[0].parent / "state.pt").is_file()
    assert not [p for p in out_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]


def _cli(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vqclip", "x", *args, "-q"], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def _wait_for(pattern_dir, pattern, proc):
    deadline = time.time() + 120
    while time.time() < deadline and not list(pattern_dir.glob(pattern)) and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()


def test_ctrl_c_to_the_process_group_keeps_the_video_and_says_how_to_resume(tiny_overrides, tmp_path):
    """A terminal's Ctrl-C signals the whole foreground group; ffmpeg runs in its own group, so the
    video so far is still finished and complete."""
    out_dir = tmp_path / "out"
    args = [o for o in tiny_overrides if not o.startswith("output.dir")] + [
        f"output.dir={out_dir}", "steps=100000", "output.save_every=1", "output.video=true"]
    proc = _cli(args, start_new_session=True)
    _wait_for(out_dir, "*/frames/000003.png", proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    run_dir = next(out_dir.iterdir())
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(run_dir / "progress.mp4"), format="FFMPEG")
    frames = sum(1 for _ in reader)
    reader.close()
    steps = int(Image.open(run_dir / "image.png").text["steps"])
    assert frames == steps + 1 and steps >= 4
    assert f"continue with: vqclip resume {run_dir}" in stderr and str(run_dir / "state.pt") in stdout
    assert not [p for p in out_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]


def test_second_ctrl_c_exits_at_once_leaving_only_complete_files(tiny_overrides, tmp_path):
    """Two SIGINTs back to back: whether the second lands before or after the step ends (the
    in-process test below makes it land during one), the process exits 130 and leaves only whole files."""
    out_dir = tmp_path / "out"
    args = [o for o in tiny_overrides if not o.startswith("output.dir")] + [
        f"output.dir={out_dir}", "steps=100000", "output.save_every=1", "output.video=true"]
    proc = _cli(args)
    _wait_for(out_dir, "*/frames/000002.png", proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    leftovers = [p for p in out_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    assert not leftovers
    for png in out_dir.rglob("*.png"):
        Image.open(png).load()  # every PNG there is whole
    assert not list(out_dir.rglob("*.mp4")) or all(p.stat().st_size > 0 for p in out_dir.rglob("*.mp4"))


def test_second_sigint_in_process_raises_and_restores_handlers(tiny_overrides):
    before = signal.getsignal(signal.SIGINT)

    def twice(info):
        if info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    cfg = load_config([], tiny_overrides + ["steps=50", "output.video=true"], prompts=["x"])
    import pytest

    with pytest.raises(KeyboardInterrupt):
        generate(cfg, callbacks=[twice], progress=False)
    assert signal.getsignal(signal.SIGINT) is before
    run_dir = next(Path(cfg.output.dir).iterdir())
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    assert not (run_dir / "image.png").exists()  # stopped at once: no final image, only the frames so far
