"""Stories, zoom, interpolation and restyling on the tiny models: schedules, frames, files, audio."""
import re
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from vqclip import generate, load_config, load_models
from vqclip.animate import run_mode
from vqclip.animate.frames import animate
from vqclip.animate.interpolate import InterpolateDriver, path_position, slerp
from vqclip.animate.keyframes import parse_keyframes
from vqclip.animate.restyle import RestyleDriver
from vqclip.animate.schedule import resolve_story, scene_weights
from vqclip.animate.video import InputVideoError
from vqclip.animate.zoom import ZoomDriver, transform_image
from vqclip.cli import main
from vqclip.config import from_yaml_text, to_yaml
from vqclip.errors import ConfigError
from vqclip.generate import Run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["steps=2", "cutouts.cutn=4", "animation.steps_per_frame=1", "output.save_every=0"]


@pytest.fixture(scope="module")
def models(tiny_files):
    """The tiny models, VQGAN with its encoder, loaded once for the module."""
    return load_models(load_config([], [f"vqgan.config={tiny_files['vqgan_config']}",
                                        f"vqgan.checkpoint={tiny_files['vqgan_ckpt']}",
                                        f"clip.model={tiny_files['clip_json']}",
                                        f"clip.pretrained={tiny_files['clip_weights']}", "mode=zoom", "device=cpu"]))


def _config(tiny_overrides, *extra, prompts=("a red circle",), files=()):
    return load_config(list(files), tiny_overrides + FAST + list(extra), prompts=list(prompts) if prompts else None)


def _video(path):
    reader = imageio.get_reader(str(path), format="FFMPEG")
    meta = reader.get_meta_data()
    count = sum(1 for _ in reader)
    reader.close()
    return count, meta["fps"], tuple(meta["size"])


def _streams(path):
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True)
    return re.findall(r"Stream #\d+:\d+.*?: (Video|Audio):", proc.stderr)


def _input_video(path, frames=5, fps=10, size=(80, 48), audio=True):
    """A moving bar, optionally with a 440 Hz sine track made by ffmpeg's lavfi."""
    silent = path.with_name(path.stem + "-silent.mp4") if audio else path
    writer = imageio.get_writer(str(silent), format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=2, ffmpeg_log_level="error")
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), (30, 60, 200), np.uint8)
        frame[:, 8 * i: 8 * i + 16] = (220, 40, 40)
        writer.append_data(frame)
    writer.close()
    if audio:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(silent), "-f", "lavfi",
                        "-i", f"sine=frequency=440:duration={frames / fps}", "-map", "0:v", "-map", "1:a",
                        "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


class Recorder:
    """Callback keeping every info dict (without tensors that would pin memory, except the image)."""

    def __init__(self):
        self.infos = []

    def __call__(self, info):
        self.infos.append({k: v for k, v in info.items() if k != "z"})


# --- keyframes and schedules --------------------------------------------------------------------

def test_keyframe_values():
    k = parse_keyframes("0: 1.0, 60: 1.05, 90: 1.0", "animation.zoom", minimum=0)
    assert k(0) == 1.0 and k(60) == 1.05 and k(90) == 1.0
    assert k(30) == pytest.approx(1.025) and k(75) == pytest.approx(1.025)
    assert k(200) == 1.0 and k.values(3) == [1.0, pytest.approx(1 + 0.05 / 60), pytest.approx(1 + 0.1 / 60)]
    assert parse_keyframes("10: 2, 20: 4")(0) == 2.0  # held before the first keyframe
    assert parse_keyframes("1.5")(1000) == 1.5 and parse_keyframes(3)(0) == 3.0
    cfg = load_config([], ["animation.zoom='0: 1.0, 60: 1.05'", "animation.rotate=0:0,10:5", "animation.shift_x=2"])
    assert parse_keyframes(cfg.animation.rotate)(5) == 2.5 and cfg.animation.shift_x == "2"


@pytest.mark.parametrize("override, words", [
    ("animation.zoom='0: 1.0, 0: 2.0'", "'animation.zoom'.*increasing"),
    ("animation.zoom='10: 1.0, 5: 2.0'", "'animation.zoom'.*increasing"),
    ("animation.zoom=0", "'animation.zoom'.*> 0"),
    ("animation.zoom='0: 1, 10: -1'", "'animation.zoom'.*> 0"),
    ("animation.rotate=fast", "'animation.rotate'.*keyframes"),
    ("animation.shift_y='a: 1'", "'animation.shift_y'"),
    ("animation.shift_x='1.5: 3'", "'animation.shift_x'.*whole frame"),
    ("animation.rotate=nan", "'animation.rotate'.*finite"),
    ("animation.frames=0", "'animation.frames'"),
    ("animation.steps_per_frame=0", "'animation.steps_per_frame'"),
    ("animation.fps=0", "'animation.fps'"),
    ("mode=movie", "'mode'.*story, zoom, interpolate, restyle"),
    ("restyle.blend=1.5", "'restyle.blend'"),
])
def test_bad_animation_keys(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], [override])


def test_scene_weights_switch_and_ramp():
    starts = [0, 5, 10]
    assert [scene_weights(starts, 0, s) for s in (0, 4, 5, 9, 10, 99)] == [
        [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    ramp = [scene_weights(starts, 3, s) for s in range(4, 10)]
    assert ramp == [[1, 0, 0], [0.75, 0.25, 0], [0.5, 0.5, 0], [0.25, 0.75, 0], [0, 1, 0], [0, 1, 0]]


def _story(*overrides, prompts=None):
    return resolve_story(load_config([], ["mode=story", *overrides], prompts=prompts))


def test_resolve_story_forms(tmp_path):
    s = _story("story.steps_per_prompt=4", prompts=["a^b|c:0.5^d", "style:0.3"])
    assert [(x.prompts, x.start, x.end) for x in s.scenes] == [(["a"], 0, 4), (["b|c:0.5"], 4, 8), (["d"], 8, 12)]
    assert s.global_prompts == ["style:0.3"] and s.total == 12
    s = _story("steps=10", prompts=["a^b^c"])  # no lengths: the run's steps shared, remainder to the last
    assert [x.steps for x in s.scenes] == [3, 3, 4]
    yaml = tmp_path / "s.yaml"
    yaml.write_text("mode: story\nsteps: 50\nstory:\n  scenes:\n    - {prompts: [a], start: 0}\n"
                    "    - {prompts: [b, 'c:2'], start: 20}\n    - {prompts: [d], start: 30}\n")
    s = resolve_story(load_config([str(yaml)]))
    assert [(x.start, x.end) for x in s.scenes] == [(0, 20), (20, 30), (30, 50)] and s.scenes[1].prompts == ["b", "c:2"]
    yaml.write_text("mode: story\nstory:\n  steps_per_prompt: 5\n  scenes:\n    - {prompts: [a], steps: 2}\n"
                    "    - {prompts: [b]}\n")
    assert [x.steps for x in resolve_story(load_config([str(yaml)])).scenes] == [2, 5]


@pytest.mark.parametrize("args, prompts, words", [
    ([], ["a^b"], "mode=story"),
    (["mode=zoom"], ["a^b"], "mode=story"),
    (["mode=story"], ["a", "b"], "needs scenes"),
    (["mode=story", "story.steps_per_prompt=0"], ["a^b"], "'story.steps_per_prompt'"),
    (["mode=story", "story.steps_per_prompt=5", "story.ramp=5"], ["a^b"], "'story.ramp'.*0 .. 4"),
    (["mode=story", "steps=1"], ["a^b"], "'steps'"),
    (["mode=story"], ["a^b", "c^d"], "one story string"),
    (["mode=story", "story.scenes=[{prompts: [a]}]"], ["x^y"], "one of the two"),
    (["mode=story", "story.scenes=[{prompts: [a], start: 0}, {prompts: [b]}]"], None, r"scenes\[1\] has no start"),
    (["mode=story", "story.scenes=[{prompts: [a], start: 3}]"], None, r"'story.scenes\[0\].start'"),
    (["mode=story", "story.scenes=[{prompts: [a], start: 0}, {prompts: [b], start: 0}]"], None, r"scenes\[1\].start"),
    (["mode=story", "story.scenes=[{prompts: []}]"], None, r"story.scenes\[0\] has no prompt"),
    (["mode=story", "story.scenes=[{prompts: [a], stepz: 3}]"], None, "stepz"),
    (["mode=story", "story.scenes=[{prompts: ['a:0']}]"], None, "weight 0"),
    (["mode=interpolate"], ["a"], "two or more prompts"),
    (["mode=interpolate"], ["a|b", "c"], "without '|'"),
    (["mode=restyle"], ["a"], "'restyle.video'"),
])
def test_bad_mode_configs(args, prompts, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], args, prompts=prompts)


def test_story_config_roundtrip():
    cfg = load_config([], ["mode=story", "story.scenes=[{prompts: [a, 'b:2']}, {prompts: [c], steps: 7}]",
                           "story.ramp=2", "animation.zoom='0: 1, 9: 1.1'"])
    assert from_yaml_text(to_yaml(cfg)) == cfg


# --- story ---------------------------------------------------------------------------------------

def test_story_switches_scenes_at_the_right_step(tiny_overrides, models):
    rec = Recorder()
    cfg = _config(tiny_overrides, "mode=story", "story.steps_per_prompt=2", "output.video=true", "output.fps=5",
                  prompts=["a red circle^a blue square^a green triangle"])
    result = run_mode(cfg, models=models, callbacks=[rec], progress=False)
    steps = [i for i in rec.infos if not i["final"]]
    active = [[v != 0 for v in i["losses"]] for i in steps]
    assert active == [[True, False, False]] * 2 + [[False, True, False]] * 2 + [[False, False, True]] * 2
    assert result.config.steps == 6 and from_yaml_text((result.run_dir / "config.yaml").read_text()).steps == 6
    video = result.run_dir / "progress.mp4"
    assert _video(video) == (7, 5, (64, 64))  # one progress video over the whole story (+ the final frame)
    assert Image.open(result.run_dir / "image.png").text["prompt"] == "a red circle^a blue square^a green triangle"


def test_story_ramp_global_prompts_and_starts(tiny_overrides, models, tmp_path):
    yaml = tmp_path / "story.yaml"
    yaml.write_text("mode: story\nprompts: ['oil painting:0.5']\nstory:\n  ramp: 1\n  scenes:\n"
                    "    - {prompts: [a red circle], start: 0}\n"
                    "    - {prompts: [a blue square, 'fog:-0.2'], start: 3}\n"
                    "    - {prompts: [a green triangle], start: 5, steps: 2}\n")
    rec = Recorder()
    result = run_mode(_config(tiny_overrides, prompts=None, files=[str(yaml)]), models=models, callbacks=[rec],
                      progress=False, save=False)
    active = [[v != 0 for v in i["losses"]] for i in rec.infos if not i["final"]]
    # terms: global, scene 0, scene 1 (two prompts), scene 2; ramp 1: half-and-half on a scene's first step
    assert active == [[True, True, False, False, False]] * 3 + [
        [True, True, True, True, False], [True, False, True, True, False],
        [True, False, True, True, True], [True, False, False, False, True]]
    assert len(result.losses) == 7


# --- zoom ------------------------------------------------------------------------------------------

def test_transform_image_moves_zooms_and_rotates():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 10, 20] = 1.0
    shifted = transform_image(image, shift_x=4, shift_y=-3)
    assert (shifted[0, 0] == 1).nonzero().tolist() == [[7, 24]]
    assert torch.equal(transform_image(image), image)
    square = torch.zeros(1, 1, 32, 32)
    square[..., 12:20, 12:20] = 1.0  # an 8x8 square at the centre fills 16x16 when zoomed 2x
    zoomed = transform_image(square, zoom=2.0)
    assert zoomed[0, 0, 9:23, 9:23].min() == 1 and zoomed[0, 0, :7].max() == 0
    assert zoomed.sum().item() == pytest.approx(256, abs=16)
    right = torch.zeros(1, 1, 33, 33)
    right[..., 16, 26] = 1.0  # 10 px right of centre -> 90 degrees counter-clockwise -> 10 px above
    turned = transform_image(right, rotate=90)
    assert turned[0, 0].argmax().item() == 6 * 33 + 16


def test_zoom_video_frames_fps_gif(tiny_overrides, models):
    rec = Recorder()
    cfg = _config(tiny_overrides, "mode=zoom", "animation.frames=4", "animation.fps=5", "animation.gif=true",
                  "animation.save_frames=true", "animation.steps_per_frame=2", "animation.zoom='0: 1, 3: 1.2'",
                  "animation.rotate=3")
    result = run_mode(cfg, models=models, callbacks=[rec], progress=False)
    assert [(i["frame"], i["step"], i["final"]) for i in rec.infos] == [
        (0, 2, False), (1, 4, False), (2, 6, False), (3, 8, False), (4, 8, True)]
    assert result.frames == 4 and result.video == result.run_dir / "animation.mp4"
    assert _video(result.video) == (4, 5, (64, 64))
    assert Image.open(result.run_dir / "animation.gif").n_frames == 4
    assert sorted(p.name for p in (result.run_dir / "frames").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert Image.open(result.run_dir / "image.png").text["frames"] == "4"
    assert _streams(result.video) == ["Video"]
    assert not [p for p in result.run_dir.rglob("*") if p.name.startswith(".")]


def test_zoom_frame_starts_from_the_moved_previous_frame(tiny_overrides, models):
    cfg = _config(tiny_overrides, "mode=zoom", "animation.zoom='0: 1, 2: 1.5'", "animation.shift_x=2",
                  "init_weight=0.5")
    run = Run(cfg, models, torch.device("cpu"))
    driver = ZoomDriver(cfg)
    before = run.image()
    driver.prepare(run, 1)
    expected = models.vqgan.encode(transform_image(before, 1.25, 2.0, 0.0, 0.0))
    torch.testing.assert_close(run.z.detach(), expected)
    torch.testing.assert_close(run.z_start, expected)  # init_weight now pulls toward the moved frame


class _StillDriver:
    """A driver that changes nothing between frames: the generic loop on its own."""

    needs_encoder, audio_source, fps = False, None, 4.0

    def __init__(self, cfg):
        self.frames, self.runs = 3, []

    def start(self, run):
        self.runs.append(run)

    def prepare(self, run, index):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("carry", [False, True])
def test_optimizer_reset_or_carried_between_frames(tiny_overrides, models, carry):
    holder = {}

    def make(cfg):
        holder["driver"] = _StillDriver(cfg)
        return holder["driver"]

    seen = []
    cfg = _config(tiny_overrides, "mode=zoom", f"animation.carry_optimizer={str(carry).lower()}",
                  "animation.steps_per_frame=3")
    animate(cfg, make, models=models, progress=False, save=False,
            callbacks=[lambda info: seen.append(holder["driver"].runs[0].opt)])
    opts = [id(o) for o in seen[:3]]
    assert (len(set(opts)) == 1) == carry
    assert all(o.state for o in seen)  # every optimiser has taken steps in its frame
    assert holder["driver"].runs[0].step_index == 2 + 2 * 3


# --- interpolate -----------------------------------------------------------------------------------

def test_slerp_and_path():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b / 3)
    mid = slerp(a, b, 1 / 3)
    torch.testing.assert_close(mid, torch.tensor([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], dtype=torch.float32))
    torch.testing.assert_close(slerp(a, a, 0.5), a)
    assert [path_position(i, 5, 3) for i in range(5)] == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]


def test_interpolate_targets_follow_the_sphere(tiny_overrides, models):
    cfg = _config(tiny_overrides, "mode=interpolate", "animation.frames=5", prompts=["a red circle:2", "a blue square"])
    run = Run(cfg, models, torch.device("cpu"))
    driver = InterpolateDriver(cfg)
    driver.start(run)
    a, b = (models.clip.encode_text([t]) for t in ("a red circle", "a blue square"))
    for i, t in enumerate([0, 0.25, 0.5, 0.75, 1.0]):
        driver.prepare(run, i)
        assert len(run.targets) == 1
        torch.testing.assert_close(run.targets[0].embeds, slerp(a, b, t), atol=1e-5, rtol=0)
        assert run.targets[0].weight == pytest.approx(2 - t)
        with torch.no_grad():
            run.z.add_(0.01)  # as if the frame were optimised: the next frame is pulled toward it
        if i < 4:
            moved = run.z.detach().clone()
            driver.prepare(run, i + 1)
            torch.testing.assert_close(run.z_start, moved)


def test_interpolate_video(tiny_overrides, models):
    cfg = _config(tiny_overrides, "mode=interpolate", "animation.frames=5", "image_prompts=[]",
                  prompts=["a red circle", "a blue square", "a green triangle"])
    result = run_mode(cfg, models=models, progress=False)
    assert _video(result.video) == (5, 12, (64, 64)) and len(result.losses) == 2 + 4


def test_generate_refuses_animation_modes(tiny_overrides, models):
    with pytest.raises(ConfigError, match="run_mode"):
        generate(_config(tiny_overrides, "mode=zoom"), models=models, progress=False, save=False)


# --- restyle ---------------------------------------------------------------------------------------

def test_restyle_keeps_frames_rate_and_audio(tiny_overrides, models, tmp_path):
    source = _input_video(tmp_path / "in.mp4", frames=5, fps=10)
    assert _streams(source) == ["Video", "Audio"]
    cfg = _config(tiny_overrides, "mode=restyle", f"restyle.video={source}", "animation.gif=true")
    result = run_mode(cfg, models=models, progress=False)
    assert _video(result.video) == (5, 10, (64, 64))
    assert _streams(result.video) == ["Video", "Audio"]
    assert Image.open(result.run_dir / "animation.gif").n_frames == 5
    assert not [p for p in result.run_dir.iterdir() if p.name.startswith(".")]

    short = run_mode(_config(tiny_overrides, "mode=restyle", f"restyle.video={source}", "restyle.max_frames=3",
                             "restyle.audio=false"), models=models, progress=False)
    assert _video(short.video)[:2] == (3, 10) and _streams(short.video) == ["Video"]


def test_restyle_silent_input(tiny_overrides, models, tmp_path):
    source = _input_video(tmp_path / "silent.mp4", frames=3, fps=6, audio=False)
    result = run_mode(_config(tiny_overrides, "mode=restyle", f"restyle.video={source}", "animation.fps=3"),
                      models=models, progress=False)
    assert _video(result.video)[:2] == (3, 3) and _streams(result.video) == ["Video"]


def test_restyle_blends_with_the_previous_output(tiny_overrides, models, tmp_path):
    source = _input_video(tmp_path / "in.mp4", frames=3, fps=6, audio=False)
    cfg = _config(tiny_overrides, "mode=restyle", f"restyle.video={source}", "restyle.blend=0.25")
    run = Run(cfg, models, torch.device("cpu"))
    driver = RestyleDriver(cfg)
    try:
        frames = [f for f in imageio.get_reader(str(source), format="FFMPEG")]
        from vqclip.animate.video import frame_tensor

        driver.prepare(run, 0)
        first = models.vqgan.encode(frame_tensor(frames[0], (64, 64)))
        torch.testing.assert_close(run.z.detach(), first)  # frame 0: its own encoding
        with torch.no_grad():
            run.z.add_(0.1)
        previous = run.z.detach().clone()
        driver.prepare(run, 1)
        own = models.vqgan.encode(frame_tensor(frames[1], (64, 64)))
        torch.testing.assert_close(run.z.detach(), 0.75 * own + 0.25 * previous)
    finally:
        driver.close()


def test_restyle_bad_inputs(tiny_overrides, models, tmp_path):
    with pytest.raises(InputVideoError, match="not found"):
        run_mode(_config(tiny_overrides, "mode=restyle", f"restyle.video={tmp_path / 'nope.mp4'}"), models=models,
                 progress=False)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputVideoError, match="cannot be read"):
        run_mode(_config(tiny_overrides, "mode=restyle", f"restyle.video={junk}"), models=models, progress=False)
    assert not (tmp_path / "out").exists()  # the input is checked before any run folder is made


# --- example configs and the command line ----------------------------------------------------------

@pytest.mark.parametrize("mode, shrink, frames", [
    ("story", ["story.steps_per_prompt=2", "story.ramp=1"], None),
    ("zoom", ["animation.frames=3"], 3),
    ("interpolate", ["animation.frames=3"], 3),
    ("restyle", ["restyle.max_frames=2", f"restyle.video={ROOT / 'docs/animation/input.mp4'}"], 2),
])
def test_example_configs_run_on_the_tiny_models(tiny_overrides, models, mode, shrink, frames):
    path = ROOT / "configs" / f"{mode}.yaml"
    cfg = load_config([str(path)], tiny_overrides + ["steps=2", "cutouts.cutn=4", "animation.steps_per_frame=1",
                                                      "output.save_every=0"] + shrink)
    assert cfg.mode == mode
    result = run_mode(cfg, models=models, progress=False, save=False)
    if frames:
        assert result.frames == frames
    else:
        assert len(result.losses) == 2 * len(cfg.story.scenes)


def test_cli_modes(tiny_overrides, capsys):
    assert main(["a red circle^a blue square", *tiny_overrides, "mode=story", "story.steps_per_prompt=1", "-q"]) == 0
    out = capsys.readouterr().out.split()
    assert any(p.endswith("image.png") for p in out)
    assert main(["a red circle", *tiny_overrides, *FAST, "mode=zoom", "animation.frames=2", "-q"]) == 0
    out = capsys.readouterr().out.split()
    assert any(p.endswith("animation.mp4") for p in out) and any(p.endswith("config.yaml") for p in out)
    assert main(["a red circle^a blue square", *tiny_overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode=story" in err[0]


def test_docs_script_renders_strips(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_animation_docs", ROOT / "scripts" / "make_animation_docs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--tiny", "--modes", "zoom", "restyle", "--out", str(tmp_path), "--count", "3", "--gif",
                        "steps=1", "cutouts.cutn=2", "animation.frames=3", "animation.steps_per_frame=1",
                        "restyle.max_frames=3"]) == 0
    strip = Image.open(tmp_path / "zoom-strip.png")
    assert strip.size == (3 * 64 + 2 * 2, 64)
    assert Image.open(tmp_path / "restyle.gif").n_frames == 3
