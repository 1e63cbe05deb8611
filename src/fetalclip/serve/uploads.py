"""Uploaded bytes -> pixels, with the type sniffed from the content and every failure an ``UploadError`` (4xx).

The file name a client sends is a label, never a type: the first bytes decide (PNG, JPEG, TIFF, GIF, BMP, DICOM
Part 10, MP4/MOV, AVI, Matroska/WebM, MPEG). The bytes are written to a private temporary file with the sniffed
suffix and read by ``fetalclip.data.readers``, so the service applies exactly the readers' rules, the pixel
budget first (checked on the declared size before anything is decoded). What reaches the rest of the service is
pixels, a pixel spacing and a frame count: DICOM attributes stay in the reader, so no patient attribute can
reach a response or a log line.

Status codes: 415 for content that is no supported type, 413 for a body or image over a limit, 422 for a file of
a supported type that does not decode, 400 for a bad form field.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from ..errors import FetalCLIPError, ImageReadError

# (offset, magic bytes, kind, suffix the readers dispatch on)
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image", ".png"),
    (0, b"\xff\xd8\xff", "image", ".jpg"),
    (0, b"II*\x00", "image", ".tif"),
    (0, b"MM\x00*", "image", ".tif"),
    (0, b"GIF87a", "image", ".gif"),
    (0, b"GIF89a", "image", ".gif"),
    (0, b"BM", "image", ".bmp"),
    (128, b"DICM", "dicom", ".dcm"),
    (4, b"ftyp", "video", ".mp4"),
    (0, b"\x1a\x45\xdf\xa3", "video", ".mkv"),
    (0, b"\x00\x00\x01\xba", "video", ".mpg"),
)


class UploadError(FetalCLIPError):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Scan:
    """A decoded upload: one or more frames (grey or RGB arrays) and the spacing the file carried, if any."""

    frames: list[Any]
    spacing_mm: float | None
    kind: str  # image, dicom or video
    source: str

    @property
    def is_sweep(self) -> bool:
        return len(self.frames) > 1


def sniff(data: bytes) -> tuple[str, str]:
    """(kind, suffix) of an upload from its first bytes; ``UploadError`` 415 when it is none we read."""
    for offset, magic, kind, suffix in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return kind, suffix
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video", ".avi"
    raise UploadError(415, "unsupported content: expected PNG, JPEG, TIFF, GIF, BMP, DICOM or a video "
                           "(MP4, AVI, MKV/WebM, MPEG); the type is read from the bytes, not the file name")


def safe_source(filename: str | None) -> str:
    """The client's file name as a label: its last component, printable characters only, at most 80."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "\"<>")[:80]
    return name or "upload"


def parse_spacing(text: Any) -> float | None:
    """The optional ``spacing_mm`` form field: absent/empty -> None; otherwise a positive finite number (400)."""
    from ..data.sample import positive_finite

    try:
        return positive_finite(text, "spacing_mm")
    except FetalCLIPError as exc:
        raise UploadError(400, str(exc)) from None


def decode(data: bytes, source: str, max_frames: int) -> Scan:
    """The frames of an upload (at most ``max_frames``, evenly spaced over a longer loop) and its spacing."""
    if not data:
        raise UploadError(400, "the upload is empty")
    kind, suffix = sniff(data)
    handle, path = tempfile.mkstemp(prefix="fetalclip-upload-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return _read(path, kind, source, max_frames)
    finally:
        os.unlink(path)


def _read(path: str, kind: str, source: str, max_frames: int) -> Scan:
    from ..data.readers import read_clip

    try:
        samples = read_clip(path, frames=f"even:{max_frames}")
    except ImageReadError as exc:
        raise UploadError(413 if "over the limit" in exc.reason else 422, f"{source}: {exc.reason}") from None
    except FetalCLIPError as exc:
        raise UploadError(422, f"{source}: {_without_path(str(exc), path)}") from None
    except MemoryError:
        raise UploadError(413, f"{source}: too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's surprise is still the upload's fault, not a 500
        raise UploadError(422, f"{source}: cannot decode ({type(exc).__name__})") from None
    if not samples:
        raise UploadError(422, f"{source}: no frames")
    spacing = samples[0].get("pixel_spacing_mm")
    return Scan([sample["image"] for sample in samples], spacing, kind, source)


def _without_path(message: str, path: str) -> str:
    # The temporary file's name means nothing to the client.
    return message.replace(f"{path}: ", "").replace(path, "upload")


__all__ = ["Scan", "UploadError", "decode", "parse_spacing", "safe_source", "sniff"]
