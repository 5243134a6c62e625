"""Method options: starting images (`init`), cutout sizes (`cutouts.min_size`), whole views (`cutouts.whole`)."""
import pytest
import torch
import torch.nn.functional as F

from vqclip import generate, load_config, load_models
from vqclip.cutouts import gaussian_blur, make_cutouts, sample_boxes, scheduled_blur
from vqclip.errors import ConfigError
from vqclip.generate import cosine_lr, initial_latent
from vqclip.starts import flat_image, smooth_image, start_image


def test_flat_start_is_one_colour():
    img = flat_image((0.2, 0.4, 0.6), 24, 16)
    assert img.shape == (1, 3, 16, 24)
    assert torch.equal(img[0, :, 7, 5], torch.tensor([0.2, 0.4, 0.6])) and float(img.std((2, 3)).max()) == 0


def test_smooth_start_is_low_frequency_and_seeded():
    a = smooth_image(64, 48, cells=4, generator=torch.Generator().manual_seed(3))
    b = smooth_image(64, 48, cells=4, generator=torch.Generator().manual_seed(3))
    c = smooth_image(64, 48, cells=4, generator=torch.Generator().manual_seed(4))
    assert a.shape == (1, 3, 48, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.25 - 1e-3 and float(a.max()) <= 0.75 + 1e-3  # 0.5 +- amount / 2
    assert float(a.std()) > 0.03  # not flat...
    assert float((a[..., 1:] - a[..., :-1]).abs().max()) < 0.05  # ...but no pixel-scale texture


def test_initial_latent_encodes_the_start_image(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["init=flat", "init_color='#3366cc'"])
    models = load_models(cfg)
    assert models.vqgan.encoder is not None  # init=flat needs the encoder, and load_models knows it
    z = initial_latent(cfg, models.vqgan, torch.device("cpu"))
    expected = models.vqgan.encode(start_image("flat", 64, 64, (0x33 / 255, 0x66 / 255, 0xCC / 255)))
    assert torch.allclose(z, expected)
    random_cfg = load_config([], tiny_overrides)
    assert load_models(random_cfg).vqgan.encoder is None  # the default still skips the encoder


def test_cutout_min_size_bounds_the_sides():
    torch.manual_seed(0)
    sides = sample_boxes(500, 128, 96, 32, 1.0, min_size=0.6)[:, 2]
    assert int(sides.min()) >= 58 and int(sides.max()) <= 96  # ceil(0.6 * 96) = 58
    assert int(sides.min()) < 62 and int(sides.max()) > 92  # and the whole range is used
    default = sample_boxes(500, 128, 96, 32, 1.0)[:, 2]
    assert int(default.min()) < 40  # min_size=0: CLIP's input size is the floor, as before


def test_whole_share_is_whole_views():
    torch.manual_seed(0)
    boxes = sample_boxes(8, 40, 30, 16, 1.0, whole=0.25)
    assert boxes[:2].tolist() == [[5.0, 0.0, 30.0]] * 2  # the largest centred square
    assert not (boxes[2:, 2] == 30).all()
    image = torch.rand(2, 3, 64, 64)
    cuts = make_cutouts(image, cutn=4, cut_size=32, whole=0.5)
    assert cuts.shape == (8, 3, 32, 32)
    whole = F.avg_pool2d(image, 2)  # a whole 64-pixel view at 32 pixels is the 2x2 mean
    for i in range(2):
        assert torch.allclose(cuts[4 * i], whole[i], atol=1e-5) and torch.allclose(cuts[4 * i + 1], whole[i], atol=1e-5)
        assert not torch.allclose(cuts[4 * i + 2], whole[i], atol=1e-3)


@pytest.mark.parametrize("override, words", [
    ("init=noise", "'init'.*random, flat, smooth"),
    ("init_color=red", "'init_color'.*#rrggbb"),
    ("cutouts.min_size=1.5", "'cutouts.min_size'.*\\[0, 1\\]"),
    ("cutouts.whole=-0.1", "'cutouts.whole'.*\\[0, 1\\]"),
    ("cutouts.blur=-1", "'cutouts.blur'.*>= 0"),
    ("cutouts.blur_steps=2", "'cutouts.blur_steps'.*\\[0, 1\\]"),
])
def test_bad_method_values(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], [override])


def test_scheduled_blur_is_coarse_to_fine():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    first = scheduled_blur(image, 4.0, step=0, until=50)
    assert torch.allclose(first, gaussian_blur(image, 4.0))
    assert torch.allclose(first.mean(), image.mean(), atol=1e-3)  # a blur moves no colour in or out
    assert float(first.std()) < 0.3 * float(image.std())  # pixel noise is gone
    half = scheduled_blur(image, 4.0, step=25, until=50)
    assert torch.allclose(half, gaussian_blur(image, 2.0))
    assert scheduled_blur(image, 4.0, step=50, until=50) is image
    assert scheduled_blur(image, 4.0, step=3, until=0) is image


def test_cosine_learning_rate_schedule(tiny_overrides):
    assert cosine_lr(0.2, 0.02, 0, 11) == pytest.approx(0.2) and cosine_lr(0.2, 0.02, 10, 11) == pytest.approx(0.02)
    assert cosine_lr(0.2, 0.02, 5, 11) == pytest.approx(0.11)
    cfg = load_config([], tiny_overrides + ["optim.lr=0.2", "optim.final_lr=0.02", "steps=3"], prompts=["x"])
    seen = []
    generate(cfg, save=False, progress=False, setup=lambda run: seen.append(run),
             callbacks=[lambda info: seen.append(seen[0].opt.param_groups[0]["lr"])])
    assert seen[1:4] == pytest.approx([0.2, 0.11, 0.02]) and seen[4] == pytest.approx(0.02)
