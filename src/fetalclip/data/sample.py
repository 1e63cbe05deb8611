"""The sample dictionary: the one shape every reader and dataset adapter yields.

Dictionaries (as in MONAI) let image, masks and metadata move together through readers, cleaning, captions,
shards and tasks without each stage knowing every field. Required keys are always present (``None`` when
unknown, never a guess); optional keys appear only when a source provides them.

Required:
    image             np.ndarray, uint8, HxW (grayscale) or HxWx3 (RGB), as decoded
    source            str: file path or stable id (never a patient-identifying attribute)
    frame_index       int | None: frame within a cine loop / multi-frame file
    pixel_spacing_mm  float | None: mm per pixel of ``image``
    label             str | None: canonical class key (see ``fetalclip.data.labels`` once it exists)
    patient           str | None: patient/subject id used for splits
    metadata          dict: anything else worth keeping (JSON-serialisable)
Optional:
    brain_plane, ga_days, hc_mm, caption, mask (np.ndarray uint8 label map, same HxW as image), split
"""

from __future__ import annotations

from typing import Any

import numpy as np

REQUIRED_KEYS = ("image", "source", "frame_index", "pixel_spacing_mm", "label", "patient", "metadata")
OPTIONAL_KEYS = ("brain_plane", "ga_days", "hc_mm", "caption", "mask", "split")


def make_sample(
    image: np.ndarray,
    source: str,
    *,
    frame_index: int | None = None,
    pixel_spacing_mm: float | None = None,
    label: str | None = None,
    patient: str | None = None,
    metadata: dict[str, Any] | None = None,
    **optional: Any,
) -> dict[str, Any]:
    unknown = set(optional) - set(OPTIONAL_KEYS)
    if unknown:
        raise KeyError(f"unknown sample keys {sorted(unknown)}; optional keys are {OPTIONAL_KEYS}")
    return {
        "image": image,
        "source": str(source),
        "frame_index": frame_index,
        "pixel_spacing_mm": None if pixel_spacing_mm is None else float(pixel_spacing_mm),
        "label": label,
        "patient": None if patient is None else str(patient),
        "metadata": dict(metadata or {}),
        **optional,
    }
