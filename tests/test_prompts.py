"""Prompt syntax and the spherical-distance loss."""
import math

import pytest
import torch

from vqclip.errors import ConfigError
from vqclip.prompts import Target, parse_prompt, spherical_distance, split_prompts


@pytest.mark.parametrize("spec, text, weight, stop", [
    ("a red car", "a red car", 1.0, -math.inf),
    ("a red car:2", "a red car", 2.0, -math.inf),
    ("rain:-0.5", "rain", -0.5, -math.inf),
    ("fog:0.3:0.8", "fog", 0.3, 0.8),
    ("https://example.org/cat.png", "https://example.org/cat.png", 1.0, -math.inf),
    ("https://example.org/cat.png:0.5", "https://example.org/cat.png", 0.5, -math.inf),
    ("http://127.0.0.1:8000/a/cat.png:2:0.1", "http://127.0.0.1:8000/a/cat.png", 2.0, 0.1),
    ("C:\\pics\\cat.png", "C:\\pics\\cat.png", 1.0, -math.inf),
    ("C:\\pics\\cat.png:3", "C:\\pics\\cat.png", 3.0, -math.inf),
    ("ratio 16:9 poster", "ratio 16:9 poster", 1.0, -math.inf),
    ("  spaced out  :1.5", "spaced out", 1.5, -math.inf),
])
def test_parse_prompt(spec, text, weight, stop):
    p = parse_prompt(spec)
    assert (p.text, p.weight, p.stop) == (text, weight, stop)


def test_split_prompts_on_pipe():
    ps = split_prompts(["a red car:1|rain:-0.5|fog:0.3:0.8", "sun"])
    assert [(p.text, p.weight) for p in ps] == [("a red car", 1.0), ("rain", -0.5), ("fog", 0.3), ("sun", 1.0)]
    assert ps[2].stop == 0.8


@pytest.mark.parametrize("spec, words", [
    ("", "no text"), (":2", "no text"), ("a||b", "empty part"), ("|", "no text"), (" | ", "no text"),
    ("cat:0", "weight 0"), ("cat:nan", "finite"), ("cat:inf", "finite"), ("cat:1e9", "|weight|"),
    ("cat:1:nan", "stop"),
])
def test_bad_prompts_raise_one_clear_error(spec, words):
    with pytest.raises(ConfigError, match=words.replace("|", r"\|")):
        split_prompts([spec])


def test_spherical_distance_range():
    x = torch.tensor([[1.0, 0.0]])
    assert spherical_distance(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert spherical_distance(x, -x).item() == pytest.approx(math.pi ** 2 / 2, rel=1e-5)
    assert spherical_distance(x, torch.tensor([[0.0, 3.0]])).item() == pytest.approx(math.pi ** 2 / 8, rel=1e-5)


def test_target_weight_sign_and_stop_cut_gradient():
    target = torch.tensor([[1.0, 0.0]])
    x = torch.tensor([[[0.8, 0.6]]], requires_grad=True)  # [B=1, N=1, D]
    pull = Target(target, weight=2.0)(x)
    push = Target(target, weight=-2.0)(x)
    assert pull.item() == pytest.approx(-push.item())
    d = spherical_distance(x.detach(), target).item()
    assert pull.item() == pytest.approx(2 * d)
    # Below the stop distance the loss is reported unchanged but no longer pulls.
    stopped = Target(target, weight=1.0, stop=d + 0.1)(x)
    stopped.sum().backward()
    assert stopped.item() == pytest.approx(d)
    assert torch.count_nonzero(x.grad) == 0
    x.grad = None
    Target(target, weight=1.0, stop=d - 0.1)(x).sum().backward()
    assert torch.count_nonzero(x.grad) > 0
