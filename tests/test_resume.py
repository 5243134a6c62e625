"""Interrupt and resume: the saved state, bit-exact continuation, extending a run, and what is refused."""
import hashlib
import importlib
import os
import signal

import imageio.v2 as imageio
import pytest
import torch
from PIL import Image

from vqclip import generate, load_config
from vqclip.cli import main
from vqclip.errors import ResumeError
from vqclip.resume import STATE_FILE, load_state, resume

gen_module = importlib.import_module("vqclip.generate")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interrupt_at(step):
    def callback(info):
        if info["step"] == step and not info["final"]:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def _frames(path):
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


def test_interrupted_then_resumed_gives_the_same_png_bytes(tiny_overrides):
    args = tiny_overrides + ["steps=12", "output.save_every=2", "output.video=true"]
    whole = generate(load_config([], args, prompts=["a red car|rain:-0.5"]), progress=False)
    cut = generate(load_config([], args, prompts=["a red car|rain:-0.5"]), progress=False,
                   callbacks=[_interrupt_at(4)])
    assert cut.interrupted and len(cut.losses) == 5 and cut.state_path == cut.run_dir / STATE_FILE
    assert _sha(cut.run_dir / "image.png") != _sha(whole.run_dir / "image.png")
    done = resume(cut.run_dir, progress=False)
    assert done.run_dir == cut.run_dir and not done.interrupted
    assert _sha(done.run_dir / "image.png") == _sha(whole.run_dir / "image.png")
    assert done.losses == whole.losses
    assert sorted(p.name for p in (done.run_dir / "frames").iterdir()) == \
        sorted(p.name for p in (whole.run_dir / "frames").iterdir())
    for frame in (whole.run_dir / "frames").iterdir():
        assert _sha(frame) == _sha(done.run_dir / "frames" / frame.name)
    assert _frames(done.run_dir / "progress.mp4") == _frames(whole.run_dir / "progress.mp4") == 13
    assert not [p for p in done.run_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]


def test_a_resumed_run_skips_the_choice_of_start_and_still_matches(tiny_overrides, monkeypatch):
    args = tiny_overrides + ["steps=8", "init_candidates=3"]
    whole = generate(load_config([], args, prompts=["x"]), progress=False)
    cut = generate(load_config([], args, prompts=["x"]), progress=False, callbacks=[_interrupt_at(3)])
    assert cut.interrupted
    picks = []
    original = gen_module.Run.pick_start
    monkeypatch.setattr(gen_module.Run, "pick_start", lambda run, *a, **k: picks.append(1) or original(run, *a, **k))
    done = resume(cut.run_dir, progress=False)
    assert picks == []  # the saved latent replaces any start, so none is drawn or scored
    assert _sha(done.run_dir / "image.png") == _sha(whole.run_dir / "image.png")


def test_state_is_weights_only_and_extending_a_finished_run_matches_a_longer_one(tiny_overrides):
    short = generate(load_config([], tiny_overrides + ["steps=6"], prompts=["x"]), progress=False)
    state = torch.load(short.run_dir / STATE_FILE, weights_only=True)  # tensors and plain containers only
    assert state["step"] == 6 and len(state["losses"]) == 6 and "steps: 6" in state["config"]
    long = generate(load_config([], tiny_overrides + ["steps=10"], prompts=["x"]), progress=False)
    with pytest.raises(ResumeError, match="finished.*steps=N"):
        resume(short.run_dir, progress=False)
    extended = resume(short.run_dir, ["steps=10"], progress=False)
    assert _sha(extended.run_dir / "image.png") == _sha(long.run_dir / "image.png")
    assert "steps: 10" in (short.run_dir / "config.yaml").read_text()


def test_cli_resume_and_what_resume_refuses(tiny_overrides, capsys, tmp_path):
    assert main(["x", *tiny_overrides, "steps=3", "-q"]) == 0
    run_dir = next(p for p in (tmp_path / "out").iterdir())
    capsys.readouterr()
    assert main(["resume", str(run_dir), "steps=5", "-q"]) == 0
    assert Image.open(run_dir / "image.png").text["steps"] == "5"
    assert main(["--resume", str(run_dir), "steps=6", "-q"]) == 0
    assert Image.open(run_dir / "image.png").text["steps"] == "6"
    capsys.readouterr()
    for argv, words in [(["resume", str(run_dir), "size=[32,32]"], "cannot change when resuming.*steps"),
                        (["resume", str(run_dir), "steps=2"], "steps >= 6"),
                        (["resume", str(tmp_path / "nope")], "no such run folder"),
                        (["resume", str(tmp_path)], "no state.pt"),
                        (["--resume", str(run_dir), "another prompt"], "keeps its prompts")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vqclip: error: "), err
        assert __import__("re").search(words, err[0]), err[0]


def test_hostile_or_corrupt_state_is_refused(tiny_overrides, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": 1, "payload": Evil()}, run_dir / STATE_FILE)
    with pytest.raises(ResumeError, match="refused.*nothing in it was run"):
        load_state(run_dir)
    assert not marker.exists()
    (run_dir / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ResumeError, match="corrupt or truncated"):
        load_state(run_dir)
    torch.save({"format": 1, "config": "steps: 3"}, run_dir / STATE_FILE)
    with pytest.raises(ResumeError, match="lacks or has a wrong"):
        load_state(run_dir)


def test_resume_with_a_damaged_video_is_one_clear_error_and_keeps_the_file(tiny_overrides, capsys):
    cut = generate(load_config([], tiny_overrides + ["steps=12", "output.video=true"], prompts=["x"]), progress=False,
                   callbacks=[_interrupt_at(3)])
    video = cut.run_dir / "progress.mp4"
    video.write_bytes(b"not a video at all")
    assert main(["resume", str(cut.run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot continue the video" in err[0] and "move it away" in err[0], err
    assert video.read_bytes() == b"not a video at all"
    assert not [p for p in cut.run_dir.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    video.unlink()  # moved away: the resumed run starts a new video with the rest of the frames
    assert main(["resume", str(cut.run_dir), "-q"]) == 0
    assert _frames(video) == 12 - 4 + 1


@pytest.mark.parametrize("stop_at", [1, 5])  # during the race (it ends at step 4) and after it
def test_a_race_interrupted_during_or_after_it_resumes_to_the_same_png(tiny_overrides, stop_at):
    args = tiny_overrides + ["steps=8", "race=3", "race_steps=0.5", "batch_size=2"]
    whole = generate(load_config([], args, prompts=["x"]), progress=False)
    cut = generate(load_config([], args, prompts=["x"]), progress=False, callbacks=[_interrupt_at(stop_at)])
    assert cut.interrupted and len(cut.images) == 2  # each image's leading copy, not the 6 copies
    saved = load_state(cut.run_dir)
    assert saved["z"].shape[0] == (6 if stop_at < 4 else 2)  # every copy is kept until the race ends
    done = resume(cut.run_dir, progress=False)
    assert done.losses == whole.losses
    for name in ("image-0.png", "image-1.png"):
        assert _sha(done.run_dir / name) == _sha(whole.run_dir / name)


@pytest.mark.parametrize("stop_at, copies", [(1, 4), (2, 2), (5, 1)])  # cuts at steps 2 (to 2) and 4 (to 1)
def test_a_halving_race_interrupted_between_its_cuts_resumes_to_the_same_png(tiny_overrides, stop_at, copies):
    args = tiny_overrides + ["steps=8", "race=4", "race_halving=true", "race_steps=0.5", "batch_size=2"]
    whole = generate(load_config([], args, prompts=["x"]), progress=False)
    cut = generate(load_config([], args, prompts=["x"]), progress=False, callbacks=[_interrupt_at(stop_at)])
    assert cut.interrupted and len(cut.images) == 2
    saved = load_state(cut.run_dir)
    assert saved["z"].shape[0] == 2 * copies  # the copies still in the race when it stopped
    done = resume(cut.run_dir, progress=False)
    assert done.losses == whole.losses
    for name in ("image-0.png", "image-1.png"):
        assert _sha(done.run_dir / name) == _sha(whole.run_dir / name)


def test_a_finished_run_whose_race_outlasted_it_can_be_extended(tiny_overrides):
    args = tiny_overrides + ["steps=1", "race=3", "race_steps=0.5", "batch_size=2"]
    short = generate(load_config([], args, prompts=["x"]), progress=False)
    assert load_state(short.run_dir)["z"].shape[0] == 2  # the run's end kept one copy per image
    longer = resume(short.run_dir, ["steps=4"], progress=False)  # a race of 0.5 x 4 steps would end at step 2
    assert len(longer.losses) == 4 and longer.losses[0] == short.losses[0]
    assert len(longer.images) == 2 and longer.z.shape[0] == 2
    saved = load_state(longer.run_dir)
    assert saved["step"] == 4 and saved["z"].shape[0] == 2
