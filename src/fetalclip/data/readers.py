"""Readers: files in, sample dictionaries out, one exception type (``ImageReadError``) for anything unreadable.

``read_samples(path, frames=...)`` is the single entry point: it dispatches on what the path is (a raster
image, a DICOM file, a video, or a folder of frames forming one clip) and yields one sample per selected
frame. Raster images are decoded with PIL and fully loaded at once, so a truncated file fails here, with its
name, rather than later inside a batch. Decoding keeps the stored depth and colour (grayscale stays 2-D);
turning pixels into model input is preprocessing's job, not the reader's. DICOM and video support live in
their own modules and are imported only when such a file shows up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from ..errors import ImageReadError
from .frames import FrameSelection
from .sample import make_sample

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MULTIPAGE_SUFFIXES = (".tif", ".tiff", ".gif")


def open_image(path: str | os.PathLike) -> Image.Image:
    """A fully decoded PIL image, or ``ImageReadError`` naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with Image.open(path) as image:
            image.load()
            # Copy out of the context manager so the file handle is closed; frames beyond the first are the
            # multi-frame readers' business.
            return image.copy()
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from exc


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
    """One image file as a sample dictionary (``fields`` fill label, spacing and other known values)."""
    image = open_image(path)
    return make_sample(image_to_array(image), str(path), **fields)


def _raster_frames(path: Path, frames: FrameSelection, fields: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Multi-page TIFF/GIF as frames; everything else is a single image."""
    if path.suffix.lower() in _MULTIPAGE_SUFFIXES:
        try:
            with Image.open(path) as probe:
                n_frames = getattr(probe, "n_frames", 1)
        except (OSError, SyntaxError, ValueError):
            n_frames = 1  # let open_image report the real problem
        if n_frames > 1:
            try:
                wanted = frames.select(n_frames)
            except IndexError as exc:
                raise ImageReadError(path, str(exc)) from None
            fields = {k: v for k, v in fields.items() if k != "frame_index"}
            try:
                with Image.open(path) as image:
                    for index, page in enumerate(ImageSequence.Iterator(image)):
                        if index in wanted:
                            page.load()
                            yield make_sample(image_to_array(page.copy()), str(path), frame_index=index, **fields)
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageReadError(path, f"cannot decode page ({exc})") from exc
            return
    yield read_image(path, **fields)


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
    try:
        wanted = FrameSelection.parse(frames).select(len(files))
    except IndexError as exc:
        raise ImageReadError(folder, str(exc)) from None
    fields = {k: v for k, v in fields.items() if k != "frame_index"}
    base_meta = fields.pop("metadata", None) or {}
    for index in wanted:
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
