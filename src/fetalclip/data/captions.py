"""Template captions from sample metadata, for pretraining text.

A caption names the view, the gestational age as "W weeks and D days" when known, and the 224-input pixel
spacing to two decimals, in one sentence, the shape the published captions had. Phrasings are chosen by a
seeded generator so a shard set is reproducible. ``CaptionFn`` is the hook for anything smarter (an LLM
rewrite done offline, a clinic's own wording): any callable ``(sample, rng) -> str``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

CaptionFn = Callable[[dict[str, Any], np.random.Generator], str]

VIEW_NAMES: dict[str, str] = {
    "abdomen": "fetal abdomen",
    "brain": "fetal brain",
    "femur": "fetal femur",
    "thorax": "fetal thorax with the heart",
    "cervix": "maternal cervix",
    "kidney": "fetal kidneys",
    "lips_nose": "fetal lips and nose",
    "profile": "fetal profile",
    "spine": "fetal spine",
    "other": "fetal anatomy",
    "trans-thalamic": "fetal brain in the trans-thalamic plane",
    "trans-cerebellum": "fetal brain in the trans-cerebellar plane",
    "trans-ventricular": "fetal brain in the trans-ventricular plane",
}

TEMPLATES = (
    "Ultrasound image of the {view}{ga}{spacing}.",
    "A fetal ultrasound scan showing the {view}{ga}{spacing}.",
    "Sonogram of the {view}{ga}{spacing}.",
)


def format_ga(ga_days: float) -> str:
    """``142`` -> ``"20 weeks and 2 days"``."""
    days = int(round(float(ga_days)))
    return f"{days // 7} weeks and {days % 7} days"


def view_name(sample: dict[str, Any]) -> str:
    key = sample.get("brain_plane") or sample.get("label") or "other"
    return VIEW_NAMES.get(key, str(key).replace("_", " "))


def template_caption(sample: dict[str, Any], rng: np.random.Generator) -> str:
    """One sentence from the sample's view, gestational age and 224-input pixel spacing."""
    ga = f" at {format_ga(sample['ga_days'])}" if sample.get("ga_days") is not None else ""
    spacing_224 = sample.get("pixel_spacing_224_mm")
    spacing = f", {spacing_224:.2f} mm per pixel" if spacing_224 is not None else ""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(view=view_name(sample), ga=ga, spacing=spacing)
