"""The extra image losses (pure functions and their place in the loop) and CLIP ensembles."""
import json
import math

import pytest
import torch

from vqclip import load_config, load_models
from vqclip.config import from_yaml_text, to_yaml
from vqclip.errors import ConfigError
from vqclip.generate import Models, Run, generate
from vqclip.losses import (frame, image_loss_terms, palette, palette_tensor, parse_color, saturation, symmetry,
                           total_variation)

SECOND_CLIP = {"embed_dim": 24,
               "vision_cfg": {"image_size": 48, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


# --- the pure functions --------------------------------------------------------------------------

def test_total_variation():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(total_variation(flat), torch.zeros(2))
    step = torch.zeros(1, 3, 4, 4)
    step[..., 2:] = 1.0  # one vertical edge: 1 of the 3 horizontal neighbour pairs per row differs by 1
    torch.testing.assert_close(total_variation(step), torch.tensor([1 / 3]))
    noisy = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert total_variation(noisy) > total_variation(noisy * 0.5) > 0


def test_symmetry():
    half = torch.rand(1, 3, 6, 4, generator=torch.Generator().manual_seed(0))
    mirrored = torch.cat([half, half.flip(-1)], dim=-1)
    assert symmetry(mirrored).item() == 0
    left = torch.zeros(1, 3, 4, 4)
    left[..., :2] = 1.0  # left half white, right half black: every pixel differs from its mirror by 1
    torch.testing.assert_close(symmetry(left), torch.tensor([1.0]))


def test_saturation():
    grey = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 0.8
    torch.testing.assert_close(saturation(grey, 0.25), torch.tensor([0.0625]))  # saturation 0
    torch.testing.assert_close(saturation(red, 0.25), torch.tensor([0.5625]))  # saturation 1
    torch.testing.assert_close(saturation(red, 1.0), torch.tensor([0.0]))


def test_palette():
    colors = palette_tensor(["#ff0000", "#0000ff"])
    torch.testing.assert_close(colors, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0, 0] = 1.0  # top row red
    image[0, 2, 1] = 1.0  # bottom row blue
    assert palette(image, colors).item() == 0
    image[0, :, 1, 1] = 0.0  # one black pixel: distance 1 to either colour, a quarter of the pixels
    torch.testing.assert_close(palette(image, colors), torch.tensor([0.25]))


@pytest.mark.parametrize("fn", [total_variation, symmetry, lambda x: saturation(x, 0.5),
                                lambda x: palette(x, palette_tensor(["#808080"]))])
def test_losses_have_gradients(fn):
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss = fn(x)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_parse_color_errors():
    assert parse_color("#E63C32") == pytest.approx((230 / 255, 60 / 255, 50 / 255))
    for bad in ["e63c32", "#e63c3", "red", "#gg0000"]:
        with pytest.raises(ConfigError, match="hex colour"):
            parse_color(bad, "losses.palette_colors[0]")


def test_weighted_terms_off_by_default():
    cfg = load_config()
    image = torch.rand(1, 3, 8, 8)
    assert image_loss_terms(image, cfg.losses) == []
    cfg = load_config([], ["losses.tv=2", "losses.symmetry=3", "losses.saturation=4", "losses.saturation_target=0.2",
                           "losses.palette=5", 'losses.palette_colors=["#ff0000"]', "losses.frame=6",
                           "losses.frame_width=0.25"])
    terms = image_loss_terms(image, cfg.losses)
    expected = [2 * total_variation(image), 3 * symmetry(image), 4 * saturation(image, 0.2),
                5 * palette(image, palette_tensor(["#ff0000"])), 6 * frame(image, 0.25)]
    for got, want in zip(terms, expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("override, words", [
    ("losses.tv=-1", "'losses.tv'.*>= 0"),
    ("losses.palette=1", "losses.palette_colors"),
    ("losses.palette_colors=[red]", r"'losses.palette_colors\[0\]'.*hex"),
    ("losses.saturation_target=1.5", "saturation_target"),
    ("losses.frame=-1", r"'losses.frame'.*>= 0"),
    ("losses.tones=-0.5", r"'losses.tones'.*>= 0"),
    ("losses.latent_tv=-2", r"'losses.latent_tv'.*>= 0"),
    ("losses.frame_width=0", r"'losses.frame_width'.*\(0, 0.5\]"),
    ("losses.frame_width=0.6", r"'losses.frame_width'.*\(0, 0.5\]"),
    ("clip.weight=0", "'clip.weight'.*clip.extra"),
    ("clip.extra=[{model: ViT-B-32, weight: 0}]", r"'clip.extra\[0\].weight'"),
    ("clip.extra=[{weight: 1}]", r"'clip.extra\[0\].model'"),
    ("clip.extra=[{model: ViT-B-32, wieght: 1}]", "wieght"),
])
def test_bad_loss_and_ensemble_keys(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], [override])


def test_frame_reads_only_the_outer_band():
    image = torch.full((2, 3, 16, 16), 0.2)
    image[:, 0, 4:12, 4:12] = 1.0  # a red square clear of the 1-pixel band (16 * 0.0625)
    assert torch.equal(frame(image, 0.0625), torch.zeros(2))
    image[1, 0, 0:4, 4:12] = 1.0  # the second one's square now runs into the top edge: 8 of the 60 band pixels
    share = 8 / 60  # every band pixel's squared distance to the band's mean red, averaged
    torch.testing.assert_close(frame(image, 0.0625), torch.tensor([0.0, share * (1 - share) * 0.8 ** 2]))
    assert frame(image, 0.3)[0] > 0  # 5 pixels deep: the rim of the first square is in the band too


def test_frame_gradient_touches_the_band_alone():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    frame(x, 0.125).sum().backward()  # a 2-pixel band
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:14, 2:14] = True
    assert x.grad[..., inside].abs().sum() == 0
    assert (x.grad[..., ~inside].abs().sum(0) > 0).all()
    whole = torch.rand(1, 3, 4, 4, requires_grad=True)
    torch.testing.assert_close(frame(whole, 0.5), (whole - whole.mean((2, 3), keepdim=True)).pow(2).sum(1).mean((1, 2)))


# --- in the loop -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_clip(tmp_path_factory):
    """A second tiny CLIP with another input size (48) and embedding width (24)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip2")
    path = folder / "tiny-clip-b.json"
    path.write_text(json.dumps(SECOND_CLIP))
    open_clip.add_model_config(path)
    torch.manual_seed(1)
    weights = folder / "tiny-clip-b.pt"
    torch.save(open_clip.create_model("tiny-clip-b", pretrained=None).state_dict(), weights)
    return path, weights


def _terms(cfg, models, seed=0):
    run = Run(cfg, models, torch.device("cpu"))
    torch.manual_seed(seed)
    return run, [t.detach() for t in run.loss_terms(run.image())]


def test_extra_losses_join_the_loop(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["cutouts.augments=[]"], prompts=["x"])
    models = load_models(cfg)
    run, plain = _terms(cfg, models)
    cfg_tv = load_config([], tiny_overrides + ["cutouts.augments=[]", "losses.tv=0.5", "losses.symmetry=2"],
                         prompts=["x"])
    run, terms = _terms(cfg_tv, models)
    assert len(terms) == len(plain) + 2
    torch.testing.assert_close(terms[0], plain[0])
    torch.testing.assert_close(terms[-2], 0.5 * total_variation(run.image()))
    torch.testing.assert_close(terms[-1], 2 * symmetry(run.image()))
    result = generate(load_config([], tiny_overrides + ["losses.tv=0.5", "steps=3"], prompts=["x"]),
                      models=models, save=False, progress=False)
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)


def test_ensemble_each_model_embeds_its_own_targets_with_its_weight(tiny_overrides, second_clip):
    json_path, weights = second_clip
    extra = f"clip.extra=[{{model: {json_path}, pretrained: {weights}, weight: 1.0}}]"
    base = tiny_overrides + ["cutouts.augments=[]"]
    cfg = load_config([], base + [extra], prompts=["a red circle|rain:-0.5"])
    models = load_models(cfg)
    assert [c.input_size for c in [models.clip, *models.extra_clips]] == [32, 48]
    run, terms = _terms(cfg, models)
    assert len(run.guides) == 1 and [t.embeds.shape[-1] for t in run.guides[0].targets] == [24, 24]
    assert [t.embeds.shape[-1] for t in run.targets] == [32, 32]
    assert len(terms) == 4  # two prompts for each of two models

    doubled = load_config([], base + [extra.replace("weight: 1.0", "weight: 2.0"), "clip.weight=3"],
                          prompts=["a red circle|rain:-0.5"])
    _, terms2 = _terms(doubled, models)
    for a, b in zip(terms[:2], terms2[:2]):
        torch.testing.assert_close(b, 3 * a)
    for a, b in zip(terms[2:], terms2[2:]):
        torch.testing.assert_close(b, 2 * a)

    only_extra = load_config([], base + [extra, "clip.weight=0"], prompts=["a red circle|rain:-0.5"])
    _, terms0 = _terms(only_extra, models)
    assert len(terms0) == 2  # the main CLIP is not run at all
    result = generate(load_config([], base + [extra, "steps=3"], prompts=["a red circle"]), models=models,
                      save=False, progress=False)
    assert len(result.losses) == 3


def test_ensemble_config_roundtrip_and_errors(tiny_overrides, second_clip, tmp_path):
    json_path, weights = second_clip
    cfg = load_config([], tiny_overrides + [f"clip.extra=[{{model: {json_path}, pretrained: {weights}, weight: 0.5}}]"],
                      prompts=["x"])
    assert from_yaml_text(to_yaml(cfg)) == cfg
    assert cfg.clip.extra[0].weight == 0.5 and cfg.clip.model.endswith("tiny-clip.json")
    with pytest.raises(ConfigError, match=r"'clip.extra\[0\].model'"):
        load_models(load_config([], tiny_overrides + ["clip.extra=[{model: ViT-B-33, pretrained: null}]"]))
    models = load_models(load_config([], tiny_overrides))  # loaded without the extra model
    with pytest.raises(ConfigError, match="clip.extra"):
        Run(cfg, Models(models.vqgan, models.clip), torch.device("cpu"))
