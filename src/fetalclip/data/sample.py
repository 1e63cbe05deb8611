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
"""

from __future__ import annotations

from typing import Any

import numpy as np

REQUIRED_KEYS = (
    "image", "source", "frame_index", "pixel_spacing_mm", "pixel_spacing_224_mm", "label", "patient", "metadata",
)
OPTIONAL_KEYS = ("brain_plane", "view", "ga_days", "hc_mm", "caption", "mask", "split", "finding")

MODEL_INPUT_SIZE = 224


def spacing_224(pixel_spacing_mm: float | None, height: int, width: int, size: int = MODEL_INPUT_SIZE) -> float | None:
    """mm per pixel of the ``size`` x ``size`` model input made by zero-padding to a square and resizing."""
    if pixel_spacing_mm is None:
        return None
    return float(pixel_spacing_mm) * max(int(height), int(width)) / size


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
    spacing = None if pixel_spacing_mm is None else float(pixel_spacing_mm)
    return {
        "image": image,
        "source": str(source),
        "frame_index": None if frame_index is None else int(frame_index),
        "pixel_spacing_mm": spacing,
        "pixel_spacing_224_mm": spacing_224(spacing, image.shape[0], image.shape[1]),
        "label": label,
        "patient": None if patient is None else str(patient),
        "metadata": dict(metadata or {}),
        **optional,
    }
