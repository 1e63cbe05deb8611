"""The two rules every reader (raster, DICOM, video, shard member) follows: one pixel budget, one error boundary.

They live apart from ``readers`` so the DICOM and video readers, which ``readers`` dispatches to, can share them
without importing their dispatcher (no import cycle). See ``readers`` for the reasons behind each rule.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import FetalCLIPError, ImageReadError

# -- the pixel budget -------------------------------------------------------------------------------------------
# 8192 x 8192: four times the largest ultrasound frame in common use; one such frame, 16-bit RGB, is 400 MB.
MAX_FRAME_PIXELS = 8192 * 8192
FRAME_PIXELS_ENV = "FETALCLIP_MAX_FRAME_PIXELS"
# An hour and a half of cine at 30 fps; a larger count is a damaged or hostile header, not a scan.
MAX_FRAMES = 200_000
# All frames of one file together (about 87,000 frames of 1024x768): bounds the work one file can ask for.
MAX_FILE_PIXELS = 2**36


def max_frame_pixels() -> int:
    """The per-frame pixel limit in force (``FETALCLIP_MAX_FRAME_PIXELS`` or ``MAX_FRAME_PIXELS``)."""
    text = os.environ.get(FRAME_PIXELS_ENV, "").strip()
    if not text:
        return MAX_FRAME_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise FetalCLIPError(f"{FRAME_PIXELS_ENV}={text!r}: expected a positive whole number of pixels")
    return limit


def check_pixel_budget(path: str | os.PathLike, width: int, height: int, frames: int = 1) -> None:
    """``ImageReadError`` unless ``frames`` frames of ``width`` x ``height`` fit the budget; call before decoding."""
    width, height, frames = int(width), int(height), int(frames)
    if width < 1 or height < 1:
        raise ImageReadError(path, f"declares a {width}x{height} image")
    limit = max_frame_pixels()
    if width * height > limit:
        raise ImageReadError(path, f"declares {width}x{height} = {width * height:,} pixels per frame, over the limit of "
                                   f"{limit:,} (set {FRAME_PIXELS_ENV} to allow larger images)")
    check_frame_count(path, frames)
    if frames * width * height > MAX_FILE_PIXELS:
        raise ImageReadError(path, f"declares {frames:,} frames of {width}x{height}, over the limit of "
                                   f"{MAX_FILE_PIXELS:,} pixels per file")


def check_frame_count(path: str | os.PathLike, frames: int) -> None:
    """``ImageReadError`` unless a source's frame count is between 1 and ``MAX_FRAMES``."""
    if frames < 1:
        raise ImageReadError(path, f"declares {frames} frames")
    if frames > MAX_FRAMES:
        raise ImageReadError(path, f"declares {frames:,} frames, over the limit of {MAX_FRAMES:,} per file")


# -- the error boundary -----------------------------------------------------------------------------------------
@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Run decoding code for ``path``: any failure comes out as ``ImageReadError`` naming the file.

    The project's own errors pass unchanged (they already name the file); everything else is a library saying
    the bytes are not what they claim, whatever its type, and is chained so ``-v`` still shows where.
    """
    try:
        yield
    except FetalCLIPError:
        raise
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode it") from None
    except Exception as exc:
        detail = " ".join(str(exc).split())  # one line, whatever the library's message looks like
        raise ImageReadError(path, f"cannot decode ({type(exc).__name__}: {detail})") from exc


def require_file(path: Path) -> None:
    """A regular file, or ``ImageReadError`` saying what it is instead."""
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
