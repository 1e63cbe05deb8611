"""DICOM ultrasound via pydicom: single- and multi-frame files, colour models, compression, pixel spacing.

Only technical attributes are ever copied out of a DICOM header: the reader builds its metadata from an
allow-list (modality, manufacturer, photometric interpretation, transfer syntax, frame timing, spacing
source), so names, ids, dates, institutions and UIDs cannot leak into captions, shards, logs or JSON through
it. The patient id used for splits is therefore ``None`` here; a manifest that knows a pseudonymous id
supplies it. Spacing comes from the ultrasound region calibration (``SequenceOfUltrasoundRegions``, physical
units cm) first, because that is what scanners write, then ``PixelSpacing``; otherwise it is ``None``, never
a guess. Frames are decoded one at a time (``pydicom.pixels.iter_pixels``), so a long cine loop is never
fully in memory.

The header is trusted for nothing before it is checked: it is read with the pixel data left on disk, its
declared size (Rows x Columns x frames) must fit the readers' one pixel budget, and uncompressed pixel data
must be exactly as long as the header says (one odd-length pad byte allowed) and wholly present in the
file. Compressed data is checked by its decoder; where pydicom survives a disagreement with a warning (an
RLE segment longer than Rows x Columns, more frames than Number of Frames), that warning is an error here,
because the alternative is a silently cropped or mis-framed image.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ImageReadError
from .frames import FrameSelection
from .read_rules import check_pixel_budget, reading, require_file
from .sample import make_sample

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15).
_UNITS_CM = 3
# Anisotropy beyond this relative difference makes a single spacing number wrong for measurements.
_ISOTROPY_TOLERANCE = 0.01
# Header values longer than this stay on disk until used: the pixel data above all, whatever size it claims.
_DEFER_BYTES = 4096
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble) or a DICOM suffix."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    require_file(path)
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise ImageReadError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc
    return ds


def _frame_count(path: Path, ds) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        return int(value or 1)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"Number of Frames {value!r} is not a whole number") from None


def _pixel_element(ds):
    """The pixel data element, left deferred when it is (its value is then ``None``, its length and offset known)."""
    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    return ds.get_item(keyword, keep_deferred=True)


def _stored_pixel_bytes(path: Path, element) -> int | None:
    """Bytes of pixel data the file really holds, without reading them; ``None`` when encapsulated."""
    length = getattr(element, "length", None)  # a deferred value: its declared length and file offset
    if length is None:
        value = element.value
        return None if getattr(element, "is_undefined_length", False) or value is None else len(value)
    if length == _UNDEFINED_LENGTH:
        return None
    return min(length, max(0, path.stat().st_size - element.value_tell))


@contextmanager
def _encapsulated_data(path: Path, element) -> Iterator[Any]:
    """A seekable view of encapsulated pixel data (the file itself when the value was left on disk)."""
    import io

    if element.value is not None:
        yield io.BytesIO(element.value)
        return
    with open(path, "rb") as handle:
        handle.seek(element.value_tell)
        yield handle


def _check_fragments(path: Path, ds, element, n_frames: int) -> None:
    """Compressed frames the file holds, counted from its item headers (no data read), against the header."""
    from pydicom.encaps import parse_basic_offsets, parse_fragments
    from pydicom.uid import RLELossless

    with _encapsulated_data(path, element) as data:
        offsets = parse_basic_offsets(data)
        n_fragments = parse_fragments(data)[0]
    syntax = ds.file_meta.get("TransferSyntaxUID")
    # RLE puts each frame in exactly one fragment; other codecs may split a frame, never share one.
    if (syntax == RLELossless and n_fragments != n_frames) or n_fragments < n_frames:
        raise ImageReadError(path, f"header declares {n_frames} frame(s) but the pixel data holds {n_fragments} fragment(s)")
    if offsets and len(offsets) != n_frames:
        raise ImageReadError(path, f"header declares {n_frames} frame(s) but the offset table lists {len(offsets)}")


def _check_pixel_layout(path: Path, ds) -> None:
    """The declared size fits the budget and matches the pixel data the file holds."""
    from pydicom.pixels.utils import get_expected_length

    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise ImageReadError(path, "DICOM header gives no Rows/Columns for its pixel data")
    n_frames = _frame_count(path, ds)
    check_pixel_budget(path, int(columns), int(rows), n_frames)
    element = _pixel_element(ds)
    stored = _stored_pixel_bytes(path, element)
    if stored is None:
        _check_fragments(path, ds, element, n_frames)
        return
    expected = get_expected_length(ds, "bytes")
    if stored not in (expected, expected + expected % 2):
        raise ImageReadError(
            path, f"header declares {columns}x{rows} pixels x {n_frames} frame(s) = {expected:,} bytes of pixel data "
                  f"but the file holds {stored:,}"
        )


class _DecoderComplaints(logging.Handler):
    """What pydicom says (warns and logs) while decoding in this thread; its decoders run where they are called,
    so a thread-local list is exact even when several threads decode at once (the warnings module is not)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        said = getattr(self._local, "said", None)
        if said is not None:
            said.append(record.getMessage())
            if record.exc_info and isinstance(record.exc_info[1], MemoryError):
                # pydicom folds a plugin's exceptions into one RuntimeError, where a MemoryError reads as "".
                said.append(_OUT_OF_MEMORY)

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        self._local.said = said = []
        try:
            yield said
        finally:
            self._local.said = None


_OUT_OF_MEMORY = "\0out of memory"
_COMPLAINTS = _DecoderComplaints()
logging.getLogger("pydicom").addHandler(_COMPLAINTS)  # silent: it only listens while a frame is being decoded
# pydicom's wording for data that holds more than the header declares (it would crop or drop it and go on).
_EXCESS_SEGMENT = re.compile(r"(\d+) vs\. (\d+) bytes expected")
_EXCESS_FRAMES = re.compile(r"frames have been found in .*larger than the given .*Number of Frames")


def _refuse_excess_data(path: Path, said: list[str]) -> None:
    for message in said:
        segment = _EXCESS_SEGMENT.search(message)
        # One byte over is the pad byte of an odd-length segment; more is image the header does not declare.
        if segment and int(segment.group(1)) > int(segment.group(2)) + 1:
            raise ImageReadError(path, f"pixel data holds more than the header's Rows x Columns ({message})")
        if _EXCESS_FRAMES.search(message):
            raise ImageReadError(path, f"pixel data holds more frames than the header declares ({message})")


def _check_decodable(path: Path, ds) -> None:
    from pydicom.pixels import get_decoder

    if not any(tag in ds for tag in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "DICOM file holds no image (no pixel data)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        return
    name = f"{syntax.name} ({syntax})" if syntax.is_transfer_syntax else str(syntax)
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(path, f"transfer syntax {name} is not supported by pydicom") from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise ImageReadError(path, f"transfer syntax {name} cannot be decoded with the installed packages (needs {options})")


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def dicom_spacing(ds) -> tuple[float | None, dict[str, Any]]:
    """(isotropic mm per pixel or None, metadata saying where it came from)."""
    candidates = []
    for region in ds.get("SequenceOfUltrasoundRegions", None) or []:
        if region.get("PhysicalUnitsXDirection") != _UNITS_CM or region.get("PhysicalUnitsYDirection") != _UNITS_CM:
            continue
        dx, dy = _float(region.get("PhysicalDeltaX")), _float(region.get("PhysicalDeltaY"))
        if dx is None or dy is None:
            continue
        area = 0
        bounds = [region.get(k) for k in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if all(b is not None for b in bounds):
            area = (int(bounds[2]) - int(bounds[0]) + 1) * (int(bounds[3]) - int(bounds[1]) + 1)
        candidates.append((area, dx * 10.0, dy * 10.0))  # cm -> mm
    if candidates:
        # Several calibrated regions (e.g. B-mode beside an M-mode strip): the largest is the anatomy.
        _, sx, sy = max(candidates, key=lambda c: c[0])
        source = "ultrasound_region"
    elif "PixelSpacing" in ds and ds.PixelSpacing is not None and len(ds.PixelSpacing) == 2:
        sy, sx = (_float(v) for v in ds.PixelSpacing)  # PixelSpacing is (row, column)
        if sx is None or sy is None:
            return None, {"spacing_source": None}
        source = "pixel_spacing"
    else:
        return None, {"spacing_source": None}
    info: dict[str, Any] = {"spacing_source": source, "pixel_spacing_xy_mm": [sx, sy]}
    if abs(sx - sy) > _ISOTROPY_TOLERANCE * max(sx, sy):
        info["spacing_note"] = "anisotropic pixels: no single spacing"
        return None, info
    return (sx + sy) / 2.0, info


def _technical_metadata(ds) -> dict[str, Any]:
    """The allow-listed, non-identifying header fields."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": ds.get("Modality"),
        "manufacturer": ds.get("Manufacturer"),
        "manufacturer_model": ds.get("ManufacturerModelName"),
        "photometric_interpretation": ds.get("PhotometricInterpretation"),
        "transfer_syntax": syntax.name if syntax is not None and syntax.is_transfer_syntax else None,
        "number_of_frames": int(ds.get("NumberOfFrames", 1) or 1),
        "bits_stored": ds.get("BitsStored"),
        "frame_time_ms": _float(ds.get("FrameTime")),
    }
    return {key: (str(value) if value is not None and not isinstance(value, (int, float)) else value) for key, value in meta.items()}


def _to_display(frame: np.ndarray, ds) -> np.ndarray:
    """Decoded frame -> uint8 (8-bit sources) or full-range uint16 grey, or uint8 RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(frame, ds)
        # LUT entries are 8 or 16 bit; scale to 8 bit by the LUT's own range.
        top = 255 if rgb.max() <= 255 else 65535
        return np.round(rgb.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if frame.ndim == 3:  # RGB (pydicom has already converted YBR_* to RGB)
        if frame.dtype != np.uint8:
            frame = np.round(frame.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
        return np.ascontiguousarray(frame)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:  # signed: move to 0..2^bits-1
        frame = frame.astype(np.int64) + 2 ** (bits - 1)
    frame = np.clip(frame.astype(np.int64), 0, 2**bits - 1)
    if photometric == "MONOCHROME1":  # 0 is white
        frame = (2**bits - 1) - frame
    if bits <= 8:
        return frame.astype(np.uint8)
    # Deeper grey is scaled to the full 16-bit range so every 16-bit image converts to 8 bits the same way.
    return (frame << (16 - bits)).astype(np.uint16) if bits < 16 else frame.astype(np.uint16)


def dicom_frame_count(path: str | os.PathLike) -> int:
    path = Path(path)
    ds = _read_header(path)
    with reading(path):
        _check_decodable(path, ds)
        _check_pixel_layout(path, ds)
    return _frame_count(path, ds)


def read_dicom(path: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> Iterator[dict[str, Any]]:
    """Samples for the selected frames of a DICOM file (a single-frame file yields one, ``frame_index`` None)."""
    path = Path(path)
    ds = _read_header(path)
    with reading(path):
        _check_decodable(path, ds)
        _check_pixel_layout(path, ds)
        n_frames = _frame_count(path, ds)
        try:
            indices = FrameSelection.parse(frames).select(n_frames)
        except IndexError as exc:
            raise ImageReadError(path, str(exc)) from None
        spacing, spacing_info = dicom_spacing(ds)
        meta = {**_technical_metadata(ds), **spacing_info}
    fields = dict(fields)
    if fields.get("pixel_spacing_mm") is None:
        fields["pixel_spacing_mm"] = spacing
    fields["metadata"] = {**meta, **(fields.get("metadata") or {})}
    fields.pop("frame_index", None)
    for index, image in zip(indices, _decoded_frames(path, ds, indices)):
        yield make_sample(image, str(path), frame_index=index if n_frames > 1 else None, **fields)


def _decoded_frames(path: Path, ds, indices: list[int]) -> Iterator[np.ndarray]:
    """The ``indices`` frames as display arrays, one decoded at a time; pydicom's size complaints are errors."""
    from pydicom.pixels import iter_pixels

    with reading(path):
        frames = iter_pixels(path, indices=indices, as_rgb=True)
    for _ in indices:
        # Only the decoding step runs inside the boundary: the caller's work between frames is not ours to judge.
        with reading(path), _COMPLAINTS.collect() as said:
            try:
                frame = next(frames, None)
            except Exception:
                if _OUT_OF_MEMORY in said:
                    raise MemoryError from None
                raise
            _refuse_excess_data(path, said)
            if frame is None:
                raise ImageReadError(path, "pixel data ends before the frames the header declares")
            image = _to_display(frame, ds)
        yield image
