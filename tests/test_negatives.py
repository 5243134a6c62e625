"""Procedural negatives for hardening the demo CLIP: seeded, in the scene's colours, not scenes."""
import numpy as np
import pytest

from vqclip.shapes.evaluate import _largest_component, _nearest
from vqclip.shapes.negatives import KINDS, draw_negative
from vqclip.shapes.world import COLORS, Scene

SCENE = Scene("red", "circle", "blue")


def _shares(image: np.ndarray) -> dict:
    """Share of the image's pixels nearest each palette colour."""
    idx = _nearest(image.reshape(-1, 3).astype(np.float32))
    return {c: float((idx == i).mean()) for i, c in enumerate(COLORS)}


@pytest.mark.parametrize("kind", KINDS)
def test_negatives_are_seeded_and_in_the_scene_colours(kind):
    a = draw_negative(SCENE, np.random.default_rng(3), kind=kind)
    b = draw_negative(SCENE, np.random.default_rng(3), kind=kind)
    c = draw_negative(SCENE, np.random.default_rng(4), kind=kind)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for seed in range(10):
        shares = _shares(draw_negative(SCENE, np.random.default_rng(seed), kind=kind))
        assert shares["red"] > 0.02 and shares["blue"] > 0.2  # both of the scene's colours are there
        assert shares["red"] + shares["blue"] > 0.6


def test_extra_kind_adds_a_third_colour():
    for seed in range(10):
        shares = _shares(draw_negative(SCENE, np.random.default_rng(seed), kind="extra"))
        assert 1.0 - shares["red"] - shares["blue"] > 0.03


@pytest.mark.parametrize("kind", ["many", "shuffled"])
def test_many_and_shuffled_kinds_are_not_one_shape(kind):
    split = 0
    for seed in range(10):
        image = draw_negative(SCENE, np.random.default_rng(seed), kind=kind)
        red = _nearest(image.reshape(-1, 3).astype(np.float32)).reshape(128, 128) == COLORS.index("red")
        split += _largest_component(red).sum() < 0.9 * red.sum()  # the red is in several pieces
    assert split >= 7  # overlapping shapes may merge now and then


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="allowed: blobs, many, extra, shuffled"):
        draw_negative(SCENE, np.random.default_rng(0), kind="stripes")
