"""The CLIP's own climbing negatives (vqclip.shapes.sampler): they climb, keep their state, start over."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqclip.shapes.sampler import NegativeSampler, random_views
from vqclip.shapes.world import COLORS, PALETTE, train_scenes

MEAN = torch.full((1, 3, 1, 1), 0.5)
STD = torch.full((1, 3, 1, 1), 0.25)


def _encoder(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.LazyLinear(16))
    net(torch.zeros(1, 3, 16, 16))
    return net.requires_grad_(False)


def _text(n, seed=1):
    return F.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _cosines(sampler, encode, text, index):
    with torch.no_grad():
        x = (F.interpolate(sampler.render(index, 32), size=(16, 16), mode="area") - MEAN) / STD
        return (F.normalize(encode(x), dim=-1) * text[torch.as_tensor(sampler.scene[index])]).sum(-1)


def test_entries_climb_the_cosine_to_their_caption():
    scenes = train_scenes()[:4]
    sampler = NegativeSampler(scenes, size=6, resolutions=(4, 8), lr=0.1, reinit=0.0, seed=0)
    encode, text, index = _encoder(), _text(len(scenes)), np.arange(6)
    before = _cosines(sampler, encode, text, index)
    for _ in range(5):
        sampler.climb(index, encode, text, steps=4, mean=MEAN, std=STD, view_size=16)
    after = _cosines(sampler, encode, text, index)
    assert (after > before).sum() >= 5 and after.mean() > before.mean() + 0.05
    assert all(sampler.logits[i].shape == (3, sampler.res[i], sampler.res[i]) for i in index)


def test_entries_keep_climbing_from_where_they_were_unless_they_start_over():
    scenes = train_scenes()[:3]
    encode, text = _encoder(), _text(3)
    keep = NegativeSampler(scenes, size=3, resolutions=(8,), lr=0.05, reinit=0.0, seed=0)
    for _ in range(3):
        keep.climb([0, 1], encode, text, steps=2, mean=MEAN, std=STD, view_size=16)
    assert keep.age.tolist() == [6, 6, 0]  # the third was never picked
    fresh = NegativeSampler(scenes, size=3, resolutions=(8,), lr=0.05, reinit=0.0, seed=0)
    assert torch.equal(fresh.logits[2], keep.logits[2]) and not torch.equal(fresh.logits[0], keep.logits[0])
    restart = NegativeSampler(scenes, size=3, resolutions=(8,), lr=0.05, reinit=1.0, seed=0)
    for _ in range(3):
        restart.climb([0, 1], encode, text, steps=2, mean=MEAN, std=STD, view_size=16)
    assert restart.age.tolist() == [2, 2, 0]  # every pick started over


def test_entries_start_as_drawn_non_scenes_in_their_caption_colours():
    scenes = train_scenes()
    sampler = NegativeSampler(scenes, size=8, resolutions=(32,), lr=0.1, reinit=0.0, seed=3)
    images = sampler.render(range(8), 32)
    assert images.shape == (8, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    for i, image in enumerate(images):
        scene = scenes[int(sampler.scene[i])]
        pixels = image.permute(1, 2, 0).reshape(-1, 3) * 255
        palette = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32)
        nearest = torch.cdist(pixels, palette).argmin(1)
        share = lambda name: float((nearest == COLORS.index(name)).float().mean())  # noqa: E731
        assert share(scene.color) + share(scene.background) > 0.6


def test_noise_starts_are_random_palette_colours_anywhere():
    scenes = train_scenes()
    sampler = NegativeSampler(scenes, size=6, resolutions=(8,), lr=0.1, reinit=0.0, seed=3, noise=1.0)
    palette = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32) / 255
    for i in range(6):
        pixels = torch.sigmoid(sampler.logits[i]).permute(1, 2, 0).reshape(-1, 3)
        dist = torch.cdist(pixels, palette).min(1)
        assert float(dist.values.max()) < 0.03  # every low-resolution pixel is a palette colour
        assert len(set(dist.indices.tolist())) >= 5  # and not just the caption's two
    with pytest.raises(ValueError, match="noise must be a probability in 0..1, got 1.5"):
        NegativeSampler(scenes, size=2, resolutions=(8,), lr=0.1, reinit=0.0, seed=0, noise=1.5)


def test_random_views_are_crops_of_the_image():
    flat = torch.rand(4, 3, 1, 1).expand(4, 3, 40, 40).contiguous()
    views = random_views(flat, 16)
    assert views.shape == (4, 3, 16, 16)
    assert torch.allclose(views, flat[:, :, :16, :16], atol=1e-5)  # a flat image stays that colour
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(64, 3, 40, 40).contiguous()
    widths = [abs(float(v[0, 0, -1] - v[0, 0, 0])) for v in random_views(ramp, 16)]
    assert max(widths) > 0.9 and min(widths) > 0.5  # the whole width, or at least 60% of it


def test_the_sampler_refuses_an_empty_buffer():
    with pytest.raises(ValueError, match="size >= 1 and resolutions >= 2"):
        NegativeSampler(train_scenes(), size=0, resolutions=(8,), lr=0.1, reinit=0.0, seed=0)


def _quick_module(tmp_path, **changes):
    import dataclasses

    from vqclip.shapes.harden import _harden_module_class, quick_harden_config
    from vqclip.shapes.train import ClipModule, export_clip, quick_configs, write_clip_config

    clip_cfg = quick_configs()[1]
    json_path = write_clip_config(clip_cfg, tmp_path)
    weights = export_clip(ClipModule(clip_cfg, json_path), json_path)
    cfg = dataclasses.replace(quick_harden_config(), **changes)
    return _harden_module_class()(clip_cfg, json_path, weights, cfg)


def _batch(module, n=4):
    from vqclip.shapes.world import ShapesDataset

    data = ShapesDataset(module.scenes, n, seed=5)
    return torch.utils.data.default_collate([data[i] for i in range(n)])


def test_climbed_entries_that_became_their_scene_are_not_negatives(tmp_path):
    from vqclip.shapes.world import draw, to_tensor

    module = _quick_module(tmp_path, sampled=4, buffer=4, sample_res=(32,), sample_lr=0.0, reinit=0.0)
    sampler, rng = module.sampler, np.random.default_rng(0)
    drawings = [to_tensor(draw(module.scenes[int(s)], rng, 32)) for s in sampler.scene]
    flat = [torch.full((3, 32, 32), 0.5) for _ in sampler.scene]  # grey: no scene at all

    sampler.logits = [torch.logit(d.clamp(0.02, 0.98)) for d in flat[:2] + drawings[2:]]
    images, scenes = module.sampled_negatives(module.caption_text().detach())
    assert len(images) == len(scenes) == 2 and module.sampled_scenes == 0.5
    assert images.shape[1:] == (3, 128, 128)
    assert all(torch.allclose(im, torch.full_like(im, 0.5), atol=0.01) for im in images)  # the grey ones


def test_a_frozen_text_tower_stays_as_trained(tmp_path):
    module = _quick_module(tmp_path, freeze_text=True, sampled=2, negatives=1, adv_eps=0.0)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    opt = module.configure_optimizers()["optimizer"]
    for step in range(2):
        opt.zero_grad()
        module.training_step(_batch(module), step).backward()
        opt.step()
    after = module.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("visual.") for k in moved), sorted(moved)[:5]


def test_a_frozen_text_tower_is_encoded_once_and_trains_the_same(tmp_path):
    def train(keep_text):
        torch.manual_seed(0)
        module = _quick_module(tmp_path, freeze_text=True, sampled=2, negatives=1, adv_eps=0.0)
        module.text_frozen = keep_text  # False: every step encodes the captions again
        calls = []
        encode_text = module.model.encode_text
        module.model.encode_text = lambda tokens: calls.append(len(tokens)) or encode_text(tokens)
        opt = module.configure_optimizers()["optimizer"]
        for step in range(3):
            torch.manual_seed(step)
            opt.zero_grad()
            module.training_step(_batch(module), step).backward()
            opt.step()
        return module.model.state_dict(), len(calls)

    kept, kept_calls = train(True)
    again, again_calls = train(False)
    assert kept_calls == again_calls / 3  # each token set once instead of once per step
    assert all(torch.equal(kept[k], again[k]) for k in kept)


def test_climbing_on_noised_views_noises_each_crop_within_sigma():
    scenes = train_scenes()[:2]
    text, seen, net = _text(2), {}, _encoder()  # built once: building it reseeds torch's RNG

    def recorder(key):
        def encode(x):
            seen.setdefault(key, x.detach().clone())  # the first step's crops
            return net(x)
        return encode

    for key, sigma in (("clean", 0.0), ("noised", 0.4)):
        sampler = NegativeSampler(scenes, size=8, resolutions=(8,), lr=0.1, reinit=0.0, seed=0)
        torch.manual_seed(3)  # the same crops both times
        sampler.climb(np.arange(8), recorder(key), text, steps=1, mean=MEAN, std=STD, view_size=16, sigma=sigma)
    noise = (seen["noised"] - seen["clean"]) * STD  # back to the [0, 1] pixel scale
    per_view = noise.flatten(1).std(dim=1)
    assert (per_view > 0).all() and (per_view < 0.4 * 1.1).all()
    assert per_view.max() - per_view.min() > 0.02  # a std drawn per crop, not one for all
    assert noise.mean().abs() < 0.02
