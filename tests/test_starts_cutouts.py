"""Method options: starting images (`init`), cutout sizes (`cutouts.min_size`), whole views (`cutouts.whole`),
wrapped views (`cutouts.roll`)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vqclip import generate, load_config, load_models
from vqclip.cutouts import (add_noise, cutout_boxes, gaussian_blur, make_cutouts, sample_boxes, scheduled_blur,
                            scheduled_sigma, spread_sigma)
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


def test_smooth_start_cells_and_amount():
    g = torch.Generator().manual_seed(5)
    full = smooth_image(64, 64, cells=2, amount=1.0, generator=g)
    assert float(full.max() - full.min()) > 0.5  # amount 1: the patches use most of [0, 1]...
    weak = smooth_image(64, 64, cells=2, amount=0.2, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(weak - 0.5, (full - 0.5) * 0.2, atol=1e-6)  # ...0.2: the same, squeezed to grey
    coarse = smooth_image(64, 64, cells=2, amount=1.0, generator=torch.Generator().manual_seed(6))
    fine = smooth_image(64, 64, cells=16, amount=1.0, generator=torch.Generator().manual_seed(6))
    step = lambda img: float((img[..., 1:] - img[..., :-1]).abs().mean())  # noqa: E731
    assert step(fine) > 3 * step(coarse)  # more cells per side: smaller patches


def test_smooth_start_follows_the_config(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["init=smooth", "init_cells=2", "init_amount=0.9"])
    models = load_models(cfg)
    torch.manual_seed(11)
    z = initial_latent(cfg, models.vqgan, torch.device("cpu"))
    torch.manual_seed(11)
    assert torch.allclose(z, models.vqgan.encode(start_image("smooth", 64, 64, cells=2, amount=0.9)))
    torch.manual_seed(11)
    assert not torch.allclose(z, models.vqgan.encode(start_image("smooth", 64, 64)))  # defaults: 4 cells, 0.5


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
    # a whole 64-pixel view at 32 pixels: the image itself, antialiased bicubic
    whole = F.interpolate(image, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    for i in range(2):
        assert torch.allclose(cuts[4 * i], whole[i], atol=1e-5) and torch.allclose(cuts[4 * i + 1], whole[i], atol=1e-5)
        assert not torch.allclose(cuts[4 * i + 2], whole[i], atol=1e-3)


def test_rolled_cutouts_are_views_of_the_circularly_shifted_image():
    """A box shifted across an edge reads the image as wrapping around: the cutout equals the crop
    of the image rolled so that the box starts at 0, 0, and the gradient wraps back the same way."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 40, 48, requires_grad=True)
    boxes = sample_boxes(200, 48, 40, 16, 1.0, roll=0.25)
    x0, y0, side = boxes.long().unbind(-1)
    assert int(x0.min()) < 0 and int((x0 + side).max()) > 48  # boxes cross the left and right edges
    assert int(y0.min()) >= -10 and int((y0 + side).max()) <= 50  # and by at most floor(0.25 * side) pixels
    torch.manual_seed(1)
    cuts = make_cutouts(image, cutn=12, cut_size=16, min_size=0.5, roll=0.25)
    torch.manual_seed(1)
    (x0, y0, side), = [b.long().unbind(-1) for b in cutout_boxes(image, 12, 16, 1.0, 0.5, 0.0, 0.25)]
    crossing = 0
    for k in range(12):
        x, y, s = int(x0[k]), int(y0[k]), int(side[k])
        crossing += not (0 <= x <= 48 - s and 0 <= y <= 40 - s)
        crop = torch.roll(image, (-y, -x), (2, 3))[:, :, :s, :s]
        expected = F.interpolate(crop, size=(16, 16), mode="bicubic", antialias=s > 16, align_corners=False)
        torch.testing.assert_close(cuts[k:k + 1], expected, atol=1e-5, rtol=0)
    assert crossing > 0
    weights = torch.rand_like(cuts)
    grad, = torch.autograd.grad((cuts * weights).sum(), image)
    assert torch.isfinite(grad).all() and grad[..., 0].abs().sum() > 0 and grad[..., -1].abs().sum() > 0


def test_no_roll_draws_nothing_more():
    """roll=0 leaves the boxes, and so every earlier run's cutouts, exactly as they were."""
    torch.manual_seed(5)
    plain = sample_boxes(50, 64, 64, 16, 1.0, min_size=0.5)
    torch.manual_seed(5)
    assert torch.equal(plain, sample_boxes(50, 64, 64, 16, 1.0, min_size=0.5, roll=0.0))
    assert int(plain[:, :2].min()) >= 0 and int((plain[:, :2] + plain[:, 2:]).max()) <= 64


@pytest.mark.parametrize("override, words", [
    ("init=noise", "'init'.*random, flat, smooth"),
    ("init_color=red", "'init_color'.*#rrggbb"),
    ("init_cells=0", "'init_cells'.*>= 1"),
    ("init_amount=1.5", "'init_amount'.*\\[0, 1\\]"),
    ("cutouts.min_size=1.5", "'cutouts.min_size'.*\\[0, 1\\]"),
    ("cutouts.whole=-0.1", "'cutouts.whole'.*\\[0, 1\\]"),
    ("cutouts.roll=0.75", "'cutouts.roll'.*\\[0, 0.5\\]"),
    ("cutouts.blur=-1", "'cutouts.blur'.*>= 0"),
    ("cutouts.blur_steps=2", "'cutouts.blur_steps'.*\\[0, 1\\]"),
    ("cutouts.sigma=-0.5", "'cutouts.sigma'.*>= 0"),
    ("cutouts.sigma_end=0.2", "'cutouts.sigma_end'.*\\[0, cutouts.sigma = 0.0\\]"),
    ("cutouts.sigma_spread=2", "'cutouts.sigma_spread'.*\\[0, 1\\]"),
    ("cutouts.sigma_spread=0.5", "'cutouts.sigma_spread'.*sigma > 0"),
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


def test_scheduled_sigma_falls_from_sigma_to_sigma_end():
    assert scheduled_sigma(1.0, 0.04, 0, 11) == pytest.approx(1.0)
    assert scheduled_sigma(1.0, 0.04, 5, 11) == pytest.approx(0.2)  # geometric: the middle is sqrt(1 * 0.04)
    assert scheduled_sigma(1.0, 0.04, 10, 11) == pytest.approx(0.04)
    assert [scheduled_sigma(0.5, 0.0, s, 3) for s in range(3)] == pytest.approx([0.5, 0.25, 0.0])  # linear to 0
    assert scheduled_sigma(0.0, 0.0, 0, 10) == 0.0
    cuts = torch.rand(64, 3, 16, 16)
    assert add_noise(cuts, 0.0) is cuts
    assert float((add_noise(cuts, 0.3) - cuts).std()) == pytest.approx(0.3, rel=0.05)


def _clip_inputs(overrides):
    """Every batch of cutouts CLIP's image tower saw in a run of the tiny models with these overrides."""
    seen = []

    def spy(run):
        encode = run.models.clip.encode_image
        run.models.clip.encode_image = lambda x: (seen.append(x.detach().clone()), encode(x))[1]

    generate(load_config([], overrides, prompts=["a red car"]), save=False, progress=False, setup=spy)
    return seen


def test_clip_sees_noised_cutouts_with_sigma(tiny_overrides):
    def first_inputs(extra):
        return _clip_inputs(tiny_overrides + ["steps=2", "cutouts.augments=[]"] + extra)[0]

    clean, noised = first_inputs([]), first_inputs(["cutouts.sigma=0.4", "cutouts.sigma_end=0.1"])
    assert clean.shape == noised.shape
    assert float((noised - clean).std()) == pytest.approx(0.4, rel=0.05)  # step 0: the noise of cutouts.sigma
    assert float((noised - clean).mean()) == pytest.approx(0.0, abs=0.02)


def test_sigma_spread_gives_each_cutout_its_own_std(tiny_overrides):
    torch.manual_seed(0)
    stds = spread_sigma(0.1, 0.4, 1.0, 2000)
    assert stds.shape == (2000, 1, 1, 1) and float(stds.min()) >= 0.1 and float(stds.max()) <= 0.4 + 1e-6
    assert float(stds.log().mean()) == pytest.approx(0.5 * (math.log(0.1) + math.log(0.4)), abs=0.02)  # log-uniform
    half = spread_sigma(0.1, 0.4, 0.5, 2000)
    assert float(half.max()) <= 0.2 + 1e-6 and float(half.max()) > 0.19  # halfway up in log: sqrt(0.1 * 0.4)
    assert spread_sigma(0.1, 0.4, 0.0, 8) == 0.1 and spread_sigma(0.0, 0.4, 1.0, 8) == 0.0

    def last_inputs(extra):  # one step, so the step's std is sigma_end; whole views: the same crops each run
        return _clip_inputs(tiny_overrides + ["steps=1", "cutouts.augments=[]", "cutouts.whole=1.0",
                                              "cutouts.cutn=32"] + extra)[-1]

    clean = last_inputs([])
    per_cut = (last_inputs(["cutouts.sigma=0.4", "cutouts.sigma_end=0.1", "cutouts.sigma_spread=1"]) - clean)
    per_cut = per_cut.flatten(1).std(1)
    assert float(per_cut.min()) > 0.08 and float(per_cut.max()) < 0.43  # between the step's std and sigma
    assert float(per_cut.max() - per_cut.min()) > 0.1  # and not one std for all
    same = (last_inputs(["cutouts.sigma=0.4", "cutouts.sigma_end=0.1"]) - clean).flatten(1).std(1)
    assert float(same.max() - same.min()) < 0.03  # without the spread: every cutout at the step's 0.1
    # the linear schedule to 0 takes the spread too; its last step (std 0) stays clean
    assert torch.equal(last_inputs(["cutouts.sigma=0.4", "cutouts.sigma_end=0", "cutouts.sigma_spread=1"]), clean)


def test_cosine_learning_rate_schedule(tiny_overrides):
    assert cosine_lr(0.2, 0.02, 0, 11) == pytest.approx(0.2) and cosine_lr(0.2, 0.02, 10, 11) == pytest.approx(0.02)
    assert cosine_lr(0.2, 0.02, 5, 11) == pytest.approx(0.11)
    cfg = load_config([], tiny_overrides + ["optim.lr=0.2", "optim.final_lr=0.02", "steps=3"], prompts=["x"])
    seen = []
    generate(cfg, save=False, progress=False, setup=lambda run: seen.append(run),
             callbacks=[lambda info: seen.append(seen[0].opt.param_groups[0]["lr"])])
    assert seen[1:4] == pytest.approx([0.2, 0.11, 0.02]) and seen[4] == pytest.approx(0.02)


def test_latent_blocks_move_together_then_apart(tiny_overrides):
    from vqclip.blocks import block_mean, block_tokens

    tokens = block_tokens(512, 2, 8, 8, 4)
    assert tokens.shape == (2, 8, 8) and torch.equal(tokens, tokens[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2))
    g = torch.randn(1, 3, 8, 8)
    pooled = block_mean(g, 2)
    assert torch.allclose(pooled[..., ::2, ::2], F.avg_pool2d(g, 2)) and torch.equal(pooled[..., 0, 0], pooled[..., 1, 1])
    cfg = load_config([], tiny_overrides + ["latent_block=2", "latent_block_steps=0.5", "steps=6",
                                            "optim.lr=0.5"], prompts=["a red car"])
    zs = []
    generate(cfg, save=False, progress=False, callbacks=[lambda info: zs.append(info["z"].clone())])
    blocky = [bool(torch.equal(z, z[..., ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))) for z in zs]
    assert blocky[:3] == [True, True, True]  # steps 0-2 of 6: blocks of 2x2 tokens
    assert not blocky[-1]  # afterwards single tokens move


def test_latent_noise_is_blockwise_and_scaled_by_the_learning_rate(tiny_overrides):
    from vqclip.blocks import block_noise

    eps = block_noise(torch.zeros(4, 8, 16, 16), 4)
    assert torch.equal(eps, eps[..., ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert 0.8 < float(eps[..., ::4, ::4].std()) < 1.2
    assert 0.9 < float(block_noise(torch.zeros(8, 8, 16, 16), 1).std()) < 1.1
    base = tiny_overrides + ["latent_block=2", "latent_block_steps=0.5", "steps=6", "optim.lr=0.05"]

    def latents(extra):
        zs = []
        generate(load_config([], base + extra, prompts=["a red car"]), save=False, progress=False,
                 callbacks=[lambda info: zs.append(info["z"].clone())])
        return zs

    plain, noisy = latents([]), latents(["optim.noise=2.0"])
    # the first update is the same but for the noise: lr * noise * eps where no clamp bit
    moved = noisy[0] - plain[0]
    assert 0.08 < float(moved[moved != 0].std()) < 0.12  # 0.05 * 2.0
    blocky = [bool(torch.equal(z, z[..., ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))) for z in noisy]
    assert blocky[:3] == [True, True, True] and not blocky[-1]  # the noise keeps blocks whole while they are blocks
    with pytest.raises(ConfigError, match="'optim.noise'.*>= 0"):
        load_config([], ["optim.noise=-0.1"])


def test_latent_block_must_divide_the_grid(tiny_overrides):
    cfg = load_config([], tiny_overrides + ["latent_block=3"], prompts=["x"])
    with pytest.raises(ConfigError, match="'latent_block'.*divisor"):
        generate(cfg, save=False, progress=False)
    with pytest.raises(ConfigError, match="'latent_block'"):
        load_config([], ["latent_block=0"])


def test_tones_loss_is_zero_for_k_flat_colours():
    from vqclip.losses import dominant_colors, tones

    two = torch.zeros(1, 3, 16, 16)
    two[:, 0, :, :6] = 1.0  # red left, black right
    assert float(tones(two, 2)) == pytest.approx(0.0, abs=1e-7)
    found = dominant_colors(two, 2)[0].tolist()
    assert sorted(found) == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    three = two.clone()
    three[:, 2, 12:, 6:] = 1.0  # a blue corner: a third colour costs
    assert float(tones(three, 2)) > 0.05 and float(tones(three, 3)) == pytest.approx(0.0, abs=1e-7)
    noisy = torch.rand(1, 3, 16, 16, requires_grad=True)
    tones(noisy, 2).sum().backward()
    assert noisy.grad.abs().sum() > 0


def test_channels_last_config_puts_the_decoder_in_nhwc_and_keeps_the_images(tiny_overrides):
    def first_image(layout, models):
        seen = []
        # float32: on a CPU with bf16, precision=auto would round the two layouts differently
        cfg = load_config([], tiny_overrides + ["steps=1", f"channels_last={layout}", "precision=float32"],
                          prompts=["a red car"])
        generate(cfg, models=models, save=False, progress=False, callbacks=[lambda info: seen.append(info["image"])])
        return seen[0]  # the decoded starting latent, before any update

    models = load_models(load_config([], tiny_overrides))
    conv = next(m for m in models.vqgan.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    nhwc = first_image("true", models)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the run applied it
    plain = first_image("false", models)
    assert conv.weight.is_contiguous()  # and the next run, asking for the default layout, undid it
    torch.testing.assert_close(nhwc, plain, atol=1e-5, rtol=1e-4)  # only the memory layout differs


@pytest.mark.parametrize("init", ["random", "smooth"])
def test_init_candidates_keeps_each_images_lowest_scoring_start(tiny_overrides, monkeypatch, init):
    import dataclasses
    import importlib

    gen_module = importlib.import_module("vqclip.generate")  # the module (vqclip.generate is also the function)
    drawn = []
    real = gen_module.initial_latent

    def recording(*args, **kwargs):
        z = real(*args, **kwargs)
        drawn.append(z.detach().clone())  # the run's latent is this tensor, changed in place later
        return z

    monkeypatch.setattr(gen_module, "initial_latent", recording)
    cfg = load_config([], tiny_overrides + [f"init={init}", "batch_size=6"], prompts=["a red car"])
    models = load_models(cfg)
    single = gen_module.Run(cfg, models, torch.device("cpu"))
    assert len(drawn) == 1  # init_candidates=1 (the default): the first start, no scoring
    first = drawn[0]
    assert torch.equal(single.z.detach(), first)

    drawn.clear()
    picked = gen_module.Run(dataclasses.replace(cfg, init_candidates=5), models, torch.device("cpu"))
    assert len(drawn) == 5 and torch.equal(drawn[0], first)  # the same first start, then 4 more
    scores = picked.pick_scores
    assert scores.shape == (5, 6) and bool(torch.isfinite(scores).all())
    chosen = scores.argmin(0)
    for i in range(6):  # every image starts from its own lowest-scoring candidate
        assert torch.equal(picked.z.detach()[i], drawn[int(chosen[i])][i])
    assert len(set(chosen.tolist())) > 1  # with 6 images and 5 candidates, not one index for all
    assert torch.equal(picked.z_start, picked.z.detach())  # init_weight pulls toward the chosen start
    assert single.pick_scores is None
    # each candidate is scored as its own start: an init_weight term adds nothing to any score
    pulled = gen_module.Run(dataclasses.replace(cfg, init_candidates=5, init_weight=1.0), models, torch.device("cpu"))
    torch.testing.assert_close(pulled.pick_scores, scores)
    assert torch.equal(pulled.z.detach(), picked.z.detach())


def test_race_runs_every_copy_then_keeps_each_images_lowest_scoring_one(tiny_overrides):
    import importlib

    gen_module = importlib.import_module("vqclip.generate")
    cfg = load_config([], tiny_overrides + ["steps=8", "race=3", "race_steps=0.5",
                                            "batch_prompts=[a red car,a blue boat]"])
    models = load_models(cfg)
    run = gen_module.Run(cfg, models, torch.device("cpu"))
    assert run.z.shape[0] == 6 and run.race_end == 4
    assert [t.name for t in sorted(run.targets, key=lambda t: t.image)] == ["a red car", "a blue boat"] * 3
    for _ in range(4):
        info = run.step()
        assert info["image"].shape[0] == 2 and len(info["image_losses"]) == 2  # each image's leading copy
    copies = run.z.detach().clone()
    moments = {k: v.clone() for k, v in run.opt.state_dict()["state"][0].items()}
    run.end_race()
    kept = run.race_scores.argmin(0)  # [2]: the copy kept for each image
    assert run.race_scores.shape == (3, 2) and not run.racing
    for i in range(2):
        row = int(kept[i]) * 2 + i
        assert torch.equal(run.z.detach()[i], copies[row])
        for key in ("exp_avg", "exp_avg_sq"):  # Adam goes on with the kept copy's own moments
            assert torch.equal(run.opt.state_dict()["state"][0][key][i], moments[key][row])
    assert run.opt.state_dict()["state"][0]["step"] == moments["step"]
    assert [t.image for t in run.targets] == [0, 1]
    run.step()
    assert run.z.shape[0] == 2 and run.z.grad is not None  # the kept copies are what the optimiser moves

    result = generate(cfg, models=models, progress=False, save=False)
    assert len(result.images) == 2 and result.z.shape[0] == 2 and len(result.losses) == 8
    short = load_config([], tiny_overrides + ["steps=1", "race=3", "batch_prompts=[a red car,a blue boat]"])
    result = generate(short, models=models, progress=False, save=False)  # the race outlasts the run: kept at its end
    assert len(result.images) == 2 and result.z.shape[0] == 2


@pytest.mark.parametrize("race, halving, steps, race_steps, cuts", [
    (1, True, 100, 0.25, []),
    (4, False, 100, 0.25, [(25, 1)]),
    (2, True, 100, 0.25, [(25, 1)]),  # one round: the same race as without halving
    (4, True, 100, 0.25, [(12, 2), (25, 1)]),
    (5, True, 100, 0.25, [(8, 3), (17, 2), (25, 1)]),  # halves rounded up
    (8, True, 90, 0.5, [(15, 4), (30, 2), (45, 1)]),
    (4, True, 2, 0.25, [(1, 2), (1, 1)]),  # a race of one step: both cuts at it
])
def test_race_cuts_halve_the_copies_in_equal_shares_of_the_race(race, halving, steps, race_steps, cuts):
    from vqclip.config import race_cuts

    cfg = load_config([], [f"race={race}", f"race_halving={str(halving).lower()}", f"steps={steps}",
                           f"race_steps={race_steps}"])
    assert race_cuts(cfg) == cuts


def test_a_halving_race_keeps_each_images_better_half_then_its_best_copy(tiny_overrides):
    import importlib

    gen_module = importlib.import_module("vqclip.generate")
    cfg = load_config([], tiny_overrides + ["steps=8", "race=4", "race_halving=true", "race_steps=0.5",
                                            "batch_prompts=[a red car,a blue boat]"])
    models = load_models(cfg)
    run = gen_module.Run(cfg, models, torch.device("cpu"))
    assert run.z.shape[0] == 8 and run.cuts == [(2, 2), (4, 1)]
    for _ in range(2):
        run.step()
    copies = run.z.detach().clone()
    moments = {k: v.clone() for k, v in run.opt.state_dict()["state"][0].items()}
    run.cut_race(2)  # what step 2 does first
    scores = run.race_scores
    assert scores.shape == (4, 2) and run.racing and run.copies == 2 and run.z.shape[0] == 4
    assert run.cuts == [(4, 1)]
    assert [t.name for t in sorted(run.targets, key=lambda t: t.image)] == ["a red car", "a blue boat"] * 2
    state = run.opt.state_dict()["state"][0]
    for i in range(2):
        best = scores[:, i].argsort()[:2].tolist()  # this image's two lowest-scoring copies, best first
        for j, k in enumerate(best):  # copy j of image i now sits at row j * 2 + i, with its own moments
            assert torch.equal(run.z.detach()[j * 2 + i], copies[k * 2 + i])
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(state[key][j * 2 + i], moments[key][k * 2 + i])
    assert any(scores[:, i].argsort()[:2].tolist() != [0, 1] for i in range(2))  # the cut reorders copies
    info = run.step()
    assert info["image"].shape[0] == 2 and run.copies == 2  # no second cut before step 4
    run.step()
    run.step()  # step 4 starts with the last cut: each image's best copy of the two
    assert run.race_scores.shape == (2, 2) and not run.racing and run.copies == 1 and run.z.shape[0] == 2
    assert run.cuts == [] and [t.image for t in run.targets] == [0, 1]
    result = generate(cfg, models=models, progress=False, save=False)
    assert len(result.images) == 2 and result.z.shape[0] == 2 and len(result.losses) == 8


@pytest.mark.parametrize("overrides, words", [
    (["race=0"], "'race'.*>= 1"),
    (["race=2", "init=flat"], "'race'.*init=random or init=smooth"),
    (["race=2", "init_image=start.png"], "'race'.*no init_image"),
    (["race=2", "race_steps=1"], "'race_steps'.*between 0 and 1"),
    (["race_steps=0"], "'race_steps'.*between 0 and 1"),
])
def test_race_needs_a_drawn_start_and_a_share_of_the_steps(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], overrides)


@pytest.mark.parametrize("overrides, words", [
    (["init_candidates=0"], "'init_candidates'.*>= 1"),
    (["init_candidates=4", "init=flat"], "'init_candidates'.*init=random or init=smooth"),
    (["init_candidates=4", "init_image=start.png"], "'init_candidates'.*no init_image"),
])
def test_init_candidates_needs_a_drawn_start(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], overrides)


def test_zoom_out_shrinks_the_view_inside_a_margin_of_its_own_edge():
    from vqclip.cutouts import build_augments

    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    x = torch.zeros(32, 3, 64, 64)
    x[:, 0] = (((yy - 32) ** 2 + (xx - 32) ** 2) < 14 ** 2).float()  # a disc inside the frame
    x[:, 1, :, :10] = 1.0  # a band cut by the left edge
    y = build_augments(["zoom_out"], 64)(x)
    changed = [i for i in range(32) if not torch.allclose(y[i], x[i])]
    assert 4 < len(changed) < 28  # half of the views, at random
    disc = float(x[0, 0].sum())
    for i in changed:
        ratio = float((y[i, 0] > 0.5).sum()) / disc
        assert 0.6 ** 2 - 0.05 < ratio < 0.9 ** 2 + 0.05  # the whole view shrunk by 0.6-0.9 per side
        assert float(y[i, 0, [0, -1]].max()) == 0 and float(y[i, 0, :, [0, -1]].max()) == 0  # the disc stays inside
        assert bool((y[i, 1, :, 0] > 0.99).all())  # the band still reaches the edge: the margin repeats it
        width = int((y[i, 1, 32] > 0.5).sum())  # 32 (1 - scale) of margin + 10 scale of band: 12.2-18.8
        assert 12 <= width <= 19 and float(y[i, 1, :, 20:].max()) < 0.5
