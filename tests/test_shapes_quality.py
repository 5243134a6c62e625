"""The shapes quality benchmark's plumbing, on the tiny random models (scores are not the point here)."""
import json

from vqclip import load_config
from vqclip.shapes.quality import CHANCE, eval_scenes, example_grid, merge_reports, run_benchmark, screen_report
from vqclip.shapes.world import HELD_OUT, train_scenes


def test_eval_scenes_fixed_and_disjoint():
    scenes = eval_scenes(16)
    assert scenes["held_out"] == list(HELD_OUT) and len(scenes["seen"]) == 16
    assert set(scenes["seen"]) <= set(train_scenes()) and not set(scenes["seen"]) & set(HELD_OUT)
    assert eval_scenes(16) == scenes


def test_benchmark_report(tiny_overrides, tmp_path, monkeypatch):
    import vqclip.shapes.quality as quality

    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:1])
    cfg = load_config([], tiny_overrides + ["steps=2"])
    report = run_benchmark(cfg, seeds=[0], n_seen=2, image_dir=tmp_path / "img")
    assert [s.split for s in report.samples] == ["seen", "seen", "held_out"]
    assert set(report.success) == {"seen", "held_out", "all"} and report.chance == CHANCE
    for s in report.samples:
        expected = all(s.correct.values())
        assert (s.read_as == s.caption) == expected
    data = json.loads(report.to_json())
    assert data["config"]["steps"] == 2 and len(data["samples"]) == 3
    assert "held-out" in report.table()
    grid = example_grid(report.samples, columns=2, cell=32)
    assert grid.size == (64, 2 * 38)
    other = run_benchmark(load_config([], tiny_overrides + ["steps=2"]), seeds=[1], n_seen=2)
    merged = merge_reports([report.to_json(), other.to_json()])
    assert merged.config["seeds"] == [0, 1] and len(merged.samples) == 6
    assert merged.success["all"] == sum(all(s.correct.values()) for s in merged.samples) / 6


def test_screen_takes_every_second_prompt_in_one_batched_run(tiny_overrides, tmp_path, monkeypatch):
    import importlib

    from PIL import Image

    import vqclip.shapes.quality as quality
    from vqclip.shapes.evaluate import read_image

    generation = importlib.import_module("vqclip.generate")  # the module, not the function of that name
    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:3])
    runs = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda cfg, **kw: runs.append(cfg) or real(cfg, **kw))
    report = screen_report(load_config([], tiny_overrides + ["steps=2"]), seeds=[0, 1], n_seen=4,
                           image_dir=tmp_path / "img")
    seen = eval_scenes(4)["seen"]
    want = [s.caption for s in seen[::2]] + [s.caption for s in HELD_OUT[:3:2]]
    assert [cfg.batch_prompts for cfg in runs] == [want, want] and [cfg.seed for cfg in runs] == [0, 1]
    assert [s.caption for s in report.samples] == want + want
    assert [s.split for s in report.samples[:4]] == ["seen", "seen", "held_out", "held_out"]
    for s in report.samples:  # each image read back from the file the screen wrote
        assert read_image(Image.open(s.path)).caption == s.read_as
    assert report.config["screen_every"] == 2 and set(report.success) == {"seen", "held_out", "all"}


def test_pixel_oracle_optimises_towards_the_drawings():
    """The oracle runs the generator's optimisation on the shipped demo VQGAN with a pixel guide:
    in a few steps the pixel loss of every image must drop well below where random tokens start."""
    from vqclip.shapes.oracle import pixel_oracle

    cfg = load_config(["configs/shapes.yaml"], ["steps=12"])
    scenes = [train_scenes()[0], HELD_OUT[0]]
    results = pixel_oracle(cfg, scenes, seed=0)
    assert [r.scene for r in results] == scenes
    for r in results:
        assert r.last_loss < 0.5 * r.first_loss
        assert r.right == r.reading.matches(r.scene)


def test_oracle_report_has_the_benchmark_layout(monkeypatch):
    import vqclip.shapes.quality as quality
    from vqclip.shapes.quality import oracle_report

    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:1])
    report = oracle_report(load_config(["configs/shapes.yaml"], ["steps=2"]), seeds=[0, 1], n_seen=1)
    assert [(s.split, s.seed) for s in report.samples] == [("seen", 0), ("held_out", 0), ("seen", 1), ("held_out", 1)]
    assert report.config["guide"] == "pixel oracle" and set(report.success) == {"seen", "held_out", "all"}


def test_eval_script_refuses_a_screen_stride_below_one(monkeypatch, capsys):
    import sys

    import pytest

    main = _eval_script_main()
    monkeypatch.setattr(sys, "argv", ["eval_shapes.py", "--screen", "0"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--screen takes a stride of at least 1, got 0" in capsys.readouterr().err


def test_eval_script_keeps_the_images_it_was_asked_to_keep(tiny_overrides, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from PIL import Image

    import vqclip.shapes.quality as quality
    from vqclip.shapes.evaluate import read_image

    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:2])
    main = _eval_script_main()
    keep, out, empty = tmp_path / "kept", tmp_path / "report.json", tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    monkeypatch.setattr(sys, "argv", ["eval_shapes.py", "--config", str(empty), "--screen", "--seeds", "0",
                                      "--n-seen", "2", "--keep", str(keep), "--json", str(out),
                                      *tiny_overrides, "steps=2"])
    assert main() == 0
    samples = json.loads(out.read_text())["samples"]
    assert len(samples) == 2 and sorted(Path(s["path"]) for s in samples) == sorted(keep.iterdir())
    for s in samples:  # the kept file is the image that was scored
        assert read_image(Image.open(s["path"])).caption == s["read_as"]


def _eval_script_main():
    """`main` of scripts/eval_shapes.py, loaded from its file (scripts/ is not a package)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_shapes.py"
    return runpy.run_path(str(script), run_name="eval_shapes")["main"]
