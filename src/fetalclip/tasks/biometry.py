"""Head biometry: HC (Ramanujan), BPD, OFD in mm and GA from HC, measured on label maps.

Biometry measures; it does not segment. Its input is a label map per image at the image's own size: the
dataset's masks (HC18's ground-truth ellipses), or what ``tasks.segmentation`` predicted, handed over as a
function ``label_maps(dataset) -> [HxW]`` so this module never imports the segmenter (and the segmenter never
imports it). The ellipse geometry is ``tasks.ellipse``'s; its names are re-exported here for callers that
measure heads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FetalCLIPError
from ..growth import ga_from_hc, hadlock_ga_from_hc
from .ellipse import (  # noqa: F401  (re-exported: the measuring API in one import)
    Ellipse,
    fit_ellipse,
    fit_mask,
    fit_outline,
    head_mask_from_outline,
    largest_component,
    mask_boundary_points,
    outline_points,
    ramanujan_circumference,
    rasterize_ellipse,
)

LabelMaps = Callable[[Any], Sequence[np.ndarray]]  # dataset -> one label map per record, at original size


# -- measurements ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadMeasurement:
    ellipse: Ellipse  # pixels of the measured image
    pixel_spacing_mm: float
    hc_mm: float
    bpd_mm: float
    ofd_mm: float
    ga_who_days: float
    ga_hadlock_days: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ellipse"] = self.ellipse.to_dict()
        return out


def measure_ellipse(ellipse: Ellipse, pixel_spacing_mm: float) -> HeadMeasurement:
    """HC (Ramanujan), BPD (minor axis), OFD (major axis) in mm, and GA from HC (WHO median, Hadlock).

    BPD and OFD are the ellipse's axes: the fitted ellipse stands for the outer skull contour, as in HC18.
    """
    if pixel_spacing_mm is None or not pixel_spacing_mm > 0:
        raise FetalCLIPError(f"head biometry needs a positive pixel spacing in mm; got {pixel_spacing_mm!r}")
    hc = ellipse.circumference() * pixel_spacing_mm
    return HeadMeasurement(
        ellipse=ellipse,
        pixel_spacing_mm=float(pixel_spacing_mm),
        hc_mm=float(hc),
        bpd_mm=float(2 * ellipse.b * pixel_spacing_mm),
        ofd_mm=float(2 * ellipse.a * pixel_spacing_mm),
        ga_who_days=float(ga_from_hc(hc)),
        ga_hadlock_days=float(hadlock_ga_from_hc(hc)),
    )


def measure_head(mask: ArrayLike, pixel_spacing_mm: float) -> HeadMeasurement:
    """Measure a head segmentation (HxW, non-zero = head) of an image with the given mm per pixel."""
    return measure_ellipse(fit_mask(mask), pixel_spacing_mm)


# -- a whole dataset --------------------------------------------------------------------------------------------
def head_images(dataset) -> tuple[Any, int]:
    """The images biometry measures (labelled ``brain`` or unlabelled) and how many others were left out."""
    keep = [i for i, r in enumerate(dataset.records) if r.get("label") in (None, "brain")]
    if not keep:
        raise FetalCLIPError(f"{dataset.name}: no head (brain) images to measure")
    skipped = len(dataset) - len(keep)
    return (dataset.subset(keep) if skipped else dataset), skipped


def measure_dataset(dataset, label_maps: LabelMaps | None = None, progress: bool = False,
                    head_labels: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Measure every head image of ``dataset``: HC/BPD/OFD/GA per image and, with reference HCs, the HC18 metrics.

    ``label_maps``: a function giving the predicted label map of every record of the (head-only) dataset, e.g.
    a segmenter's; the images are measured on those. Without it the dataset's own masks are measured (for
    HC18, the ground-truth ellipses). Dice and Hausdorff compare the *fitted ellipse* with the ground-truth
    mask, as the challenge does. An image whose mask yields no ellipse is a failure row, counted, and left out
    of the means. The head is every foreground label (``head_labels=None``: structures drawn inside the skull
    belong to the head) and only images labelled ``brain`` (or unlabelled) are measured; others are counted
    as skipped.
    """
    from ..metrics import dice, hausdorff_mm
    from ..progress import progress_bar
    from .segmentation_masks import sample_mask

    def head(label_map: np.ndarray) -> np.ndarray:
        return label_map > 0 if head_labels is None else np.isin(label_map, head_labels)

    dataset, skipped = head_images(dataset)
    predicted = list(label_maps(dataset)) if label_maps is not None else None
    rows = []
    for i in progress_bar(range(len(dataset)), desc="biometry", disable=not progress):
        sample = dataset[i]
        height, width = sample["image"].shape[:2]
        row: dict[str, Any] = {"source": sample["source"], "patient": sample.get("patient"), "ref_hc_mm": sample.get("hc_mm")}
        try:
            truth = sample_mask(sample)
        except FetalCLIPError:
            truth = None
        if predicted is not None:
            mask = head(predicted[i])
        elif truth is not None:
            mask = head(truth)
        else:
            raise FetalCLIPError(f"{sample['source']}: no mask to measure and no --segmenter given")
        try:
            measurement = measure_head(mask, sample.get("pixel_spacing_mm"))
        except FetalCLIPError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        row.update({k: v for k, v in measurement.to_dict().items() if k != "pixel_spacing_mm"})
        if row["ref_hc_mm"] is not None:
            row["hc_diff_mm"] = row["hc_mm"] - row["ref_hc_mm"]
        if truth is not None and predicted is not None:
            fitted = rasterize_ellipse(measurement.ellipse, (height, width))
            row["dice"] = dice(fitted, head(truth))
            row["hausdorff_mm"] = hausdorff_mm(fitted, head(truth), measurement.pixel_spacing_mm)
        rows.append(row)
    good = [r for r in rows if "error" not in r]
    diffs = np.array([r["hc_diff_mm"] for r in good if "hc_diff_mm" in r], dtype=np.float64)
    result: dict[str, Any] = {
        "task": "hc-biometry",
        "source_of_masks": "segmenter" if predicted is not None else "dataset",
        "n": len(rows),
        "n_failed": len(rows) - len(good),
        "n_skipped_not_head": skipped,
        "hc_mean_abs_diff_mm": float(np.abs(diffs).mean()) if diffs.size else None,
        "hc_mean_diff_mm": float(diffs.mean()) if diffs.size else None,
        "hc_sd_diff_mm": float(diffs.std(ddof=1)) if diffs.size > 1 else None,
    }
    dices = [r["dice"] for r in good if "dice" in r]
    hds = [r["hausdorff_mm"] for r in good if "hausdorff_mm" in r and math.isfinite(r["hausdorff_mm"])]
    result["dice"] = float(np.mean(dices)) if dices else None
    result["hausdorff_mm"] = float(np.mean(hds)) if hds else None
    result["rows"] = rows
    return result
