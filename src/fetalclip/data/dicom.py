"""DICOM ultrasound via pydicom: single- and multi-frame files, colour models, compression, pixel spacing.

Only technical attributes are ever copied out of a DICOM header: the reader builds its metadata from an
allow-list (modality, manufacturer, photometric interpretation, transfer syntax, frame timing, spacing
source), so names, ids, dates, institutions and UIDs cannot leak into captions, shards, logs or JSON through
it. The patient id used for splits is therefore ``None`` here; a manifest that knows a pseudonymous id
supplies it. Spacing comes from the ultrasound region calibration (``SequenceOfUltrasoundRegions``, physical
units cm) first, because that is what scanners write, then ``PixelSpacing``; otherwise it is ``None``, never
a guess. Frames are decoded one at a time (``pydicom.pixels.iter_pixels``), so a long cine loop is never
fully in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ImageReadError
from .frames import FrameSelection
from .sample import make_sample

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15).
_UNITS_CM = 3
# Anisotropy beyond this relative difference makes a single spacing number wrong for measurements.
_ISOTROPY_TOLERANCE = 0.01


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

    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise ImageReadError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc
    return ds


def _check_decodable(path: Path, ds) -> None:
    from pydicom.pixels import get_decoder

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) and "Rows" not in ds:
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
    ds = _read_header(Path(path))
    return int(ds.get("NumberOfFrames", 1) or 1)


def read_dicom(path: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> Iterator[dict[str, Any]]:
    """Samples for the selected frames of a DICOM file (a single-frame file yields one, ``frame_index`` None)."""
    from pydicom.pixels import iter_pixels

    path = Path(path)
    ds = _read_header(path)
    _check_decodable(path, ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
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
    try:
        for index, frame in zip(indices, iter_pixels(path, indices=indices, as_rgb=True)):
            image = _to_display(frame, ds)
            yield make_sample(image, str(path), frame_index=index if n_frames > 1 else None, **fields)
    except ImageReadError:
        raise
    except Exception as exc:  # truncated pixel data, bad encapsulation, plugin failures
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from exc
