"""The shapes world: caption grammar, drawing, the geometric evaluator, and a quick training run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vqclip.shapes.evaluate import accuracy, read_image
from vqclip.shapes.world import (COLORS, HELD_OUT, PALETTE, SHAPES, Scene, ShapesDataset, all_captions, all_scenes,
                                 coverage, draw, format_caption, parse_caption, sample_geometry, sample_images,
                                 shape_height, train_scenes)


def test_caption_grammar_round_trips():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 8 * 7 * 3
    for scene in all_scenes():
        assert parse_caption(scene.caption) == scene
    assert format_caption("red", "circle", "blue") == "a red circle on a blue background"
    assert parse_caption("  An Orange   TRIANGLE on a white background ") == Scene("orange", "triangle", "white")


@pytest.mark.parametrize("bad", ["a red circle", "a red hexagon on a blue background",
                                 "a pink circle on a blue background", "a red circle on a red background"])
def test_bad_captions_are_refused(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_held_out_list_is_spread_and_disjoint_from_training():
    held = set(HELD_OUT)
    assert len(held) == len(HELD_OUT) >= 16
    assert all(s.color != s.background for s in held)
    assert {s.shape for s in held} == set(SHAPES)
    assert {s.color for s in held} == set(COLORS) == {s.background for s in held}
    train = train_scenes()
    assert held.isdisjoint(train) and len(train) + len(held) == len(all_scenes())
    seen = {ShapesDataset(train, 10_000, seed=3)[i]["caption"] for i in range(2_000)}
    assert seen.isdisjoint(s.caption for s in held)
    assert len(seen) == len(train)  # the sampler covers every training scene


def test_drawing_is_seeded_and_in_frame():
    ds = ShapesDataset(train_scenes(), 100, seed=7, size=128)
    a, b = ds[5], ds[5]
    assert a["caption"] == b["caption"] and np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert a["image"].shape == (3, 128, 128) and 0 <= float(a["image"].min()) <= float(a["image"].max()) <= 1
    rng = np.random.default_rng(0)
    ideal_area = {"circle": np.pi / 4, "square": 1.0, "triangle": np.sqrt(3) / 4}
    for i in range(60):
        shape = SHAPES[i % 3]
        geo = sample_geometry(shape, 128, rng)
        assert 0.3 * 128 <= geo.extent <= 0.7 * 128
        assert geo.x0 >= 0 and geo.y0 >= 0
        assert geo.x0 + geo.extent <= 128 and geo.y0 + shape_height(shape, geo.extent) <= 128
        area = coverage(shape, geo, 128).sum()  # nothing cut off by the frame
        assert area == pytest.approx(ideal_area[shape] * geo.extent ** 2, rel=0.02)


def test_noise_is_small():
    rng = np.random.default_rng(0)
    img = draw(Scene("red", "circle", "blue"), rng).astype(int)
    corner = img[:10, :10].reshape(-1, 3)
    assert np.abs(corner - np.array(PALETTE["blue"])).max() <= 10


def test_evaluator_reads_fresh_images():
    pairs = [(read_image(img), scene) for scene, img in sample_images(all_scenes(), 336, seed=11)]
    acc = accuracy(pairs)
    assert acc["all"] >= 0.99, acc


def test_evaluator_survives_blur_noise_and_specks():
    rng = np.random.default_rng(1)

    def spoil(img: np.ndarray) -> np.ndarray:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2)), np.float32)
        img = img + rng.normal(0, 12, img.shape)
        specks = rng.random(img.shape[:2]) < 0.02
        img[specks] = rng.integers(0, 256, (int(specks.sum()), 3))
        return np.clip(img, 0, 255).astype(np.uint8)

    pairs = [(read_image(Image.fromarray(spoil(img))), scene) for scene, img in sample_images(HELD_OUT, 96, seed=5)]
    assert accuracy(pairs)["all"] >= 0.95


def test_evaluator_refuses_what_is_not_a_scene():
    flat = np.full((128, 128, 3), PALETTE["green"], np.uint8)
    assert read_image(flat).shape is None and read_image(flat).background == "green"
    bar = flat.copy()
    bar[50:75, 5:120] = PALETTE["red"]  # a long rectangle is no square
    reading = read_image(bar)
    assert reading.color == "red" and reading.shape is None
    assert not reading.matches("a red square on a green background")
    with pytest.raises(ValueError):
        read_image(np.zeros((8, 8), np.uint8))


def test_quick_training_writes_loadable_files_in_the_published_formats(tmp_path):
    import runpy

    import open_clip
    import torch
    import yaml

    from vqclip.models.vqgan import load_vqgan
    from vqclip.shapes.train import CLIP_MEAN, CLIP_STD, clip_zero_shot, load_exported_vqgan, vqgan_psnr

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"
    main = runpy.run_path(str(script), run_name="train_shapes")["main"]
    assert main(["--quick", "--harden", "--out", str(tmp_path), "--clip-name", "shapes-clip-quick-test"]) == 0

    # VQGAN: taming YAML + Lightning-style checkpoint under VQModel's key names.
    spec = yaml.safe_load((tmp_path / "vqgan.yaml").read_text())["model"]
    assert spec["target"] == "taming.models.vqgan.VQModel"
    assert spec["params"]["lossconfig"] == {"target": "taming.modules.losses.vqperceptual.DummyLoss"}
    dd = spec["params"]["ddconfig"]
    assert dd["resolution"] == 128 and dd["double_z"] is False and dd["ch"] % 32 == 0
    ckpt = torch.load(tmp_path / "vqgan.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "epoch", "global_step", "pytorch-lightning_version"}
    assert ckpt["global_step"] == 4
    keys = set(ckpt["state_dict"])
    assert {"quantize.embedding.weight", "quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight",
            "post_quant_conv.bias"} <= keys
    assert all(k.split(".")[0] in {"encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"} for k in keys)
    vq = load_exported_vqgan(tmp_path / "vqgan.yaml", tmp_path / "vqgan.ckpt")  # strict
    assert vqgan_psnr(vq, HELD_OUT, n=2) > 0
    loaded = load_vqgan(tmp_path / "vqgan.yaml", tmp_path / "vqgan.ckpt", with_encoder=True)
    assert loaded.decode(loaded.encode(torch.rand(1, 3, 128, 128))).shape == (1, 3, 128, 128)

    # CLIP: an open_clip model-config JSON + a plain state dict, loaded by open_clip itself.
    json_path, weights = tmp_path / "shapes-clip-quick-test.json", tmp_path / "shapes-clip-quick-test.pt"
    open_clip.add_model_config(json_path)
    model = open_clip.create_model("shapes-clip-quick-test", pretrained=str(weights))
    assert tuple(model.visual.image_mean) == CLIP_MEAN and tuple(model.visual.image_std) == CLIP_STD
    tokenizer = open_clip.get_tokenizer("shapes-clip-quick-test")
    acc = clip_zero_shot(model.eval(), tokenizer, HELD_OUT, n=4)
    assert set(acc) == {"all", "color", "shape", "background"}

    report = json.loads((tmp_path / "training.json").read_text())
    assert report["metrics"]["vqgan"]["steps"] == 4 and report["metrics"]["clip"]["steps"] == 4
    # Hardening ran after both: the generator made 2 images, each kept at step 1 and at the end.
    hardened = report["metrics"]["harden"]
    assert hardened["round1_made"] == 4
    assert hardened["round1_negatives"] + hardened["round1_read_as_a_scene"] == 4
    assert set(report["wall_seconds"]) == {"vqgan+clip", "harden", "noise"}
    # then its second phase, on noised views
    assert report["configs"]["noise"]["noise"] == 1.0 and report["configs"]["harden"]["noise"] == 0.0

    # Hardening again on its own changes the CLIP's weights, keeps it loadable and keeps the
    # record of how the models it started from were trained.
    before = torch.load(weights, weights_only=True)
    assert main(["--quick", "--out", str(tmp_path), "--clip-name", "shapes-clip-quick-test", "--only", "harden"]) == 0
    after = torch.load(weights, weights_only=True)
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    open_clip.create_model("shapes-clip-quick-test", pretrained=str(weights))
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["metrics"]["vqgan"]["steps"] == 4 and "harden" in report["metrics"]


def test_train_script_hardens_by_default_and_not_with_no_harden(tmp_path, capsys):
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"
    main = runpy.run_path(str(script), run_name="train_shapes")["main"]
    assert main(["--quick", "--no-harden", "--out", str(tmp_path / "plain"), "--clip-name", "shapes-clip-quick-test",
                 "--clip-noise", "0.3", "--clip-width", "8", "--clip-layers", "1", "2", "1", "1"]) == 0
    report = json.loads((tmp_path / "plain" / "training.json").read_text())
    assert set(report["metrics"]) == {"vqgan", "clip"}
    assert report["configs"]["clip"]["noise"] == 0.3
    spec = json.loads((tmp_path / "plain" / "shapes-clip-quick-test.json").read_text())["vision_cfg"]
    assert spec["width"] == 8 and spec["layers"] == [1, 2, 1, 1]
    assert main(["--quick", "--out", str(tmp_path / "default"), "--clip-name", "shapes-clip-quick-test"]) == 0
    report = json.loads((tmp_path / "default" / "training.json").read_text())
    assert set(report["metrics"]) == {"vqgan", "clip", "harden", "noise"}
    assert report["configs"]["clip"]["noise"] == 0.0  # noised CLIP training is off unless asked for
    assert report["configs"]["harden"]["sampled"] == 2  # the quick run's climbing negatives
    # --only noise runs the second, noised phase alone on the models already there
    capsys.readouterr()
    assert main(["--quick", "--only", "noise", "--out", str(tmp_path / "default"),
                 "--clip-name", "shapes-clip-quick-test"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"noise"}


def test_train_script_refuses_contradictory_hardening_flags(tmp_path, capsys):
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"
    main = runpy.run_path(str(script), run_name="train_shapes")["main"]
    for argv, message in ((["--harden-rounds", "0"], "--harden-rounds must be at least 1, got 0"),
                          (["--harden", "--only", "clip"], "--harden needs both models"),
                          (["--clip-noise", "-0.5"], "--clip-noise must be 0 or more, got -0.5"),
                          (["--clip-width", "7"], "--clip-width must be an even number of at least 2"),
                          (["--clip-layers", "1", "0", "1", "1"], "4 stage depths of at least 1, got 1 0 1 1")):
        with pytest.raises(SystemExit) as exc:
            main(["--quick", "--out", str(tmp_path)] + argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_clip_training_noise_ramps_up_with_the_cutouts(tmp_path):
    import dataclasses

    import torch

    from vqclip.shapes.train import ClipModule, quick_configs, write_clip_config

    plain_cfg = quick_configs()[1]
    noised_cfg = dataclasses.replace(plain_cfg, noise=0.5)
    json_path = write_clip_config(plain_cfg, tmp_path)
    plain, noised = ClipModule(plain_cfg, json_path), ClipModule(noised_cfg, json_path)
    images = torch.rand(32, 3, 128, 128)
    masks = torch.zeros(32, 128, 128, dtype=torch.bool)
    masks[:, 32:96, 32:96] = True

    def views(module, ramp):
        torch.manual_seed(0)  # the same cutouts, augments and whole-image picks in both modules
        return module.views(images, masks, ramp)

    assert torch.equal(views(plain, 0.0), views(noised, 0.0))  # before the curriculum starts: no noise
    for ramp in (0.5, 1.0):
        added = (views(noised, ramp) - views(plain, ramp)) * plain.std  # back on the [0, 1] pixel scale
        per_view = added.flatten(1).std(dim=1)
        assert bool((per_view > 0).all())  # every view noised
        assert float(per_view.max()) <= 0.5 * ramp * 1.05  # each std drawn from [0, noise * ramp]
        assert float(per_view.max() - per_view.min()) > 0.1 * ramp  # drawn per view, not one std for all
    with pytest.raises(ValueError, match="ClipTrainConfig.noise must be 0 or more, got -0.1"):
        ClipModule(dataclasses.replace(plain_cfg, noise=-0.1), json_path)


def test_hardening_without_generator_images_needs_no_vqgan(tmp_path):
    import dataclasses

    import torch

    from vqclip.shapes.harden import harden_clip, quick_harden_config
    from vqclip.shapes.train import ClipModule, export_clip, quick_configs, write_clip_config

    clip_cfg = quick_configs()[1]
    weights = export_clip(ClipModule(clip_cfg, write_clip_config(clip_cfg, tmp_path)), tmp_path / f"{clip_cfg.name}.json")
    before = torch.load(weights, weights_only=True)
    metrics = harden_clip(tmp_path, clip_cfg, dataclasses.replace(quick_harden_config(), generated=0, runs=0))
    assert not any(k.startswith("round") for k in metrics) and "zero_shot_held_out_all" in metrics
    after = torch.load(weights, weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # fine-tuned in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights.name, f"{clip_cfg.name}.json"])


def test_noised_fine_tuning_is_what_changes_the_weights(tmp_path):
    import dataclasses
    import shutil

    import torch

    from vqclip.shapes.harden import harden_clip, noise_phase, quick_harden_config
    from vqclip.shapes.train import ClipModule, export_clip, quick_configs, write_clip_config

    clip_cfg = quick_configs()[1]
    start = tmp_path / "start"
    export_clip(ClipModule(clip_cfg, write_clip_config(clip_cfg, start)), start / f"{clip_cfg.name}.json")
    plain = dataclasses.replace(quick_harden_config(), generated=0, runs=0, adv_eps=0.0)
    assert noise_phase(plain, quick=True) == dataclasses.replace(plain, noise=1.0)
    assert noise_phase(plain).steps == 600 and noise_phase(plain).noise == 1.0  # the shipped recipe's second phase
    results = {}
    runs = (("a", plain), ("b", plain), ("noised", noise_phase(plain, quick=True)),
            ("climbed", dataclasses.replace(plain, climb_noise=1.0)))  # only the buffer's climb noised
    for name, cfg in runs:
        shutil.copytree(start, tmp_path / name)
        harden_clip(tmp_path / name, clip_cfg, cfg)
        results[name] = torch.load(tmp_path / name / f"{clip_cfg.name}.pt", weights_only=True)
    assert all(torch.equal(results["a"][k], results["b"][k]) for k in results["a"])  # seeded: the same twice
    assert any(not torch.equal(results["a"][k], results["noised"][k]) for k in results["a"])
    assert any(not torch.equal(results["a"][k], results["climbed"][k]) for k in results["a"])


def test_hardening_needs_both_trained_models(tmp_path):
    from vqclip.shapes.harden import harden_clip, quick_harden_config
    from vqclip.shapes.train import quick_configs

    with pytest.raises(FileNotFoundError, match="hardening needs the trained models; missing .*shapes-clip.json"):
        harden_clip(tmp_path, quick_configs()[1], quick_harden_config())


@pytest.mark.parametrize("field, value, message", [("negatives", -1, "negatives must be 0 or more, got -1"),
                                                   ("sample_steps", 0, "sample_steps must be at least 1, got 0"),
                                                   ("sample_res", (1,), "sample_res must be resolutions of at least 2"),
                                                   ("reinit", 2.0, "reinit must be in 0..1, got 2.0"),
                                                   ("noise", -0.1, "noise must be 0 or more, got -0.1"),
                                                   ("climb_noise", -1.0, "climb_noise must be 0 or more, got -1.0"),
                                                   ("generated_share", 1.5, "generated_share must be in 0..1"),
                                                   ("margin", -0.1, "margin must be 0 or more")])
def test_bad_hardening_settings_name_the_field(tmp_path, field, value, message):
    import dataclasses

    from vqclip.shapes.harden import harden_clip, quick_harden_config
    from vqclip.shapes.train import quick_configs

    with pytest.raises(ValueError, match=message):
        harden_clip(tmp_path, quick_configs()[1], dataclasses.replace(quick_harden_config(), **{field: value}))


def test_hardening_needs_some_negatives(tmp_path):
    import dataclasses

    from vqclip.shapes.harden import harden_clip, quick_harden_config
    from vqclip.shapes.train import quick_configs

    with pytest.raises(ValueError, match="needs negatives, sampled or runs .* at least 1, got 0, 0 and 0"):
        harden_clip(tmp_path, quick_configs()[1],
                    dataclasses.replace(quick_harden_config(), negatives=0, sampled=0, runs=0))
