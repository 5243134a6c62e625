"""Named models and URLs end to end: a real HTTP server on loopback serves the tiny model files."""
import pytest
import yaml
from PIL import Image

from tests.httpserver import FileServer, closed_port_url
from vqclip import generate, load_config
from vqclip.cli import main
from vqclip.errors import DownloadError
import vqclip.registry as registry


def _clip_overrides(tiny_files, tmp_path):
    return [f"clip.model={tiny_files['clip_json']}", f"clip.pretrained={tiny_files['clip_weights']}",
            "size=[64,64]", "steps=3", "cutouts.cutn=4", "seed=1", "device=cpu", f"output.dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}"]


def test_urls_download_then_work_offline_from_cache(tiny_files, tmp_path):
    with FileServer() as server:
        cfg_url = server.add("/files/model.yaml", tiny_files["vqgan_config"].read_bytes(), content_type="text/yaml")
        ckpt_url = server.add("/files/model.ckpt", tiny_files["vqgan_ckpt"].read_bytes())
        overrides = _clip_overrides(tiny_files, tmp_path) + [f"vqgan.config={cfg_url}", f"vqgan.checkpoint={ckpt_url}"]
        first = generate(load_config([], overrides, prompts=["x"]), progress=False)
        assert {p for p, _ in server.requests} >= {"/files/model.yaml", "/files/model.ckpt"}
        server.stop()
        second = generate(load_config([], overrides, prompts=["x"]), progress=False)
    a = Image.open(first.run_dir / "image.png")
    b = Image.open(second.run_dir / "image.png")
    assert a.tobytes() == b.tobytes()


def test_named_model_from_registry_with_dead_first_mirror(tiny_files, tmp_path, monkeypatch, capsys):
    with FileServer() as server:
        cfg_url = server.add("/m/config.yaml", tiny_files["vqgan_config"].read_bytes())
        ckpt_url = server.add("/m/last.ckpt", tiny_files["vqgan_ckpt"].read_bytes())
        reg = {"models": {"tiny_f4_64": {
            "family": "VQModel", "factor": 4, "codebook": 64, "description": "tiny test model", "source": "tests",
            "config": {"urls": [closed_port_url("/c.yaml"), cfg_url]},
            "checkpoint": {"urls": [closed_port_url("/c.ckpt"), ckpt_url],
                           "size": tiny_files["vqgan_ckpt"].stat().st_size}}}}
        path = tmp_path / "registry.yaml"
        path.write_text(yaml.safe_dump(reg))
        monkeypatch.setattr(registry, "REGISTRY_FILE", path)
        assert main(["x", "vqgan.name=tiny_f4_64", *_clip_overrides(tiny_files, tmp_path), "-q"]) == 0
        assert (tmp_path / "cache" / "tiny_f4_64" / "model.ckpt").is_file()
        capsys.readouterr()
        assert main(["models", "--cache-dir", str(tmp_path / "cache")]) == 0
        listing = capsys.readouterr().out
        assert "tiny_f4_64" in listing and "cached" in listing
        assert main(["download", "tiny_f4_64", "-q", "--cache-dir", str(tmp_path / "cache2")]) == 0
        out = capsys.readouterr().out
        assert str(tmp_path / "cache2" / "tiny_f4_64" / "model.ckpt") in out
        assert (tmp_path / "cache2" / "tiny_f4_64" / "model.ckpt").read_bytes() == tiny_files["vqgan_ckpt"].read_bytes()


def test_offline_named_model_gives_one_clear_message(tiny_files, tmp_path, capsys):
    # The shipped registry's hosts cannot be reached here: the run must end with the offline message.
    code = main(["x", "vqgan.name=vqgan_imagenet_f16_16384", *_clip_overrides(tiny_files, tmp_path), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "vqgan_imagenet_f16_16384" in err[0] and "heibox.uni-heidelberg.de" in err[0]
    assert str(tmp_path / "cache" / "vqgan_imagenet_f16_16384" / "model.ckpt") in err[0]
    assert "configs/shapes.yaml" in err[0]
    assert not (tmp_path / "cache" / "vqgan_imagenet_f16_16384" / "model.ckpt").exists()


def test_html_instead_of_checkpoint(tiny_files, tmp_path):
    with FileServer() as server:
        cfg_url = server.add("/model.yaml", tiny_files["vqgan_config"].read_bytes())
        html = server.add("/model.ckpt", b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html")
        overrides = _clip_overrides(tiny_files, tmp_path) + [f"vqgan.config={cfg_url}", f"vqgan.checkpoint={html}"]
        with pytest.raises(DownloadError, match="HTML"):
            generate(load_config([], overrides, prompts=["x"]), progress=False)


def test_clip_tag_goes_through_open_clip_cache_in_our_cache_dir(tiny_files, tmp_path, capsys):
    args = [o for o in _clip_overrides(tiny_files, tmp_path) if not o.startswith("clip.")]
    code = main(["x", f"vqgan.config={tiny_files['vqgan_config']}", f"vqgan.checkpoint={tiny_files['vqgan_ckpt']}",
                 "clip.model=ViT-B-32-quickgelu", "clip.pretrained=openai", *args, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "ViT-B-32-quickgelu/openai" in err[0] and str(tmp_path / "cache" / "clip") in err[0]
