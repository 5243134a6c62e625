"""Reading user images (init images, image prompts) safely, and converting tensors to PIL.

A user image is checked before it is decoded: it must exist, be an image PIL can identify, be at
least MIN_SIDE pixels on each side and at most MAX_PIXELS in total (a decompression bomb is refused
from its header, before any pixel is read), and decode completely (a truncated file is an error).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqclip.errors import InputImageError, looked_up

MIN_SIDE = 8
MAX_PIXELS = 64 * 1024 * 1024


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open, check and fully decode an image file as RGB; raise InputImageError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{what} not found: {looked_up(path)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise InputImageError(f"{what} {path} is {w}x{h}; allowed: at most {MAX_PIXELS // 2**20} megapixels")
                if min(w, h) < MIN_SIDE:
                    raise InputImageError(f"{what} {path} is {w}x{h}; allowed: at least {MIN_SIDE} pixels on each side")
                img.load()
                return img.convert("RGB")
    except InputImageError:
        raise
    except UnidentifiedImageError:
        raise InputImageError(f"{what} {path} is not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # refused from the header
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(pixels.group(1)):,} pixels)" if pixels else ""
        raise InputImageError(f"{what} {path} is too large{size}; allowed: at most {MAX_PIXELS // 2**20} megapixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{what} {path} is truncated or corrupt: {exc}") from None


def load_image_tensor(path: str | Path, size: Tuple[int, int], what: str = "image") -> torch.Tensor:
    """Read an image, resize it to (width, height) with Lanczos, return [1, 3, H, W] float in [0, 1]."""
    img = open_image(path, what).resize(tuple(size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image [3, H, W] in [0, 1] -> PIL RGB (rounded to nearest)."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One image [3, H, W] in [0, 1] -> HxWx3 uint8 array (for video frames)."""
    return np.asarray(to_pil(image))
