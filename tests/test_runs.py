"""Generator runs kept going during the CLIP's fine-tuning (vqclip.shapes.runs): the generator's step, lives."""
import pytest
import torch
import torch.nn.functional as F

from vqclip.config import load_config
from vqclip.generate import Run, load_models
from vqclip.shapes.runs import GeneratorRuns
from vqclip.shapes.world import train_scenes


def _setup(tiny_overrides, *extra):
    scene = train_scenes()[0]
    cfg = load_config([], tiny_overrides + ["precision=float32", f"prompts=[{scene.caption!r}]", *extra])
    models = load_models(cfg, progress=False)
    text = F.normalize(models.clip.encode_text([scene.caption]), dim=-1)
    return cfg, models, scene, text


@pytest.mark.parametrize("spread", [["cutouts.sigma_spread=0"], ["cutouts.sigma_spread=1"],
                                    ["cutouts.sigma_spread=1", "optim.noise=1.0"]])
def test_a_run_steps_exactly_as_the_generator_does(tiny_overrides, spread):
    # whole views and no augments: the cutouts are the same in both, so the latents must agree
    # (and the same noise draws for the noised cutouts: the RNG is seeded alike before each step)
    cfg, models, scene, text = _setup(tiny_overrides, "cutouts.whole=1.0", "cutouts.augments=[]", "latent_block=2",
                                      "latent_block_steps=0.5", "optim.lr=0.2", "optim.final_lr=0.02",
                                      "cutouts.sigma=0.3", "cutouts.sigma_end=0.05", *spread)
    run = Run(cfg, models, torch.device("cpu"))
    runs = GeneratorRuns(models.vqgan, [scene], 1, cfg, seed=0, input_size=models.clip.input_size)
    runs.z[0] = run.z.detach()[0]
    for step in range(cfg.steps - 1):
        torch.manual_seed(100 + step)
        images, scenes = runs.step(models.clip.model.encode_image, text, models.clip.mean, models.clip.std)
        torch.manual_seed(100 + step)
        info = run.step()
        assert scenes == [0] and torch.allclose(images, info["image"], atol=1e-5), step
        assert torch.allclose(runs.z, run.z.detach(), atol=1e-4), step
    assert not torch.allclose(runs.z, run.z_start, atol=1e-3)  # and both moved


def test_runs_are_staggered_and_start_over_after_their_life(tiny_overrides):
    cfg, models, scene, text = _setup(tiny_overrides)
    scenes = train_scenes()[:5]
    runs = GeneratorRuns(models.vqgan, scenes, 4, cfg, seed=3, input_size=models.clip.input_size)
    assert runs.life == cfg.steps == 8 and runs.age.tolist() == [6, 4, 2, 0]
    text = F.normalize(models.clip.encode_text([s.caption for s in scenes]), dim=-1)
    codebook = models.vqgan.codebook.detach()
    for _ in range(2):
        images, captions = runs.step(models.clip.model.encode_image, text, models.clip.mean, models.clip.std)
    assert images.shape == (4, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert len(captions) == 4 and all(0 <= c < 5 for c in captions)
    assert runs.age.tolist() == [0, 6, 4, 2] and runs.restarts == 1
    def off_codebook(z):  # the largest distance of a position's vector to its nearest codebook vector
        vectors = z.permute(1, 2, 0).reshape(-1, 1, codebook.shape[1])
        return float((vectors - codebook).abs().amax(-1).min(1).values.max())

    assert off_codebook(runs.z[0]) == 0.0  # a new start: codebook tokens
    # a run starts as the generator does with the config's `init` (here smooth: an encoded start image)
    import dataclasses

    import numpy as np

    from vqclip.generate import initial_latent

    smooth_cfg = load_config([], tiny_overrides + ["init=smooth"])
    vqgan = load_models(smooth_cfg, progress=False).vqgan
    smooth = GeneratorRuns(vqgan, scenes, 2, smooth_cfg, seed=3, input_size=models.clip.input_size)
    torch.manual_seed(int(np.random.default_rng((3, 5151)).integers(2 ** 31)))  # run 0's first start seed
    assert torch.equal(smooth.z[0], initial_latent(smooth_cfg, vqgan, torch.device("cpu"))[0])
    torch.manual_seed(int(np.random.default_rng((3, 5151)).integers(2 ** 31)))
    assert not torch.equal(smooth.z[0], initial_latent(dataclasses.replace(smooth_cfg, init="random"), vqgan,
                                                        torch.device("cpu"))[0])
    assert off_codebook(runs.z[1]) > 1e-3  # still climbing: off the codebook
    lo, hi = codebook.min(0).values.view(1, -1, 1, 1), codebook.max(0).values.view(1, -1, 1, 1)
    assert bool(((runs.z >= lo - 1e-6) & (runs.z <= hi + 1e-6)).all())  # inside the codebook's range


def test_run_images_that_are_their_scene_are_not_negatives(tmp_path):
    import dataclasses

    import numpy as np

    from vqclip.shapes.harden import _harden_module_class, quick_harden_config
    from vqclip.shapes.train import ClipModule, export_clip, quick_configs, write_clip_config
    from vqclip.shapes.world import draw, to_tensor

    clip_cfg = quick_configs()[1]
    json_path = write_clip_config(clip_cfg, tmp_path)
    weights = export_clip(ClipModule(clip_cfg, json_path), json_path)
    module = _harden_module_class()(clip_cfg, json_path, weights, dataclasses.replace(quick_harden_config(), runs=2))
    scene = module.scenes[7]
    shown = torch.stack([to_tensor(draw(scene, np.random.default_rng(0))), torch.full((3, 128, 128), 0.5)])

    class Runs:  # what the runs showed this step: a drawing of their caption, and grey
        def step(self, encode, text, mean, std):
            assert not any(p.requires_grad for p in module.model.visual.parameters())  # latents only
            return shown, [7, 7]

    module.runs = Runs()
    trainable = [p for p in module.model.visual.parameters() if p.requires_grad]
    images, scenes = module.run_negatives(module.caption_text().detach())
    assert scenes == [7] and torch.equal(images[0], shown[1]) and module.run_scenes == 0.5
    assert trainable and all(p.requires_grad for p in trainable)  # and the CLIP trains again afterwards
