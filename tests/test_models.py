"""Loading the published formats: taming YAML + Lightning .ckpt, open_clip JSON + weights; safety."""
import os
import pickle

import pytest
import torch
import yaml

from vqclip.checkpoints import safe_load
from vqclip.errors import CheckpointError, ConfigError
from vqclip.models.clip import load_clip
from vqclip.models.vqgan import load_vqgan


def test_vqgan_loads_decoder_only_and_with_encoder(tiny_files):
    m = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"])
    assert m.encoder is None and m.factor == 4 and m.codebook.shape == (64, 16)
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
    sd = safe_load(tiny_files["vqgan_ckpt"])["state_dict"]
    assert torch.equal(m.codebook, sd["quantize.embedding.weight"])
    img = m.decode(m.codebook[:16].T.reshape(1, 16, 4, 4))
    assert img.shape == (1, 3, 16, 16)
    full = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"], with_encoder=True)
    z = full.encode(torch.rand(1, 3, 64, 64))
    assert z.shape == (1, 16, 16, 16)
    # Every encoded vector is a codebook entry.
    flat = z.permute(0, 2, 3, 1).reshape(-1, 16)
    assert torch.cdist(flat, full.codebook).min(1).values.max() < 1e-2


def test_gumbel_vqgan_loads(tiny_files):
    m = load_vqgan(tiny_files["gumbel_config"], tiny_files["gumbel_ckpt"], with_encoder=True)
    assert m.gumbel and m.codebook.shape == (64, 16)
    assert m.encode(torch.rand(1, 3, 64, 64)).shape == (1, 16, 16, 16)


def test_missing_and_mismatched_keys_are_named(tiny_files, tmp_path):
    ckpt = {"state_dict": safe_load(tiny_files["vqgan_ckpt"])["state_dict"]}
    del ckpt["state_dict"]["decoder.conv_out.weight"]
    torch.save(ckpt, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_vqgan(tiny_files["vqgan_config"], tmp_path / "missing.ckpt")
    cfg = yaml.safe_load(open(tiny_files["vqgan_config"]))
    cfg["model"]["params"]["n_embed"] = 128
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="quantize.embedding.weight.*shape"):
        load_vqgan(tmp_path / "other.yaml", tiny_files["vqgan_ckpt"])


@pytest.mark.parametrize("target", ["os.system", "taming.models.cond_transformer.Net2NetTransformer", "builtins.eval"])
def test_config_target_outside_allow_list_refused(tiny_files, tmp_path, target):
    cfg = yaml.safe_load(open(tiny_files["vqgan_config"]))
    cfg["model"]["target"] = target
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="allowed: taming.models.vqgan.VQModel"):
        load_vqgan(tmp_path / "evil.yaml", tiny_files["vqgan_ckpt"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vqclip-pwned-marker",))


def test_malicious_checkpoint_refused_and_nothing_runs(tmp_path):
    marker = "/tmp/vqclip-pwned-marker"
    if os.path.exists(marker):
        os.remove(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused.*system"):
        safe_load(evil)
    legacy = tmp_path / "legacy.ckpt"
    with open(legacy, "wb") as fh:
        pickle.dump({"payload": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refused|corrupt"):
        safe_load(legacy)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("content, words", [
    (b"", "empty"), (b"<!DOCTYPE html><html>login</html>", "HTML"), (b"hello world, not torch", "not a PyTorch"),
])
def test_corrupt_checkpoints(tmp_path, content, words):
    p = tmp_path / "bad.ckpt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        safe_load(p)


def test_truncated_checkpoint(tiny_files, tmp_path):
    data = tiny_files["vqgan_ckpt"].read_bytes()
    p = tmp_path / "trunc.ckpt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        safe_load(p)
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "nope.ckpt")


def test_clip_from_json_and_weights(tiny_files):
    clip = load_clip(str(tiny_files["clip_json"]), str(tiny_files["clip_weights"]))
    assert clip.input_size == 32
    sd = torch.load(tiny_files["clip_weights"], weights_only=True)
    assert torch.equal(clip.model.state_dict()["token_embedding.weight"], sd["token_embedding.weight"])
    emb = clip.encode_image(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 32)
    assert clip.encode_text(["a cat", "a dog"]).shape == (2, 32)


def test_clip_bad_names(tiny_files, tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-33'.*ViT-B-32"):
        load_clip("ViT-B-33", None)
    with pytest.raises(ConfigError, match="not a tag"):
        load_clip("ViT-B-32", "laion_made_up")
    with pytest.raises(CheckpointError, match="not found"):
        load_clip(str(tiny_files["clip_json"]), str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_clip(str(tmp_path / "none.json"), None)


def test_clip_from_openai_torchscript_archive(tmp_path):
    from tests.fixtures import write_openai_archive

    name, path, source = write_openai_archive(tmp_path)
    clip = load_clip(name, str(path))
    x = torch.rand(2, 3, 32, 32)
    normalised = (x - clip.mean) / clip.std
    torch.testing.assert_close(clip.encode_image(x), source.encode_image(normalised), atol=5e-3, rtol=0)
    assert clip.encode_text(["a cat"]).shape == (1, 32)


@pytest.mark.parametrize("autocast", [False, True])
def test_clip_attention_runs_sequence_first_with_the_same_results(tiny_files, autocast):
    """ClipModel switches the ViT's attention to sequence-first tensors (faster under CPU bf16);
    embeddings and input gradients are those of open_clip's batch-first layout."""
    import open_clip

    clip = load_clip(str(tiny_files["clip_json"]), str(tiny_files["clip_weights"]))
    attentions = [m for m in clip.model.visual.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attentions and not any(m.batch_first for m in attentions)
    assert clip.model.visual.transformer.batch_first is False
    reference = open_clip.create_model(clip.name, pretrained=str(tiny_files["clip_weights"])).eval()
    assert reference.visual.transformer.batch_first is True
    torch.manual_seed(0)
    x = torch.rand(3, 3, clip.input_size, clip.input_size, requires_grad=True)

    def embed_and_grad(encode):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = encode(x).float()
        return out.detach(), torch.autograd.grad(out.square().sum(), x)[0]

    mean, std = clip.mean, clip.std
    got = embed_and_grad(clip.encode_image)
    want = embed_and_grad(lambda t: reference.encode_image((t - mean) / std))
    tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
