"""Readers: files in, sample dictionaries out, one exception type (``ImageReadError``) for anything unreadable.

Raster images are decoded with PIL and fully loaded at once, so a truncated file fails here, with its name,
rather than later inside a batch. Decoding keeps the stored depth and colour (grayscale stays 2-D); turning
pixels into model input is preprocessing's job, not the reader's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageReadError
from .sample import make_sample

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def open_image(path: str | os.PathLike) -> Image.Image:
    """A fully decoded PIL image, or ``ImageReadError`` naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with Image.open(path) as image:
            image.load()
            # Copy out of the context manager so the file handle is closed; frames beyond the first are the
            # cine readers' business.
            return image.copy()
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from exc


def image_to_array(image: Image.Image) -> np.ndarray:
    """Pixels as stored: 8-bit grayscale/RGB as uint8, 16-bit grayscale as uint16; palettes expanded."""
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("I", "F"):
        return np.asarray(image)
    if image.mode in ("LA", "1"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def read_image(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """One image file as a sample dictionary (``fields`` fill label, spacing and other known values)."""
    image = open_image(path)
    return make_sample(image_to_array(image), str(path), **fields)
