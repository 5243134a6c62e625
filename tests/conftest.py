"""Shared fixtures: tiny models on disk in the published formats, and a config for them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import pytest
import torch

# Tiny models gain nothing from threads, and on a busy 2-core machine extra threads slow them a lot.
torch.set_num_threads(1)

from tests.fixtures import write_clip, write_vqgan


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict:
    """Paths of the tiny VQGAN (VQModel and GumbelVQ) and CLIP files."""
    root = tmp_path_factory.mktemp("models")
    vq_cfg, vq_ckpt = write_vqgan(root / "vqgan")
    gb_cfg, gb_ckpt = write_vqgan(root / "vqgan", gumbel=True)
    clip_json, clip_pt = write_clip(root / "clip")
    return {"vqgan_config": vq_cfg, "vqgan_ckpt": vq_ckpt, "gumbel_config": gb_cfg, "gumbel_ckpt": gb_ckpt,
            "clip_json": clip_json, "clip_weights": clip_pt}


@pytest.fixture
def tiny_overrides(tiny_files, tmp_path) -> List[str]:
    """key=value overrides that point a run at the tiny models, 64x64, a few steps, output in tmp."""
    return [f"vqgan.config={tiny_files['vqgan_config']}", f"vqgan.checkpoint={tiny_files['vqgan_ckpt']}",
            f"clip.model={tiny_files['clip_json']}", f"clip.pretrained={tiny_files['clip_weights']}",
            "size=[64,64]", "steps=8", "cutouts.cutn=8", "seed=1", "device=cpu",
            f"output.dir={tmp_path / 'out'}", "output.save_every=4"]


@pytest.fixture(autouse=True)
def _no_network_cache(tmp_path, monkeypatch):
    """Every test gets its own download cache, so nothing leaks between tests or from the user."""
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI points the root logger at this test's (captured) stderr; put it back afterwards, so a
    later test's log records never go to a closed stream."""
    root, vqclip_log = logging.getLogger(), logging.getLogger("vqclip")
    saved = (root.handlers[:], root.level, vqclip_log.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    vqclip_log.setLevel(saved[2])
