"""The ``sim:`` dataset spec and exporting a phantom set as PNGs plus a ``csv:`` manifest.

Spec: ``sim:N`` or ``sim:N,key=value,...`` with keys

    seed=S           generator seed (default 0); sample i depends only on (S, i) and the other keys
    size=PX          image width in pixels (default 256; height is 3/4 of it)
    classes=A+B+...  plane keys (brain, abdomen, femur, thorax, cervix, other) and/or brain sub-planes
                     (trans-thalamic, trans-cerebellum, trans-ventricular); ``classes=brain,femur`` also works,
                     since a bare word continues the list. Default: all six planes, brain as its three sub-planes.
    per_patient=K    consecutive images sharing one synthetic patient and gestational age (default 4)
    ga=A-B           gestational age range in whole weeks, A w 0 d to B w 6 d (default 14-38)
    overlay=P        probability of burned-in text, depth ruler and calipers (default 0.5)
    chd=P            share of patients with a heart defect (hypoplastic left ventricle or septal defect),
                     shown in their thorax views and named in those captions (default 0: none, no finding)

Records (labels, patient, age, spacing, caption) come from planning alone, so opening ``sim:100000`` lists
without rendering; pixels are rendered on ``__getitem__``, identical whether fetched alone or in a subset.
Exported sets are ordinary files: ``manifest.csv`` reads back with ``csv:DIR/manifest.csv`` everywhere.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..data.captions import NORMAL_HEART, template_caption
from ..data.datasets import Record, SampleDataset
from ..data.labels import canonical_label
from ..data.sample import make_sample
from ..errors import FetalCLIPError
from ..io import atomic_path, write_csv_atomic, write_json_atomic
from .render import RENDERER_VERSION, Plan, SimConfig, plan_sample, render_plan

MANIFEST_COLUMNS = (
    "path", "label", "patient", "pixel_spacing_mm", "ga_days", "hc_mm", "caption", "mask", "brain_plane", "finding",
)


def _class_name(name: str) -> str:
    key = canonical_label(name, "plane", strict=False)
    if key in ("brain", "abdomen", "femur", "thorax", "cervix", "other"):
        return key
    return canonical_label(name, "brain_plane", strict=False) or name


def split_spec(scheme: str, argument: str, unit: str) -> tuple[str, int, list[str]]:
    """``scheme:N,key=value,...`` -> (the spec as written, N, the option tokens); N must be a positive count."""
    spec = f"{scheme}:{argument}"
    head, *tokens = [t.strip() for t in argument.split(",")]
    try:
        n = int(head)
    except ValueError:
        raise FetalCLIPError(f"{spec}: expected the number of {unit} first, as in {scheme}:40,seed=1") from None
    if n < 1:
        raise FetalCLIPError(f"{spec}: the number of {unit} must be positive")
    return spec, n, tokens


def ga_days_of(weeks: str) -> tuple[int, int]:
    """``"20-30"`` (weeks) -> (140, 216): from the first day of the first week to the last day of the last."""
    lo, _, hi = weeks.partition("-")
    return int(float(lo) * 7), int(float(hi or lo) * 7) + 6


def parse_sim_spec(argument: str) -> tuple[int, SimConfig]:
    """``"200,seed=3,classes=brain+femur"`` -> (200, SimConfig(...)); errors name the spec."""
    spec, n, tokens = split_spec("sim", argument, "images")
    options: dict[str, Any] = {}
    last = None
    for token in tokens:
        if not token:
            continue
        if "=" not in token:
            if last != "classes":
                raise FetalCLIPError(f"{spec}: {token!r} is not key=value")
            options["classes"].append(token)
            continue
        key, value = (part.strip() for part in token.split("=", 1))
        last = key
        try:
            if key in ("seed", "size", "per_patient"):
                options[key] = int(value)
            elif key in ("overlay", "chd"):
                options[key] = float(value)
            elif key == "classes":
                options[key] = [c for c in value.split("+") if c]
            elif key == "ga":
                options["ga_days"] = ga_days_of(value)
            else:
                raise FetalCLIPError(
                    f"{spec}: unknown option {key!r}; known: seed, size, classes, per_patient, ga, overlay, chd"
                )
        except ValueError:
            raise FetalCLIPError(f"{spec}: bad value {value!r} for {key}") from None
    if "classes" in options:
        options["classes"] = tuple(_class_name(c) for c in options["classes"])
    try:
        return n, SimConfig(**options)
    except ValueError as exc:
        raise FetalCLIPError(f"{spec}: {exc}") from None


def config_dict(config: SimConfig) -> dict[str, Any]:
    return {**asdict(config), "classes": list(config.classes), "ga_days": list(config.ga_days)}


def plan_record(config: SimConfig, plan: Plan, config_json: dict[str, Any] | None = None) -> Record:
    """A dataset record (every sample field except pixels) from a plan."""
    metadata = {
        "dataset": "sim",
        "sim_index": plan.index,
        "sim_config": copy.deepcopy(config_json) if config_json is not None else config_dict(config),
        "pixel_spacing_224_mm": plan.spacing_224_mm,
        "mask_labels": dict(plan.labels),
        "measurements": dict(plan.measurements),
        "probe": plan.probe,
        "depth_mm": plan.depth_mm,
        "variant": plan.variant,
        "overlay": plan.overlay is not None,
    }
    record: Record = {
        "source": f"sim://{config.seed}/{plan.index}",
        "frame_index": None,
        "pixel_spacing_mm": plan.spacing_mm,
        "label": plan.label,
        "brain_plane": plan.brain_plane,
        "patient": plan.patient,
        "ga_days": plan.ga_days,
        "metadata": metadata,
    }
    if plan.label == "brain":
        record["hc_mm"] = plan.measurements["hc_mm"]
    if plan.heart is not None:
        record["finding"] = plan.heart.defect or NORMAL_HEART
    caption_rng = np.random.default_rng([config.seed, 3, plan.index])
    record["caption"] = template_caption({**record, "pixel_spacing_224_mm": plan.spacing_224_mm}, caption_rng)
    return record


def render_record(config: SimConfig, record: Record) -> dict[str, Any]:
    """The full sample for a record: rendered image and mask plus the record's fields."""
    index = record["metadata"]["sim_index"]
    image, mask = render_plan(plan_sample(config, index), (config.seed, 2, index))
    fields = {key: copy.deepcopy(value) for key, value in record.items() if key not in ("source",)}
    sample = make_sample(image, record["source"], mask=mask, **fields)
    # The 224-input spacing is what captions and age prompts use; carried beside the original spacing.
    sample["pixel_spacing_224_mm"] = record["metadata"]["pixel_spacing_224_mm"]
    return sample


def render_sample(index: int, config: SimConfig | None = None) -> dict[str, Any]:
    """Sample ``index`` of the phantom set drawn with ``config`` (default settings when omitted)."""
    config = config or SimConfig()
    return render_record(config, plan_record(config, plan_sample(config, index)))


def sim_dataset(n: int, config: SimConfig | None = None, name: str | None = None) -> SampleDataset:
    config = config or SimConfig()
    config_json = config_dict(config)
    records = [plan_record(config, plan_sample(config, i), config_json) for i in range(n)]
    return SampleDataset(name or f"sim:{n},seed={config.seed}", records, lambda record: render_record(config, record))


def open_sim(argument: str) -> SampleDataset:
    n, config = parse_sim_spec(argument)
    return sim_dataset(n, config, name=f"sim:{argument}")


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def write_phantom(
    n: int,
    config: SimConfig,
    out: str | Path,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Render ``n`` images into ``out``: ``images/``, ``masks/``, ``manifest.csv`` and ``sim.json``.

    The manifest is written last (atomically): a folder without one is an interrupted export, never a
    silently short dataset.
    """
    out = Path(out)
    rows = []
    counts: dict[str, int] = {}
    indices: Iterable[int] = range(n)
    if progress is not None:
        indices = progress(indices)
    for index in indices:
        sample = render_sample(index, config)
        stem = f"{index:06d}.png"
        save_png(sample["image"], out / "images" / stem)
        save_png(sample["mask"], out / "masks" / stem)
        key = sample["brain_plane"] if sample["label"] == "brain" else sample["label"]
        counts[key] = counts.get(key, 0) + 1
        rows.append(
            {
                "path": f"images/{stem}",
                "label": sample["label"],
                "patient": sample["patient"],
                "pixel_spacing_mm": f"{sample['pixel_spacing_mm']:.6f}",
                "ga_days": f"{sample['ga_days']:g}",
                "hc_mm": f"{sample['hc_mm']:.3f}" if sample.get("hc_mm") is not None else "",
                "caption": sample["caption"],
                "mask": f"masks/{stem}",
                "brain_plane": sample["brain_plane"] or "",
                "finding": sample.get("finding") or "",
            }
        )
    summary = {
        "n": n,
        "renderer": RENDERER_VERSION,
        "config": config_dict(config),
        "counts": dict(sorted(counts.items())),
        "patients": len({row["patient"] for row in rows}),
        "mask_labels": _mask_labels(),
        "manifest": "manifest.csv",
        "spec": f"csv:{out / 'manifest.csv'}",
    }
    write_json_atomic(out / "sim.json", summary)
    write_csv_atomic(out / "manifest.csv", MANIFEST_COLUMNS, rows)
    return summary


def _mask_labels() -> dict[str, dict[str, int]]:
    from .anatomy import ABDOMEN_LABELS, CERVIX_LABELS, FEMUR_LABELS, HEAD_LABELS, THORAX_LABELS

    return {"brain": HEAD_LABELS, "abdomen": ABDOMEN_LABELS, "thorax": THORAX_LABELS, "femur": FEMUR_LABELS,
            "cervix": CERVIX_LABELS, "other": {}}


__all__ = ["MANIFEST_COLUMNS", "open_sim", "parse_sim_spec", "render_sample", "sim_dataset", "write_phantom"]
