"""The decoder's attention through SDPA, and its residual blocks' fused swish, give taming's
results with the same weights."""
import torch
from taming.modules.diffusionmodules.model import ResnetBlock

from vqclip.models.vqgan import load_vqgan, set_fused_swish


def _decode_alike(fast, slow):
    """Decode the same codebook latent with both models; assert equal images and latent gradients;
    return the fast model's image and gradient."""
    torch.manual_seed(0)
    z = fast.codebook[torch.randint(64, (2, 16, 16))].permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    a, b = fast.decode(z), slow.decode(z2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-4, rtol=1e-3)
    return a, z.grad


def test_sdpa_attention_matches_taming(tiny_files):
    fast = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"], attention="sdpa")
    slow = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"], attention="taming")
    a, _ = _decode_alike(fast, slow)
    assert not torch.equal(a, torch.zeros_like(a))


def test_fused_swish_matches_taming(tiny_files):
    """The residual blocks' fused F.silu gives taming's x * sigmoid(x) result and gradient."""
    fast = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"])
    slow = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"])
    assert set_fused_swish(fast) > 0
    set_fused_swish(slow)
    set_fused_swish(slow, fused=False)  # and back to taming's own forward
    assert all("forward" not in m.__dict__ for m in slow.modules() if isinstance(m, ResnetBlock))
    assert all("forward" in m.__dict__ for m in fast.modules() if isinstance(m, ResnetBlock))
    _, grad = _decode_alike(fast, slow)
    assert grad.abs().sum() > 0
