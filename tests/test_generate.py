"""The generation loop end to end on tiny models: loss, reproducibility, outputs, errors."""
import hashlib

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from vqclip import generate, load_config, load_models
from vqclip.config import from_yaml_text
from vqclip.cutouts import make_cutouts
from vqclip.errors import ConfigError, InputImageError


def test_loss_falls(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["steps=30", "cutouts.augments=[]", "optim.lr=0.5"], prompts=["a red car"])
    result = generate(cfg, save=False, progress=False)
    losses = np.array(result.losses)
    assert len(losses) == 30
    assert losses[-5:].mean() < losses[:5].mean() - 0.01


def test_same_seed_same_png_bytes_different_seed_differs(tiny_overrides):
    def run(seed):
        cfg = load_config([], tiny_overrides + [f"seed={seed}"], prompts=["a red car|rain:-0.5"])
        result = generate(cfg, progress=False)
        return hashlib.sha256((result.run_dir / "image.png").read_bytes()).hexdigest(), result
    a, ra = run(5)
    b, rb = run(5)
    c, _ = run(6)
    assert a == b and a != c
    assert ra.run_dir != rb.run_dir  # a second run never overwrites the first


def test_outputs_and_png_metadata_roundtrip(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["output.video=true", "output.fps=10", "output.save_every=3"],
                      prompts=["a red car"])
    result = generate(cfg, progress=False)
    run = result.run_dir
    names = sorted(p.name for p in run.iterdir())
    assert names == ["config.yaml", "frames", "image.png", "progress.mp4", "state.pt"]
    assert sorted(p.name for p in (run / "frames").iterdir()) == ["000000.png", "000003.png", "000006.png"]
    img = Image.open(run / "image.png")
    assert img.size == (64, 64)
    assert img.text["prompt"] == "a red car" and img.text["seed"] == "1"
    assert from_yaml_text(img.text["config"]) == result.config
    assert from_yaml_text((run / "config.yaml").read_text()) == result.config
    assert img.text["vqclip_version"]
    np.testing.assert_array_equal(np.asarray(img), np.asarray(result.images[0]))
    reader = imageio.get_reader(str(run / "progress.mp4"), format="FFMPEG")
    meta = reader.get_meta_data()
    count = sum(1 for _ in reader)
    reader.close()
    assert count == cfg.steps + 1 and meta["fps"] == 10 and tuple(meta["size"]) == (64, 64)
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or ".part" in p.name]


def test_no_seed_picks_and_records_one(tiny_overrides):
    cfg = load_config([], [o for o in tiny_overrides if not o.startswith("seed=")], prompts=["x"])
    result = generate(cfg, progress=False)
    assert cfg.seed is None and isinstance(result.seed, int)
    assert Image.open(result.run_dir / "image.png").text["seed"] == str(result.seed)


def test_callbacks_see_every_step_and_final(tiny_overrides):
    seen = []
    cfg = load_config([], tiny_overrides + ["steps=5"], prompts=["x"])
    generate(cfg, callbacks=[lambda info: seen.append((info["step"], info["final"], tuple(info["image"].shape)))],
             save=False, progress=False)
    assert seen == [(i, False, (1, 3, 64, 64)) for i in range(5)] + [(5, True, (1, 3, 64, 64))]


def test_init_image_image_prompt_and_init_weight(tiny_overrides, tmp_path):
    rgb = np.zeros((80, 100, 3), np.uint8)
    rgb[:, :50] = (220, 40, 40)
    Image.fromarray(rgb).save(tmp_path / "init.png")
    cfg = load_config([], tiny_overrides + [f"init_image={tmp_path / 'init.png'}", "init_weight=1.0",
                                            f"image_prompts=[{tmp_path / 'init.png'}:0.5]", "steps=3"], prompts=["x"])
    models = load_models(cfg)
    assert models.vqgan.encoder is not None
    result = generate(cfg, models=models, save=False, progress=False)
    assert result.images[0].size == (64, 64) and np.isfinite(result.losses).all()


@pytest.mark.parametrize("content, words", [
    (b"just text", "not an image"), (None, "not found"), ("tiny", "at least"), ("trunc", "truncated"),
])
def test_bad_init_images(tiny_overrides, tmp_path, content, words):
    path = tmp_path / "init.png"
    if content == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    elif content == "trunc":
        Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif content is not None:
        path.write_bytes(content)
    cfg = load_config([], tiny_overrides + [f"init_image={path}"], prompts=["x"])
    with pytest.raises(InputImageError, match=words):
        generate(cfg, progress=False)


def test_size_not_multiple_of_factor_is_an_error(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["size=[71,64]"], prompts=["x"])
    with pytest.raises(ConfigError, match=r"multiple of .* 4.*size=\[72, 64\]"):
        generate(cfg, progress=False)


def test_no_prompt_is_an_error(tiny_overrides):
    with pytest.raises(ConfigError, match="no prompt"):
        generate(load_config([], tiny_overrides), progress=False)


@pytest.mark.parametrize("h, w, cut_size", [(30, 32, 16), (30, 32, 6), (96, 128, 12)])
def test_batched_cutouts_match_direct_crops(h, w, cut_size):
    """Each batched cutout equals its box cropped and resized alone with antialiased bicubic
    interpolation, for mild and for large (up to 8x) downscales, and so does the gradient."""
    torch.manual_seed(0)
    image = torch.rand(2, 3, h, w, requires_grad=True)
    torch.manual_seed(1)
    cuts = make_cutouts(image, cutn=5, cut_size=cut_size, cut_pow=1.0)
    assert cuts.shape == (10, 3, cut_size, cut_size)
    from vqclip.cutouts import sample_boxes
    torch.manual_seed(1)
    boxes = sample_boxes(10, w, h, cut_size, 1.0).long()
    refs = []
    for i, (x0, y0, side) in enumerate(boxes.tolist()):
        crop = image[i // 5: i // 5 + 1, :, y0:y0 + side, x0:x0 + side]
        refs.append(torch.nn.functional.interpolate(crop, size=(cut_size, cut_size), mode="bicubic",
                                                    align_corners=False, antialias=True))
    ref = torch.cat(refs)
    torch.testing.assert_close(cuts, ref, atol=1e-5, rtol=0)
    weights = torch.rand_like(ref)
    grad, = torch.autograd.grad((cuts * weights).sum(), image)
    ref_grad, = torch.autograd.grad((ref * weights).sum(), image)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)
    assert len(set(boxes[:, 2].tolist())) > 1  # sizes really vary
