"""Downloads against a real HTTP server on 127.0.0.1: cache, resume, mirrors, HTML, offline; the registry."""
from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from vqclip import download, registry
from vqclip.download import FetchError, cache_path, check_cached, clip_cache_dir, fetch, fetch_url, read_sidecar
from vqclip.errors import ConfigError, DownloadError, VQClipError

try:
    from tests.httpserver import FileServer, closed_port_url
except ImportError:  # tests/ run as a plain folder on sys.path
    from httpserver import FileServer, closed_port_url

CONFIG_YAML = b"""model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 4
    n_embed: 16
    ddconfig: {double_z: false, z_channels: 4, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
    lossconfig: {target: torch.nn.Identity}
"""


def _torch_bytes(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    gen = torch.Generator().manual_seed(0)
    state = {"state_dict": {"decoder.conv_in.weight": torch.randn(64, 16, 8, 8, generator=gen)}, "epoch": 3}
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt() -> bytes:
    data = _torch_bytes()
    assert data.startswith(b"PK\x03\x04") and len(data) > 200_000
    return data


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_env_cache(monkeypatch):
    monkeypatch.delenv("VQCLIP_CACHE", raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_first_fetch_downloads_verifies_and_records_sha(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "m" / "model.ckpt"
    assert fetch([url], dest, kind="checkpoint", progress=False) == dest
    assert dest.read_bytes() == ckpt
    assert read_sidecar(dest) == _sha(ckpt)
    assert not dest.with_name("model.ckpt.part").exists()
    assert torch.load(dest, weights_only=True)["epoch"] == 3


def test_second_fetch_works_from_cache_with_server_stopped(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    fetch([url], dest, kind="checkpoint", progress=False)
    server.stop()
    n = len(server.requests)
    assert fetch([url], dest, kind="checkpoint", progress=False).read_bytes() == ckpt
    assert len(server.requests) == n


def test_truncated_cached_file_is_fetched_again(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(ckpt[: len(ckpt) // 2])  # no sidecar, no size: the zip directory is missing
    assert "truncated" in check_cached(dest, kind="checkpoint")
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt and not dest.with_name("model.ckpt.bad").exists()


def test_bad_cached_file_offline_is_kept_aside_and_named(tmp_path, ckpt):
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(ckpt[:5000])
    with pytest.raises(DownloadError) as info:
        fetch([closed_port_url()], dest, kind="checkpoint", progress=False)
    bad = dest.with_name("model.ckpt.bad")
    assert bad.read_bytes() == ckpt[:5000] and not dest.exists()
    assert f"moved to {bad}" in str(info.value) and "truncated" in str(info.value)


def test_truncated_cached_file_with_known_size_is_fetched_again(server, tmp_path):
    legacy = _torch_bytes(legacy=True)
    assert legacy.startswith(b"\x80")
    url = server.add("/legacy.ckpt", legacy)
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(legacy[:1000])  # a legacy pickle head looks fine: only the size tells
    fetch([url], dest, size=len(legacy), kind="checkpoint", progress=False)
    assert dest.read_bytes() == legacy


def test_cached_file_not_matching_its_sidecar_is_fetched_again(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    fetch([url], dest, kind="checkpoint", progress=False)
    damaged = bytearray(ckpt)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, still a readable zip: only the sha256 shows it
    dest.write_bytes(bytes(damaged))
    assert "no longer matches" in check_cached(dest, kind="checkpoint")
    before = len(server.requests)
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt and len(server.requests) > before
    assert read_sidecar(dest) == _sha(ckpt)


def test_dropped_connection_is_resumed_with_range(server, tmp_path, ckpt):
    url = server.add("/flaky.ckpt", ckpt, drop_after=len(ckpt) // 2)
    dest = tmp_path / "model.ckpt"
    fetch([url], dest, size=len(ckpt), sha256=_sha(ckpt), kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt
    ranges = server.ranges_requested("/flaky.ckpt")
    assert ranges and ranges[0] == f"bytes={len(ckpt) // 2}-"


def test_leftover_part_from_an_earlier_run_is_resumed(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.part").write_bytes(ckpt[:70_000])
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt
    assert server.ranges_requested("/m.ckpt") == ["bytes=70000-"]


def test_leftover_complete_part_is_used_without_refetching(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.part").write_bytes(ckpt)
    fetch([url], dest, kind="checkpoint", progress=False)  # the server answers 416
    assert dest.read_bytes() == ckpt


def test_resume_follows_a_redirect(server, tmp_path, ckpt):
    server.add("/cdn/m.ckpt", ckpt)
    url = server.add("/release/m.ckpt", b"", redirect="/cdn/m.ckpt")
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.part").write_bytes(ckpt[:1234])
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt
    assert server.ranges_requested("/cdn/m.ckpt") == ["bytes=1234-"]


def test_server_without_range_support_restarts_from_zero(server, tmp_path, ckpt):
    url = server.add("/norange.ckpt", ckpt, ranges=False)
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.part").write_bytes(b"junk" * 1000)
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt


def test_leftover_part_of_another_file_is_discarded_after_failed_check(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.part").write_bytes(b"\x00" * 5000)  # not the same file's first bytes
    fetch([url], dest, sha256=_sha(ckpt), kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt


def test_dead_first_mirror_falls_through_to_the_second(server, tmp_path, ckpt):
    dead = closed_port_url("/m.ckpt")
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    fetch([dead, server.url("/missing.ckpt"), url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt


def test_mirror_with_the_wrong_size_is_skipped_before_downloading(server, tmp_path, ckpt):
    wrong = server.add("/other.ckpt", ckpt + b"extra")
    right = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    fetch([wrong, right], dest, size=len(ckpt), kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_gets_a_clear_error(server, tmp_path, ctype):
    url = server.add("/login", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", content_type=ctype)
    dest = tmp_path / "model.ckpt"
    with pytest.raises(DownloadError) as info:
        fetch([url], dest, kind="checkpoint", progress=False)
    assert f"{url} (served an HTML page, not a checkpoint)" in str(info.value)
    assert not dest.exists() and not dest.with_name("model.ckpt.part").exists()


def test_wrong_sha256_is_rejected_and_nothing_is_kept(server, tmp_path, ckpt):
    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    with pytest.raises(DownloadError, match="sha256"):
        fetch([url], dest, sha256="0" * 64, kind="checkpoint", progress=False)
    assert not dest.exists() and not dest.with_name("model.ckpt.part").exists()


def test_config_must_be_taming_yaml(server, tmp_path):
    good = server.add("/model.yaml", CONFIG_YAML)
    bad = server.add("/other.yaml", b"foo: [1, 2]\n")
    assert fetch([good], tmp_path / "a.yaml", kind="config", progress=False).read_bytes() == CONFIG_YAML
    with pytest.raises(DownloadError, match="model.target"):
        fetch([bad], tmp_path / "b.yaml", kind="config", progress=False)


def test_no_network_gives_one_offline_message_fast(tmp_path):
    urls = [closed_port_url("/a.ckpt"), closed_port_url("/b.ckpt")]
    dest = tmp_path / "vqgan_x" / "model.ckpt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(urls, dest, kind="checkpoint", progress=False, label="vqgan_x checkpoint")
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "\n" not in msg and "vqgan_x checkpoint" in msg
    assert all(f"{u} (connection refused)" in msg for u in urls)
    assert str(dest) in msg and "--config configs/shapes.yaml" in msg
    assert isinstance(info.value, FetchError) and isinstance(info.value, VQClipError)
    assert list(dest.parent.iterdir()) == []  # nothing half-written, no lock left behind


def test_drop_with_server_gone_keeps_a_resumable_part(server, tmp_path, ckpt):
    url = server.add("/flaky.ckpt", ckpt, drop_after=100_000, drops=1)
    dest = tmp_path / "model.ckpt"
    real_resumes = download._MAX_RESUMES
    download._MAX_RESUMES = 0  # give up after the first drop, as if the network went away
    try:
        with pytest.raises(DownloadError):
            fetch([url], dest, kind="checkpoint", progress=False)
    finally:
        download._MAX_RESUMES = real_resumes
    part = dest.with_name("model.ckpt.part")
    assert part.read_bytes() == ckpt[:100_000] and not dest.exists()
    fetch([url], dest, kind="checkpoint", progress=False)
    assert dest.read_bytes() == ckpt and not part.exists()


def test_fetch_url_names_files_by_url_hash_inside_the_cache(server, tmp_path, ckpt):
    url = server.add("/weights/..%2F..%2Fevil%20name.ckpt", ckpt)
    path = fetch_url(url + "?dl=1", tmp_path, kind="checkpoint", progress=False)
    assert path.parent == tmp_path / "url" and path.read_bytes() == ckpt
    assert path.name.endswith("evil_name.ckpt") and ".." not in path.name
    assert fetch_url(url + "?dl=1", tmp_path, kind="checkpoint", progress=False) == path
    with pytest.raises(DownloadError, match="http"):
        fetch_url("file:///etc/passwd", tmp_path)


def test_paths_outside_the_cache_are_refused(tmp_path):
    with pytest.raises(DownloadError, match="outside the cache"):
        cache_path(tmp_path, "..", "escape")
    with pytest.raises(DownloadError, match="outside the cache"):
        cache_path(tmp_path, "/etc/passwd")
    with pytest.raises(DownloadError):
        registry.model_paths("../evil", tmp_path)


def test_cache_dir_default_env_and_explicit(monkeypatch, tmp_path):
    assert download.default_cache_dir().name == "vqclip"
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "env"))
    assert download.resolve_cache_dir() == tmp_path / "env"
    assert download.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert clip_cache_dir() == tmp_path / "env" / "clip"
    assert clip_cache_dir(tmp_path) == tmp_path / "clip"


# ---------------------------------------------------------------------------------------------
# The registry


def test_shipped_registry_is_complete():
    entries = registry.load_registry()
    required = {"vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_gumbel_f8_8192",
                "wikiart_16384", "wikiart_1024"}
    assert required <= set(entries)
    for name, entry in entries.items():
        assert entry.name == name and entry.family in registry.FAMILIES
        assert entry.factor in (8, 16) and entry.codebook_size in (1024, 8192, 16384)
        assert entry.description and entry.source
        for remote in (entry.config, entry.checkpoint):
            assert remote.urls and all(urlsplit(u).scheme == "https" and urlsplit(u).netloc for u in remote.urls)
            assert len(set(remote.urls)) == len(remote.urls)
    assert entries["vqgan_gumbel_f8_8192"].family == "GumbelVQ"
    assert entries["vqgan_imagenet_f16_1024"].checkpoint.size == 957_954_257
    assert len(entries["vqgan_imagenet_f16_16384"].checkpoint.urls) >= 2


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="vqgan_imagenet_f16_16384"):
        registry.get_entry("vqgan_nope")


def test_bad_registry_is_refused(tmp_path):
    path = tmp_path / "reg.yaml"
    path.write_text("models:\n  x:\n    family: Transformer\n    factor: 16\n    codebook: 1024\n"
                    "    description: d\n    source: s\n    config: {urls: [https://a/b]}\n"
                    "    checkpoint: {urls: [https://a/c]}\n")
    with pytest.raises(ConfigError, match="family"):
        registry.load_registry(path)


def _local_registry(server, tmp_path, ckpt, *, config_urls=None, ckpt_urls=None):
    path = tmp_path / "registry.yaml"
    config_urls = config_urls or [server.add("/tiny/model.yaml", CONFIG_YAML)]
    ckpt_urls = ckpt_urls or [server.add("/tiny/last.ckpt", ckpt)]
    path.write_text(
        "models:\n  tiny_f16_16:\n    family: VQModel\n    factor: 16\n    codebook: 16\n"
        "    description: a tiny test model\n    source: tests\n"
        f"    config: {{urls: {config_urls}}}\n"
        f"    checkpoint: {{urls: {ckpt_urls}, size: {len(ckpt)}}}\n")
    return registry.load_registry(path)


def test_ensure_model_fetches_both_files_and_reports_status(server, tmp_path, ckpt):
    reg = _local_registry(server, tmp_path, ckpt)
    cache = tmp_path / "cache"
    assert registry.cached_status("tiny_f16_16", cache, registry=reg).state == "missing"
    config, checkpoint = registry.ensure_model("tiny_f16_16", cache, progress=False, registry=reg)
    assert config == cache / "tiny_f16_16" / "config.yaml" and config.read_bytes() == CONFIG_YAML
    assert checkpoint == cache / "tiny_f16_16" / "model.ckpt" and checkpoint.read_bytes() == ckpt
    assert registry.cached_status("tiny_f16_16", cache, registry=reg).state == "cached"
    table = registry.format_model_table(cache, registry=reg)
    assert "tiny_f16_16" in table and "cached" in table and str(cache) in table


def test_ensure_model_offline_names_both_files_in_one_message(tmp_path, ckpt):
    dead_cfg, dead_ckpt = closed_port_url("/model.yaml"), closed_port_url("/last.ckpt")
    reg = _local_registry(None, tmp_path, ckpt, config_urls=[dead_cfg], ckpt_urls=[dead_ckpt])
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as info:
        registry.ensure_model("tiny_f16_16", cache, progress=False, registry=reg)
    msg = str(info.value)
    for text in ("tiny_f16_16 config", "tiny_f16_16 checkpoint", dead_cfg, dead_ckpt,
                 str(cache / "tiny_f16_16" / "config.yaml"), str(cache / "tiny_f16_16" / "model.ckpt"),
                 "configs/shapes.yaml"):
        assert text in msg
    assert "\n" not in msg


def test_concurrent_fetches_of_one_file_do_not_collide(server, tmp_path, ckpt):
    import threading

    url = server.add("/m.ckpt", ckpt)
    dest = tmp_path / "model.ckpt"
    results, errors = [], []

    def run():
        try:
            results.append(fetch([url], dest, kind="checkpoint", progress=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and results == [dest] * 3
    assert dest.read_bytes() == ckpt and server.requests.count(("/m.ckpt", None)) == 1


def test_download_script_lists_models(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "download_models.py"
    spec = importlib.util.spec_from_file_location("download_models", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vqgan_imagenet_f16_16384" in out and str(tmp_path) in out
    assert module.main(["no_such_model", "--cache-dir", str(tmp_path)]) == 2
    assert "known models" in capsys.readouterr().err
