"""Images on disk and uint8 tensors: decoding (Pillow), antialiased resizing, PNG grids.

Every image fastebm reads is loaded as a viewer shows it, then becomes 8-bit RGB, (3, H, W) uint8, or is refused
with its path. As a viewer shows it: an EXIF Orientation tag (2-8, phone photos: 6 and 8 for a camera held
upright, 3 upside down) is applied (Pillow's ``ImageOps.exif_transpose``), not ignored. Palette, grey,
grey + alpha, RGBA and CMYK images are converted by Pillow (alpha dropped), 16-bit greys are scaled to 8 bits
(v / 257, rounded); float images are refused. An image whose header declares more pixels than Pillow's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 Mpx) is refused before it is decoded.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageError(ValueError):
    """An image file that cannot become 8-bit RGB; the message names the file and why."""


def read_image(path: str) -> torch.Tensor:
    """The image at ``path`` as (3, H, W) uint8 RGB (module docstring). Raises ImageError naming the path."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only; the bomb check happens here
                img.load()  # Pillow's TIFF decoder applies the Orientation tag itself here (10.0 keeps the tag)
                if img.format != "TIFF" and _orientation(img) != 1:
                    from PIL import ImageOps

                    img = ImageOps.exif_transpose(img)
                return _to_rgb8(img, path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"image {path!r}: more pixels than Pillow's decompression-bomb limit "
                         f"({Image.MAX_IMAGE_PIXELS} px): {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {path!r}: cannot be decoded ({type(e).__name__}: {e})") from None


def _orientation(img) -> int:
    """The EXIF Orientation tag (274) of ``img``, 1 (as stored) when absent or unreadable: the pixels are whole
    either way, and an EXIF block that cannot be parsed is no reason to refuse them."""
    if "exif" not in img.info:  # no EXIF block
        return 1
    try:
        return int(img.getexif().get(274, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the image as stored
        return 1


def _to_rgb8(img, path: str) -> torch.Tensor:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG): 0..65535 → 0..255
        a = np.asarray(img, dtype=np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise ImageError(f"image {path!r}: {img.mode} values outside 0..65535")
        grey = np.rint(a / 257.0).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif img.mode == "F":
        raise ImageError(f"image {path!r}: floating-point pixels (mode F) have no 8-bit range; convert it first")
    else:
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """(N, 3, H, W) or (3, H, W) uint8 → the same with sides ``size``, bilinear and antialiased (as
    torchvision's ``resize(antialias=True)``), rounded; in chunks of ``chunk`` images so that the float
    intermediate stays small. Returns ``images`` itself when it has that size already."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    one = images.ndim == 3
    x = images[None] if one else images
    out = torch.cat([F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True).round_().clamp_(0, 255).to(torch.uint8)
                     for i in range(0, len(x), chunk)])
    return out[0] if one else out


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """(N, 3, H, W) uint8 → one (3, H', W') uint8 grid, ``nrow`` images a row, ``padding`` pixels of
    ``pad_value`` around each (torchvision's ``make_grid`` layout; one image is returned as it is)."""
    n, c, h, w = images.shape
    if n == 1:
        return images[0].clone()
    cols = min(nrow, max(n, 1))
    rows = -(-n // cols) if n else 1
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value,
                      dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def save_png(path: str, image: torch.Tensor) -> str:
    """Write a (3, H, W) uint8 image as PNG (Pillow); returns ``path``."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path
