"""The sample dictionary: the one shape every reader and dataset adapter yields.

Dictionaries (as in MONAI) let image, masks and metadata move together through readers, cleaning, captions,
shards and tasks without each stage knowing every field. Required keys are always present (``None`` when
unknown, never a guess); optional keys appear only when a source provides them.

Required:
    image                 np.ndarray, HxW (grayscale) or HxWx3 (RGB), as decoded (uint8; uint16 for 16-bit files)
    source                str: file path or stable id (never a patient-identifying attribute)
    frame_index           int | None: frame within a cine loop / multi-frame file
    pixel_spacing_mm      float | None: mm per pixel of ``image``
    pixel_spacing_224_mm  float | None: mm per pixel of the 224x224 model input after square zero-padding,
                          ``pixel_spacing_mm * max(H, W) / 224``; always computed here from the pixels
    label                 str | None: canonical class key (see ``fetalclip.data.labels``)
    patient               str | None: patient/subject id used for splits
    metadata              dict: anything else worth keeping (JSON-serialisable)
Optional:
    brain_plane, view (a finer view name than ``label``, e.g. ``three_vessel``, for captions), ga_days, hc_mm,
    caption, mask (np.ndarray uint8 label map, same HxW as image), split, finding (a diagnosis the report
    states, e.g. ``hlhs``; captions name it)

Physical quantities (pixel spacing, HC, GA) are checked where they enter: ``positive_finite`` is the one
rule, used by the manifest adapters (which know the file, line and column) and again by ``make_sample`` (which
every reader, DICOM included, goes through), so a zero, negative, NaN or infinite spacing never reaches a
caption, a GA prediction or a shard's JSON.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..errors import FetalCLIPError, ImageReadError

REQUIRED_KEYS = (
    "image", "source", "frame_index", "pixel_spacing_mm", "pixel_spacing_224_mm", "label", "patient", "metadata",
)
OPTIONAL_KEYS = ("brain_plane", "view", "ga_days", "hc_mm", "caption", "mask", "split", "finding")

MODEL_INPUT_SIZE = 224
MEASURED_KEYS = ("ga_days", "hc_mm")  # optional physical quantities: positive and finite when present


class InvalidValueError(FetalCLIPError, ValueError):
    """A physical quantity that is not a positive, finite number.

    Callers that know the file and row catch it and say so; one that does not still ends, at the command line,
    as a one-line error rather than a traceback (it is a ``FetalCLIPError``) or a silent NaN.
    """


def positive_finite(value: Any, field: str) -> float | None:
    """``value`` as a float, ``None`` when absent; an ``InvalidValueError`` naming ``field`` unless > 0 and finite.

    Text is accepted (manifests are CSV); booleans are not numbers here, whatever Python thinks.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidValueError(f"{field} {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidValueError(f"{field} {value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise InvalidValueError(f"{field} {value!r} must be a positive, finite number")
    return number


def spacing_224(pixel_spacing_mm: float | None, *, width: int, height: int, size: int = MODEL_INPUT_SIZE) -> float | None:
    """mm per pixel of the ``size`` x ``size`` model input made by zero-padding to a square and resizing.

    ``pixel_spacing_mm * max(width, height) / size``; ``None`` stays ``None``, and a spacing that is not a
    positive, finite number is an ``InvalidValueError``. ``width`` and ``height`` are keyword-only because this
    rule once existed twice, with them in opposite orders.
    """
    spacing = positive_finite(pixel_spacing_mm, "pixel_spacing_mm")
    if spacing is None:
        return None
    return spacing * max(int(height), int(width)) / size


def patient_id(record: Mapping[str, Any]) -> str:
    """The id that splits keep together: the record's patient, else its source (an image is its own patient)."""
    patient = record.get("patient")
    return str(patient if patient not in (None, "") else record.get("source"))


def domain_of(record: Mapping[str, Any], field: str) -> str | None:
    """The record's domain (machine, site, ...): its ``field``, else its metadata's (``None`` when neither has it)."""
    value = record.get(field)
    if value is None:
        value = (record.get("metadata") or {}).get(field)
    return None if value in (None, "") else str(value).strip()


def make_sample(
    image: np.ndarray,
    source: str,
    *,
    frame_index: int | None = None,
    pixel_spacing_mm: float | None = None,
    pixel_spacing_224_mm: float | None = None,
    label: str | None = None,
    patient: str | None = None,
    metadata: dict[str, Any] | None = None,
    **optional: Any,
) -> dict[str, Any]:
    # ``pixel_spacing_224_mm`` is accepted (records carry it) but recomputed from the decoded pixels, which
    # are the authority on the image size.
    del pixel_spacing_224_mm
    unknown = set(optional) - set(OPTIONAL_KEYS)
    if unknown:
        raise KeyError(f"unknown sample keys {sorted(unknown)}; optional keys are {OPTIONAL_KEYS}")
    try:
        spacing = positive_finite(pixel_spacing_mm, "pixel_spacing_mm")
    except ValueError as exc:
        # Raised as a read error of this file, so ``--skip-bad`` counts it like any other unusable input.
        raise ImageReadError(source, str(exc)) from None
    for name in MEASURED_KEYS:
        try:
            positive_finite(optional.get(name), name)  # checked only: the value is kept as the source gave it
        except ValueError as exc:
            raise ImageReadError(source, str(exc)) from None
    return {
        "image": image,
        "source": str(source),
        "frame_index": None if frame_index is None else int(frame_index),
        "pixel_spacing_mm": spacing,
        "pixel_spacing_224_mm": spacing_224(spacing, width=image.shape[1], height=image.shape[0]),
        "label": label,
        "patient": None if patient is None else str(patient),
        "metadata": dict(metadata or {}),
        **optional,
    }
