"""Readers: files in, sample dictionaries out, one exception type (``ImageReadError``) for anything unreadable.

``read_samples(path, frames=...)`` is the single entry point: it dispatches on what the path is (a raster
image, a DICOM file, a video, or a folder of frames forming one clip) and yields one sample per selected
frame. Raster images are decoded with PIL and fully loaded at once, so a truncated file fails here, with its
name, rather than later inside a batch. Decoding keeps the stored depth and colour (grayscale stays 2-D);
turning pixels into model input is preprocessing's job, not the reader's. DICOM and video support live in
their own modules and are imported only when such a file shows up.

Two rules hold for every format; they live in ``read_rules`` so the DICOM and video readers share them:

* One pixel budget (``check_pixel_budget``), applied to the size a file *declares* before any pixel is
  decoded: at most ``MAX_FRAME_PIXELS`` per frame (``FETALCLIP_MAX_FRAME_PIXELS`` changes it for a site with
  genuinely larger images), ``MAX_FRAMES`` frames and ``MAX_FILE_PIXELS`` in all per file. A 200-byte PNG or a
  1 KB DICOM claiming 30000x30000 pixels fails at once in little memory, instead of allocating gigabytes.
  Every Pillow read (a file, its header size or frame count, a shard member's bytes) opens through one
  function that checks it. Pillow's own decompression-bomb warning is silenced there because this budget is
  stricter by default and is the one rule; Pillow's hard stop (twice its limit) still applies and reads as
  the same error.
* One error boundary (``reading(path)``): whatever a decoding library raises (Pillow's ``OSError``,
  ``SyntaxError``, ``struct.error``, pydicom's and PyAV's own errors, a numpy reshape ``ValueError``, a
  ``MemoryError``) leaves the reader as ``ImageReadError(path, reason)``, so batch commands with ``--skip-bad``
  count and skip the file instead of stopping. Only decoding runs inside the boundary; building the sample
  from the caller's fields does not, so a caller's mistake is not disguised as a bad file.

GIF is a raster format like TIFF: folder scans list it, a still-image use reads its first frame, and
``read_samples`` gives every frame of an animated one, as it does for a multi-page TIFF.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from ..errors import ImageReadError
from .frames import FrameSelection
from .read_rules import (  # noqa: F401  (re-exported: the readers' public rules)
    FRAME_PIXELS_ENV,
    MAX_FILE_PIXELS,
    MAX_FRAME_PIXELS,
    MAX_FRAMES,
    check_frame_count,
    check_pixel_budget,
    max_frame_pixels,
    reading,
    require_file,
)
from .sample import make_sample

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_MULTIPAGE_SUFFIXES = (".tif", ".tiff", ".gif")


@contextmanager
def _pillow_open(source: Any, path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open`` with the budget checked on the declared size of the first frame, before any decoding."""
    try:
        with warnings.catch_warnings():
            # The budget below is the rule (and stricter by default); Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        # Pillow's hard stop (twice its own limit) comes before the budget can see the size: say it the same way.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels"
        raise ImageReadError(path, f"declares {size} per frame, over the limit of {max_frame_pixels():,} "
                                   "(Pillow refuses it as a decompression bomb)") from None
    with image:
        check_pixel_budget(path, *image.size)
        yield image


def open_image(path: str | os.PathLike) -> Image.Image:
    """A fully decoded PIL image (the first frame), or ``ImageReadError`` naming the file and the reason."""
    path = Path(path)
    require_file(path)
    with reading(path), _pillow_open(path, path) as image:
        image.load()
        # Copy out of the context manager so the file handle is closed; frames beyond the first are the
        # multi-frame readers' business.
        return image.copy()


def image_header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a raster image's first frame from its header, within the budget; nothing is decoded."""
    path = Path(path)
    require_file(path)
    with reading(path), _pillow_open(path, path) as image:
        return image.height, image.width


def raster_frame_count(path: str | os.PathLike) -> int:
    """Frames of a raster file (pages of a TIFF, frames of a GIF; 1 for the rest), within the budget, undecoded."""
    path = Path(path)
    require_file(path)
    with reading(path), _pillow_open(path, path) as image:
        n_frames = int(getattr(image, "n_frames", 1))
        check_pixel_budget(path, *image.size, frames=n_frames)
        return n_frames


def open_image_bytes(data: bytes, name: str) -> Image.Image:
    """``open_image`` for bytes already in memory (a shard member); ``name`` is what errors call it."""
    import io

    with reading(name), _pillow_open(io.BytesIO(data), name) as image:
        image.load()
        return image.copy()


def image_to_array(image: Image.Image) -> np.ndarray:
    """Pixels as stored: 8-bit grayscale/RGB as uint8, 16-bit grayscale as uint16; palettes and alpha resolved.

    A palette whose entries are all grey becomes a 2-D grey image (ultrasound exported as GIF/BMP often is);
    RGBA and LA drop the alpha channel (scanners export opaque images; alpha is a viewer's artefact).
    """
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        values = np.asarray(image)
        # 16-bit PNGs decode as mode "I" in some Pillow versions; keep them 16-bit when they fit.
        return values.astype(np.uint16) if values.min() >= 0 and values.max() <= 65535 else values
    if image.mode == "F":
        return np.asarray(image)
    if image.mode in ("LA", "1"):
        return np.asarray(image.convert("L"))
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.convert("RGB"))
        if np.array_equal(palette[..., 0], palette[..., 1]) and np.array_equal(palette[..., 1], palette[..., 2]):
            return np.ascontiguousarray(palette[..., 0])
        return palette
    return np.asarray(image.convert("RGB"))


def as_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit view of any decoded image: 16-bit by its full range (top byte), floats by their own min..max."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    values = image.astype(np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.round((np.nan_to_num(values, nan=low) - low) * scale).astype(np.uint8)


def read_image(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """One image file (its first frame) as a sample dictionary (``fields`` fill label, spacing and other known values)."""
    with reading(path):
        pixels = image_to_array(open_image(path))
    return make_sample(pixels, str(path), **fields)


def _raster_frames(path: Path, frames: FrameSelection, fields: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Multi-page TIFF/GIF as frames; everything else is a single image."""
    if path.suffix.lower() in _MULTIPAGE_SUFFIXES:
        n_frames = raster_frame_count(path)
        if n_frames > 1:
            try:
                wanted = frames.select(n_frames)
            except IndexError as exc:
                raise ImageReadError(path, str(exc)) from None
            fields = {k: v for k, v in fields.items() if k != "frame_index"}
            for index, pixels in _decoded_pages(path, wanted):
                yield make_sample(pixels, str(path), frame_index=index, **fields)
            return
    yield read_image(path, **fields)


def _decoded_pages(path: Path, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, pixels) of the ``wanted`` pages, each checked against the budget before it is decoded."""
    targets = set(wanted)
    with reading(path), _pillow_open(path, path) as image:
        for index, page in enumerate(ImageSequence.Iterator(image)):
            if not targets:
                break
            if index in targets:
                targets.discard(index)
                check_pixel_budget(path, *page.size)  # pages may declare their own size (TIFF)
                page.load()
                yield index, image_to_array(page.copy())


def _natural_key(name: str) -> list[Any]:
    # frame_2 before frame_10
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, in natural order (the clip's frame order)."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES), key=lambda p: _natural_key(p.name)
    )


def read_frame_folder(folder: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> Iterator[dict[str, Any]]:
    """A folder of frame images as one clip: ``source`` is the folder, ``frame_index`` the position in it."""
    folder = Path(folder)
    files = frame_files(folder)
    if not files:
        raise ImageReadError(folder, "folder holds no image frames")
    check_frame_count(folder, len(files))
    try:
        wanted = FrameSelection.parse(frames).select(len(files))
    except IndexError as exc:
        raise ImageReadError(folder, str(exc)) from None
    fields = {k: v for k, v in fields.items() if k != "frame_index"}
    base_meta = fields.pop("metadata", None) or {}
    for index in wanted:
        with reading(files[index]):
            image = image_to_array(open_image(files[index]))
        meta = {"format": "frames", "frame_file": files[index].name, "number_of_frames": len(files), **base_meta}
        yield make_sample(image, str(folder), frame_index=index, metadata=meta, **fields)


def source_kind(path: str | os.PathLike) -> str:
    """``frames`` (a folder), ``video``, ``dicom`` or ``raster``."""
    from .dicom import is_dicom
    from .video import VIDEO_SUFFIXES

    path = Path(path)
    if path.is_dir():
        return "frames"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    return "dicom" if is_dicom(path) else "raster"


def read_samples(path: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> Iterator[dict[str, Any]]:
    """Samples for every selected frame of ``path``, whatever it is (see ``source_kind``).

    ``frames``: ``None``/``"all"``, ``"every:K"``, ``"even:N"``, ``"first"``, ``"0,5,9"`` or a ``FrameSelection``;
    single images ignore it. ``fields`` (label, patient, spacing, ...) are attached to every sample; a spacing
    given here wins over one found in the file.
    """
    selection = FrameSelection.parse(frames)
    kind = source_kind(path)
    if kind == "frames":
        yield from read_frame_folder(path, selection, **fields)
    elif kind == "video":
        from .video import read_video

        yield from read_video(path, selection, **fields)
    elif kind == "dicom":
        from .dicom import read_dicom

        yield from read_dicom(path, selection, **fields)
    else:
        yield from _raster_frames(Path(path), selection, fields)


def read_clip(path: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> list[dict[str, Any]]:
    """The selected frames of one clip as a list, all grey or all RGB (mixed loops are promoted to RGB)."""
    samples = list(read_samples(path, frames, **fields))
    if any(s["image"].ndim == 3 for s in samples):
        for sample in samples:
            if sample["image"].ndim == 2:
                sample["image"] = np.repeat(sample["image"][..., None], 3, axis=2)
    return samples


def read_frame(path: str | os.PathLike, frame_index: int | None = None, **fields: Any) -> dict[str, Any]:
    """One sample: frame ``frame_index`` of a multi-frame source, or its first frame when ``None``."""
    selection = FrameSelection("indices", indices=(0 if frame_index is None else int(frame_index),))
    for sample in read_samples(path, selection, **fields):
        return sample
    raise ImageReadError(path, f"frame {frame_index} not found")
