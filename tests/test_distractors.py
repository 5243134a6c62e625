"""Distractors: drawings that are none of the world's shapes, captioned as what they are (CLIP training only)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vqclip.shapes.distractors import (DISTRACTORS, DistractorMix, distractor_caption, distractor_coverage,
                                       distractor_scenes, draw_distractor)
from vqclip.shapes.evaluate import read_image
from vqclip.shapes.world import SHAPES, ShapesDataset, all_captions, parse_caption, train_scenes


def test_distractor_captions_follow_the_grammar_but_are_no_world_caption():
    captions = {distractor_caption(c, k, b) for c, k, b in distractor_scenes()}
    assert len(captions) == len(DISTRACTORS) * 8 * 7
    assert captions.isdisjoint(all_captions())
    assert distractor_caption("red", "blob", "blue") == "a red blob on a blue background"
    with pytest.raises(ValueError):  # never an evaluation prompt: the world's parser refuses them
        parse_caption("a red blob on a blue background")
    with pytest.raises(ValueError, match="unknown distractor 'circle'"):
        distractor_caption("red", "circle", "blue")


@pytest.mark.parametrize("kind", DISTRACTORS)
def test_distractors_are_seeded_and_of_shape_size(kind):
    a = draw_distractor("red", kind, "blue", np.random.default_rng(3))
    b = draw_distractor("red", kind, "blue", np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and a[0].shape == (128, 128, 3) and a[0].dtype == np.uint8
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = distractor_coverage(kind, rng)
        assert 0.02 < float(mask.mean()) < 0.5  # the world's shapes cover 3.5-49% of the image


@pytest.mark.parametrize("kind", ["ellipse", "rectangle"])
def test_long_distractors_are_never_read_as_a_world_shape(kind):
    rng = np.random.default_rng(1)
    readings = [read_image(draw_distractor("white", kind, "green", rng)[0]) for _ in range(100)]
    assert all(r.color == "white" and r.background == "green" for r in readings)
    assert all(r.shape is None for r in readings)


def test_pairs_lie_apart_or_touch_as_an_outline_that_is_mostly_no_world_shape():
    from vqclip.shapes.evaluate import _largest_component

    rng = np.random.default_rng(2)
    apart = touching_none = touching_shape = 0
    for _ in range(120):
        mask = distractor_coverage("pair", rng) > 0.5
        if _largest_component(mask).sum() < 0.95 * mask.sum():
            apart += 1
            continue
        reading = read_image(np.where(mask[..., None], np.uint8(200), np.uint8(20)).repeat(3, -1))
        touching_none += reading.shape is None
        touching_shape += reading.shape is not None
    assert apart >= 24 and touching_none >= 24  # both kinds, often
    assert touching_none > touching_shape  # two touching pieces seldom make one of the three shapes


def test_a_mix_numbers_distractors_after_the_scenes_and_the_clip_captions_them(tmp_path):
    from vqclip.shapes.train import ClipModule, quick_configs, write_clip_config

    scenes = train_scenes()
    mix = DistractorMix(ShapesDataset(scenes, 400, seed=5), 0.3)
    items = [mix[i] for i in range(400)]
    again = mix[17]
    assert again["caption"] == items[17]["caption"] and np.array_equal(again["image"].numpy(), items[17]["image"].numpy())
    extra = [it for it in items if it["scene"] >= len(scenes)]
    assert 0.2 < len(extra) / len(items) < 0.4
    plain = ShapesDataset(scenes, 400, seed=5)
    kept = [i for i, it in enumerate(items) if it["scene"] < len(scenes)]
    assert all(items[i]["caption"] == plain[i]["caption"] for i in kept[:20])  # the rest: the dataset's own
    cfg = dataclasses.replace(quick_configs()[1], distractors=0.3)
    module = ClipModule(cfg, write_clip_config(cfg, tmp_path))
    assert len(module.captions) == len(scenes) + len(distractor_scenes())
    assert all(module.captions[it["scene"]] == it["caption"] for it in items)
    # the partial-caption families name the distractor kinds too: "a blob" is one of the shapes
    shape_target = module.shape_target[extra[0]["scene"]]
    assert extra[0]["caption"].split()[2] in ("ellipse", "rectangle", "blob", "pair")
    assert int(shape_target) >= len(SHAPES)
    with pytest.raises(ValueError, match="share in \\[0, 1\\]"):
        DistractorMix(plain, 1.5)


def test_hardening_a_clip_trained_with_distractors_keeps_drawing_them(tmp_path, monkeypatch):
    """The fine-tuning phases see distractors too (their captions stay in the caption loss), and the
    drawn negatives are only ever made for the world's scenes."""
    import torch

    import vqclip.shapes.distractors as distractors
    from vqclip.shapes.harden import harden_clip, quick_harden_config
    from vqclip.shapes.train import ClipModule, export_clip, quick_configs, write_clip_config

    clip_cfg = dataclasses.replace(quick_configs()[1], distractors=0.9)
    weights = export_clip(ClipModule(clip_cfg, write_clip_config(clip_cfg, tmp_path)), tmp_path / f"{clip_cfg.name}.json")
    drawn = []
    real = distractors.draw_distractor
    monkeypatch.setattr(distractors, "draw_distractor", lambda *a, **k: drawn.append(a[1]) or real(*a, **k))
    before = torch.load(weights, weights_only=True)
    harden_clip(tmp_path, clip_cfg, dataclasses.replace(quick_harden_config(), generated=0, runs=0, negatives=8))
    assert drawn and set(drawn) <= set(DISTRACTORS)
    after = torch.load(weights, weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)
