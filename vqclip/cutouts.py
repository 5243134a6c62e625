"""Cutouts and augmentations: what CLIP actually looks at each step.

`make_cutouts` takes `cutn` random square crops per image, their sides drawn as
`min + u**cut_pow * (max - min)`, and resamples all of them to CLIP's input size with two batched
matrix products (separable antialiased bicubic interpolation, `Wy @ image @ Wx^T`, the same
resampling as the loop's `F.interpolate`): no Python loop, and the backward pass is two matrix
products rather than a scatter into the image.

`make_cutouts_loop` is the notebooks' per-cutout loop, kept behind `cutouts.batched=false` for the
benchmark's baseline and for comparison. `build_augments(names)` turns config names into one kornia pipeline applied to the whole batch.

`scheduled_blur` blurs the image CLIP sees early in a run (coarse to fine): while the blur is strong,
only large regions of colour change what CLIP sees, so the composition forms before the detail.
`scheduled_sigma` and `add_noise` noise every cutout, the noise falling over the run (high to low):
for a CLIP trained on noised images, the gradient at a noised view points towards the clean images
of the caption, which is what pulls a texture into a scene. `spread_sigma` gives each cutout its own
std between the step's and a higher one, so that late in the run some views still see the whole scene.

With `roll`, each cutout's box is shifted and may cross an edge of the image, which it reads as
wrapping around (a view of the circularly shifted image): a shape with a margin stays whole in
every such view, one that runs off an edge shows up split across the opposite one.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

def sample_boxes(n: int, width: int, height: int, cut_size: int, cut_pow: float,
                 device: torch.device | str = "cpu", min_size: float = 0.0, whole: float = 0.0,
                 roll: float = 0.0) -> torch.Tensor:
    """Random square boxes [n, 3] as (x0, y0, side) in pixels, sides following `cut_pow`.

    Sides lie in [max(min(cut_size, S), min_size * S), S] for S the shorter image side; the first
    round(whole * n) boxes are the largest centred square (the whole image when it is square).
    `roll` (0..0.5) then shifts every box, whole ones included, by a whole number of pixels drawn
    uniformly up to that fraction of each side: such a box may cross an edge of the image, which
    the cutouts read as wrapping around (the view of a circularly shifted image).
    """
    max_side = min(width, height)
    min_side = max(min(max_side, cut_size), math.ceil(min_size * max_side))
    u = torch.rand(n, device=device)
    side = (u.pow(cut_pow) * (max_side - min_side) + min_side).floor().clamp(1, max_side)
    x0 = (torch.rand(n, device=device) * (width - side + 1)).floor()
    y0 = (torch.rand(n, device=device) * (height - side + 1)).floor()
    n_whole = round(whole * n)
    if n_whole:
        side[:n_whole] = max_side
        x0[:n_whole] = (width - max_side) // 2
        y0[:n_whole] = (height - max_side) // 2
    if roll:
        rx, ry = math.floor(roll * width), math.floor(roll * height)
        x0 = x0 - torch.randint(-rx, rx + 1, (n,), device=device)
        y0 = y0 - torch.randint(-ry, ry + 1, (n,), device=device)
    return torch.stack([x0, y0, side], dim=1)


def cutout_boxes(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                 min_size: float = 0.0, whole: float = 0.0, roll: float = 0.0) -> torch.Tensor:
    """Boxes [B, cutn, 3] for the images [B, C, H, W], as `sample_boxes` draws them, per image."""
    b, _, h, w = images.shape
    if whole:  # the whole views come first in each image's cutouts
        return torch.stack([sample_boxes(cutn, w, h, cut_size, cut_pow, images.device, min_size, whole, roll)
                            for _ in range(b)])
    return sample_boxes(b * cutn, w, h, cut_size, cut_pow, images.device, min_size, roll=roll).view(b, cutn, 3)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5, as PIL and torch's antialiased bicubic use)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(start: torch.Tensor, side: torch.Tensor, out: int, size: int,
                     wrap: bool = False) -> torch.Tensor:
    """Interpolation matrices [..., out, size] for crops [start, start + side) of an axis of `size`
    pixels resampled to `out` pixels: the bicubic kernel stretched by the downscale (antialiased),
    each row normalised to sum 1 inside the crop. For a crop at least `out` pixels long, row i of
    `resample_weights(...) @ x` equals `F.interpolate(crop, mode="bicubic", antialias=True,
    align_corners=False)` along that axis, which is what the notebooks' per-cutout loop computes.

    With `wrap`, a crop may run past either end (start in [-size, size], start + side <= 2 * size)
    and pixel j stands for pixel j mod size: the same crop of the axis rolled circularly."""
    start, side = start.float(), side.float()
    scale = side / out
    stretch = scale.clamp(min=1.0)
    centre = start[..., None] + (torch.arange(out, device=start.device) + 0.5) * scale[..., None]  # [..., out]
    lo, hi = (-size, 2 * size) if wrap else (0, size)
    j = torch.arange(lo, hi, device=start.device) + 0.5  # input pixel centres (three copies of the axis when wrapping)
    w = _cubic((j - centre[..., None]) / stretch[..., None, None])
    inside = (j >= start[..., None, None]) & (j < (start + side)[..., None, None])
    w = w * inside
    w = w / w.sum(-1, keepdim=True)
    if wrap:  # fold the copies before and after the axis back onto it
        w = w.unflatten(-1, (3, size)).sum(-2)
    return w


def make_cutouts(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                 min_size: float = 0.0, whole: float = 0.0, roll: float = 0.0) -> torch.Tensor:
    """Images [B, C, H, W] -> cutouts [B * cutn, C, cut_size, cut_size], image-major order.

    Every cutout of every image in two batched matrix products, `Wy @ image @ Wx^T`, with the
    antialiased interpolation matrices of `resample_weights` (so backward is two matrix products
    too). `min_size`, `whole` and `roll` are as in `sample_boxes`, per image (the first
    round(whole * cutn) cutouts of each image are whole views; with `roll`, views wrap around the
    image's edges).
    """
    b, c, h, w = images.shape
    boxes = cutout_boxes(images, cutn, cut_size, cut_pow, min_size, whole, roll)
    x0, y0, side = boxes.unbind(-1)  # [b, cutn]
    wrap = roll > 0
    wy = resample_weights(y0, side, cut_size, h, wrap).to(images.dtype)  # [b, cutn, S, H]
    wx = resample_weights(x0, side, cut_size, w, wrap).to(images.dtype)  # [b, cutn, S, W]
    rows = torch.matmul(wy.unsqueeze(2), images.unsqueeze(1))  # [b, cutn, C, S, W]
    out = torch.matmul(rows, wx.unsqueeze(2).transpose(-1, -2))  # [b, cutn, C, S, S]
    return out.reshape(b * cutn, c, cut_size, cut_size)


def make_cutouts_loop(images: torch.Tensor, cutn: int, cut_size: int, cut_pow: float = 1.0,
                      min_size: float = 0.0, whole: float = 0.0, roll: float = 0.0) -> torch.Tensor:
    """The original notebooks' way (`cutouts.batched=false`): a Python loop, one crop and one
    antialiased bicubic resample per cutout. Same boxes and output layout as `make_cutouts`."""
    boxes = cutout_boxes(images, cutn, cut_size, cut_pow, min_size, whole, roll).long().tolist()
    h, w = images.shape[-2:]
    cuts = []
    for i in range(images.shape[0]):
        for x0, y0, side in boxes[i]:
            if 0 <= x0 and x0 + side <= w and 0 <= y0 and y0 + side <= h:
                crop = images[i:i + 1, :, y0:y0 + side, x0:x0 + side]
            else:  # a box across an edge (`roll`): the crop of the image rolled to put the box at 0, 0
                crop = torch.roll(images[i:i + 1], (-y0, -x0), (2, 3))[:, :, :side, :side]
            cuts.append(F.interpolate(crop, size=(cut_size, cut_size), mode="bicubic", align_corners=False,
                                      antialias=side > cut_size))
    return torch.cat(cuts)


def build_augments(names: Sequence[str], cut_size: int, noise: float = 0.1) -> nn.Module:
    """One kornia pipeline from augment names (see vqclip.config.AUGMENTS); identity when empty."""
    import kornia.augmentation as K

    table = {
        "flip": lambda: K.RandomHorizontalFlip(p=0.5),
        "affine": lambda: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="border"),
        "perspective": lambda: K.RandomPerspective(0.2, p=0.7),
        "jitter": lambda: K.ColorJitter(hue=0.1, saturation=0.1, p=0.7),
        "erasing": lambda: K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 3.3), p=0.7),
        "sharpness": lambda: K.RandomSharpness(0.3, p=0.4),
        "resized_crop": lambda: K.RandomResizedCrop((cut_size, cut_size), scale=(0.1, 1.0), p=0.5),
        "noise": lambda: K.RandomGaussianNoise(mean=0.0, std=noise, p=0.5),
        # the view shrunk inside a margin that repeats its edge pixels: what touches the edge smears outwards
        "zoom_out": lambda: K.RandomAffine(degrees=0, scale=(0.6, 0.9), p=0.5, padding_mode="border"),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown augment {unknown[0]!r}; allowed: {', '.join(table)}")
    return nn.Sequential(*(table[n]() for n in names))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images [B, C, H, W] with std `sigma` pixels (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def scheduled_sigma(sigma: float, sigma_end: float, step: int, steps: int) -> float:
    """The noise std at `step` of `steps`: `sigma` at step 0, `sigma_end` at the last step, geometric in
    between (linear when `sigma_end` is 0)."""
    t = step / (steps - 1) if steps > 1 else 1.0
    if sigma <= 0:
        return 0.0
    if sigma_end > 0:
        return sigma * (sigma_end / sigma) ** t
    return sigma * (1 - t)


def spread_sigma(std: float, sigma: float, spread: float, n: int,
                 device: torch.device | str = "cpu") -> Union[float, torch.Tensor]:
    """Per-cutout noise stds [n, 1, 1, 1] drawn log-uniformly from `std` (this step's) up to
    `std * (sigma / std) ** spread` (torch's global RNG); `std` itself when `spread` is 0 or std <= 0."""
    if spread <= 0 or std <= 0 or sigma <= std:
        return std
    u = torch.rand(n, 1, 1, 1, device=device)
    return std * (sigma / std) ** (u * spread)


def add_noise(cutouts: torch.Tensor, std: Union[float, torch.Tensor]) -> torch.Tensor:
    """Cutouts plus Gaussian noise of std `std` (torch's global RNG): a number, or a tensor that
    broadcasts against the cutouts (one std per cutout); the cutouts themselves when the number is 0."""
    if not torch.is_tensor(std) and std <= 0:
        return cutouts
    return cutouts + std * torch.randn_like(cutouts)


def scheduled_blur(images: torch.Tensor, sigma: float, step: int, until: float) -> torch.Tensor:
    """Blur with std `sigma * (1 - step / until)` pixels, none from step `until` on (or below 0.3 px)."""
    s = sigma * (1 - step / until) if until > 0 else 0.0
    return gaussian_blur(images, s) if s >= 0.3 else images
