"""The decoder's attention through SDPA gives taming's result with the same weights."""
import torch

from vqclip.models.vqgan import load_vqgan


def test_sdpa_attention_matches_taming(tiny_files):
    fast = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"], attention="sdpa")
    slow = load_vqgan(tiny_files["vqgan_config"], tiny_files["vqgan_ckpt"], attention="taming")
    torch.manual_seed(0)
    z = fast.codebook[torch.randint(64, (2, 16, 16))].permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    a, b = fast.decode(z), slow.decode(z2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-4, rtol=1e-3)
    assert not torch.equal(a, torch.zeros_like(a))
