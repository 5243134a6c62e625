"""Hostile files: checkpoints whose pickle would run code, YAML that names code, paths that escape the cache.
Each is refused before anything in it runs (a marker file proves nothing ran) and before any request."""
import os
import pickle

import pytest
import torch
import yaml

from vqclip import registry
from vqclip.cli import main
from vqclip.errors import CheckpointError, ConfigError, DownloadError
from vqclip.models.vqgan import load_vqgan

try:
    from tests.httpserver import FileServer
except ImportError:  # tests/ run as a plain folder on sys.path
    from httpserver import FileServer


class _WritesMarker:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _args_with(tiny_overrides, key, value):
    return [o for o in tiny_overrides if not o.startswith(key + "=")] + [f"{key}={value}"]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_checkpoint_whose_pickle_runs_code_is_refused_and_never_runs(tiny_overrides, tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"decoder.conv_in.weight": torch.zeros(1)}, "callbacks": _WritesMarker(marker)}
    if fmt == "zip":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    assert main(["x", *_args_with(tiny_overrides, "vqgan.checkpoint", evil)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("refused" in err[-1] or "corrupt" in err[-1]), err
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _model_yaml(tiny_files, tmp_path, change):
    cfg = yaml.safe_load(open(tiny_files["vqgan_config"]))
    change(cfg)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("where, target", [
    ("model", "os.system"), ("model", "taming.models.cond_transformer.Net2NetTransformer"),
    ("lossconfig", "subprocess.Popen"), ("lossconfig", "builtins.exec"),
])
def test_model_yaml_target_outside_the_taming_allow_list_is_refused(tiny_files, tmp_path, where, target):
    def change(cfg):
        if where == "model":
            cfg["model"]["target"] = target
        else:
            cfg["model"]["params"]["lossconfig"]["target"] = target
    path = _model_yaml(tiny_files, tmp_path, change)
    with pytest.raises(CheckpointError, match=f"{target!r}; allowed"):
        load_vqgan(path, tiny_files["vqgan_ckpt"])


def test_published_nested_targets_are_accepted(tiny_files, tmp_path):
    path = _model_yaml(tiny_files, tmp_path, lambda cfg: cfg["model"]["params"].update(
        lossconfig={"target": "taming.modules.losses.vqperceptual.DummyLoss"}))
    assert load_vqgan(path, tiny_files["vqgan_ckpt"]).factor == 4
    assert load_vqgan(tiny_files["gumbel_config"], tiny_files["gumbel_ckpt"]).gumbel  # its temperature scheduler


def test_yaml_python_tags_never_run(tiny_files, tiny_overrides, tmp_path, capsys):
    marker = tmp_path / "pwned"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    text = open(tiny_files["vqgan_config"]).read().replace("base_learning_rate: 4.5e-06", f"base_learning_rate: {tag}")
    assert tag in text
    model_yaml = tmp_path / "tagged.yaml"
    model_yaml.write_text(text)
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_vqgan(model_yaml, tiny_files["vqgan_ckpt"])
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"steps: {tag}\n")
    assert main(["x", "--config", str(run_yaml), *tiny_overrides]) == 2
    assert "not valid YAML at line 1, column 8" in capsys.readouterr().err
    assert not marker.exists()


def _registry(tmp_path, name, url):
    path = tmp_path / "reg.yaml"
    path.write_text(f"models:\n  {name!r}:\n    family: VQModel\n    factor: 16\n    codebook: 1024\n"
                    f"    description: d\n    source: s\n    config: {{urls: ['{url}/c.yaml']}}\n"
                    f"    checkpoint: {{urls: ['{url}/m.ckpt']}}\n")
    return path


@pytest.mark.parametrize("name", ["../escape", "/etc/vqclip", "a/../../b", "..", "x\\..\\y"])
def test_registry_names_that_escape_the_cache_are_refused_before_any_request(tmp_path, name):
    with FileServer() as server:
        url = server.url("/files")
        with pytest.raises(ConfigError, match="model name .* must match"):
            registry.load_registry(_registry(tmp_path, name, url))
        with pytest.raises((DownloadError, ConfigError)):
            registry.ensure_model(name, tmp_path / "cache", progress=False,
                                  registry={name: registry.load_registry(_registry(tmp_path, "ok", url))["ok"]})
        assert server.requests == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_a_cache_entry_linked_outside_the_cache_is_refused_before_any_request(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ok").symlink_to(outside)  # a planted link: <cache>/ok/model.ckpt would land in outside/
    with FileServer() as server:
        reg = registry.load_registry(_registry(tmp_path, "ok", server.url("/files")))
        with pytest.raises(DownloadError, match="outside the cache folder"):
            registry.ensure_model("ok", cache, progress=False, registry=reg)
        assert server.requests == []
    assert not any(outside.iterdir())
