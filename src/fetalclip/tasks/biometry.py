"""Head biometry from a segmentation: ellipse fit, HC (Ramanujan), BPD, OFD in mm, and GA from HC.

This module owns ellipse geometry for the whole project. The design choice: every measurement goes through
one direct least-squares ellipse fit (Fitzgibbon's constraint, solved the numerically stable way of Halir and
Flusser) on *boundary points*, never on pixel counts. For a mask the boundary points are the midpoints between
each pair of 4-adjacent pixels that differ (inside/outside): the true edge lies between those two pixel
centres, so the points are unbiased and the fitted ellipse neither grows nor shrinks by half a pixel. For an
HC18 annotation (a thin drawn outline) the points are the outline pixels themselves, whose mean line is the
ellipse the challenge measured; fitting them reproduces the CSV's HC, which the tests check on the real data.

The filled head mask of an HC18 image is that fitted ellipse rasterised (pixel centres inside), not the hole-
filled outline: filling would put the outline's own width inside the mask and bias HC upward by about its
width times pi.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FetalCLIPError
from ..growth import ga_from_hc, hadlock_ga_from_hc


@dataclass(frozen=True)
class Ellipse:
    """Centre (x, y) in pixels, semi-axes ``a >= b`` in pixels, ``angle`` of the ``a`` axis in radians from +x."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    def circumference(self) -> float:
        return ramanujan_circumference(self.a, self.b)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ramanujan_circumference(a: float | ArrayLike, b: float | ArrayLike) -> float | np.ndarray:
    """Ramanujan's first approximation of an ellipse's perimeter from its semi-axes (exact for circles)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    value = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    return float(value) if value.ndim == 0 else value


def fit_ellipse(points: ArrayLike) -> Ellipse:
    """Direct least-squares ellipse through ``points`` (``[N, 2]`` as x, y); at least 6 spread points."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 6:
        raise FetalCLIPError(f"ellipse fit needs at least 6 points as [N, 2]; got shape {pts.shape}")
    # Centre and scale first: the scatter matrices of raw pixel coordinates (~1e3) are badly conditioned.
    mean = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - mean) ** 2).sum(axis=1).mean())) or 1.0
    x, y = ((pts - mean) / scale).T
    d1 = np.column_stack([x * x, x * y, y * y])
    d2 = np.column_stack([x, y, np.ones_like(x)])
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        raise FetalCLIPError("ellipse fit: points are degenerate (collinear or repeated)") from None
    m = s1 + s2 @ t
    # Multiply by the inverse of the constraint matrix [[0,0,2],[0,-1,0],[2,0,0]] (4ac - b^2 = 1).
    m = np.vstack([m[2] / 2.0, -m[1], m[0] / 2.0])
    _, vectors = np.linalg.eig(m)
    vectors = np.real(vectors)
    condition = 4 * vectors[0] * vectors[2] - vectors[1] ** 2
    candidates = np.flatnonzero(condition > 0)
    if candidates.size == 0:
        raise FetalCLIPError("ellipse fit: points do not describe an ellipse")
    a1 = vectors[:, candidates[0]]
    conic = np.concatenate([a1, t @ a1])
    ellipse = _conic_to_ellipse(conic)
    return Ellipse(
        cx=ellipse.cx * scale + mean[0],
        cy=ellipse.cy * scale + mean[1],
        a=ellipse.a * scale,
        b=ellipse.b * scale,
        angle=ellipse.angle,
    )


def _conic_to_ellipse(conic: np.ndarray) -> Ellipse:
    A, B, C, D, E, F = conic
    quadratic = np.array([[A, B / 2], [B / 2, C]])
    try:
        cx, cy = np.linalg.solve(2 * quadratic, [-D, -E])
    except np.linalg.LinAlgError:
        raise FetalCLIPError("ellipse fit: conic has no centre") from None
    f0 = A * cx * cx + B * cx * cy + C * cy * cy + D * cx + E * cy + F
    values, vectors = np.linalg.eigh(quadratic)
    with np.errstate(invalid="ignore", divide="ignore"):
        axes = np.sqrt(-f0 / values)
    if not np.all(np.isfinite(axes)) or np.any(axes <= 0):
        raise FetalCLIPError("ellipse fit: conic is not a real ellipse")
    major = int(np.argmax(axes))
    direction = vectors[:, major]
    angle = math.atan2(direction[1], direction[0])
    # Keep the angle in (-pi/2, pi/2]: an axis has no sign.
    if angle <= -math.pi / 2:
        angle += math.pi
    elif angle > math.pi / 2:
        angle -= math.pi
    return Ellipse(float(cx), float(cy), float(axes[major]), float(axes[1 - major]), float(angle))


# -- points from pictures -------------------------------------------------------------------------------------
def outline_points(outline: ArrayLike) -> np.ndarray:
    """Pixel centres (x, y) of a drawn outline (any non-zero pixel)."""
    ys, xs = np.nonzero(np.asarray(outline))
    return np.column_stack([xs, ys]).astype(np.float64)


def mask_boundary_points(mask: ArrayLike, include_image_border: bool = False) -> np.ndarray:
    """Midpoints between 4-adjacent inside/outside pixel pairs: unbiased sub-pixel edge points (x, y).

    Where the mask runs into the image border, the border is where the picture ends, not where the head
    does: those points are left out (unless ``include_image_border``), so a head cut by the field of view is
    still fitted by its visible skull.
    """
    mask = np.asarray(mask).astype(bool)
    inside = np.pad(mask, 1)
    ys, xs = np.nonzero(inside[:, 1:] != inside[:, :-1])
    horizontal = np.column_stack([xs + 0.5 - 1, ys - 1.0])
    ys, xs = np.nonzero(inside[1:, :] != inside[:-1, :])
    vertical = np.column_stack([xs - 1.0, ys + 0.5 - 1])
    points = np.concatenate([horizontal, vertical]).astype(np.float64)
    if not include_image_border:
        height, width = mask.shape
        on_border = (points[:, 0] < 0) | (points[:, 0] > width - 1) | (points[:, 1] < 0) | (points[:, 1] > height - 1)
        points = points[~on_border]
    return points


def largest_component(mask: ArrayLike) -> np.ndarray:
    """The largest 8-connected foreground component with its holes filled (a head is one solid blob)."""
    from scipy import ndimage

    mask = np.asarray(mask).astype(bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def rasterize_ellipse(ellipse: Ellipse, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask (1 inside) of the pixels whose centres lie inside ``ellipse``."""
    height, width = shape
    out = np.zeros((height, width), dtype=np.uint8)
    # Only the ellipse's bounding box can be inside: evaluate there (an HC18 head covers a fraction of the image).
    reach = ellipse.a + 1.0
    x0, x1 = max(0, int(math.floor(ellipse.cx - reach))), min(width, int(math.ceil(ellipse.cx + reach)) + 1)
    y0, y1 = max(0, int(math.floor(ellipse.cy - reach))), min(height, int(math.ceil(ellipse.cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    dx, dy = xs - ellipse.cx, ys - ellipse.cy
    u = (dx * cos + dy * sin) / ellipse.a
    v = (-dx * sin + dy * cos) / ellipse.b
    out[y0:y1, x0:x1] = (u * u + v * v) <= 1.0
    return out


def fit_mask(mask: ArrayLike, clean: bool = True) -> Ellipse:
    """Ellipse through the boundary of ``mask`` (its largest component, holes filled, when ``clean``)."""
    mask = np.asarray(mask).astype(bool)
    if clean:
        mask = largest_component(mask)
    if mask.sum() < 6:
        raise FetalCLIPError("ellipse fit: mask is empty or too small")
    return fit_ellipse(mask_boundary_points(mask))


def fit_outline(outline: ArrayLike) -> Ellipse:
    """Ellipse through the pixels of a drawn outline (an HC18 annotation)."""
    return fit_ellipse(outline_points(outline))


def head_mask_from_outline(outline: ArrayLike) -> np.ndarray:
    """Filled head mask (uint8, 1 = head) of an HC18-style outline: its fitted ellipse rasterised."""
    outline = np.asarray(outline)
    return rasterize_ellipse(fit_outline(outline), outline.shape[:2])


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
def measure_dataset(dataset, segmenter=None, cache=None, progress: bool = False, head_labels: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Measure every image of ``dataset``: HC/BPD/OFD/GA per image and, with reference HCs, the HC18 metrics.

    ``segmenter`` = (decoder, taps, working size) from a segmentation probe, with ``cache`` the feature cache of its encoder:
    images are segmented first. Without it the dataset's own masks are measured (for HC18, the ground-truth
    ellipses). Dice and Hausdorff compare the *fitted ellipse* with the ground-truth mask, as the challenge does.
    An image whose mask yields no ellipse is a failure row, counted, and left out of the means. The head is
    every foreground label (``head_labels=None``: structures drawn inside the skull belong to the head) and
    only images labelled ``brain`` (or unlabelled) are measured; others are counted as skipped.
    """
    from ..progress import progress_bar

    from ..metrics import dice, hausdorff_mm
    from .segmentation import probabilities_to_original, sample_mask

    def head(label_map: np.ndarray) -> np.ndarray:
        return label_map > 0 if head_labels is None else np.isin(label_map, head_labels)

    keep = [i for i, r in enumerate(dataset.records) if r.get("label") in (None, "brain")]
    skipped = len(dataset) - len(keep)
    if not keep:
        raise FetalCLIPError(f"{dataset.name}: no head (brain) images to measure")
    if skipped:
        dataset = dataset.subset(keep)
    predicted: dict[int, np.ndarray] = {}
    if segmenter is not None:
        import torch

        from .segmentation import normalise_images, to_grid

        decoder, taps, size = segmenter
        features = cache.blocks(dataset, taps)
        config = cache.model.preprocess.config
        with torch.no_grad():
            for start in range(0, len(dataset), 16):
                index = np.arange(start, min(start + 16, len(dataset)))
                logits = decoder(to_grid(torch.as_tensor(features.blocks[index])), normalise_images(features.images[index], config.mean, config.std, size))
                for i, probs in zip(index, logits.softmax(dim=1)):
                    predicted[int(i)] = probs
    rows = []
    for i in progress_bar(range(len(dataset)), desc="biometry", disable=not progress):
        sample = dataset[i]
        height, width = sample["image"].shape[:2]
        row: dict[str, Any] = {"source": sample["source"], "patient": sample.get("patient"), "ref_hc_mm": sample.get("hc_mm")}
        try:
            truth = sample_mask(sample)
        except FetalCLIPError:
            truth = None
        if segmenter is not None:
            mask = head(probabilities_to_original(predicted[i], height, width))
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
        if truth is not None and segmenter is not None:
            fitted = rasterize_ellipse(measurement.ellipse, (height, width))
            row["dice"] = dice(fitted, head(truth))
            row["hausdorff_mm"] = hausdorff_mm(fitted, head(truth), measurement.pixel_spacing_mm)
        rows.append(row)
    good = [r for r in rows if "error" not in r]
    diffs = np.array([r["hc_diff_mm"] for r in good if "hc_diff_mm" in r], dtype=np.float64)
    result: dict[str, Any] = {
        "task": "hc-biometry",
        "source_of_masks": "segmenter" if segmenter is not None else "dataset",
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
