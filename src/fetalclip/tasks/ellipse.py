"""Ellipse geometry for the whole project: fit, rasterise, and measure how well a fit describes a mask.

The design choice: every measurement goes through one direct least-squares ellipse fit (Fitzgibbon's
constraint, solved the numerically stable way of Halir and Flusser) on *boundary points*, never on pixel
counts. For a mask the boundary points are the midpoints between each pair of 4-adjacent pixels that differ
(inside/outside): the true edge lies between those two pixel centres, so the points are unbiased and the fitted
ellipse neither grows nor shrinks by half a pixel. For an HC18 annotation (a thin drawn outline) the points are
the outline pixels themselves, whose mean line is the ellipse the challenge measured; fitting them reproduces
the CSV's HC, which the tests check on the real data.

The filled head mask of an HC18 image is that fitted ellipse rasterised (pixel centres inside), not the hole-
filled outline: filling would put the outline's own width inside the mask and bias HC upward by about its
width times pi. Segmentation (label maps) and biometry (measurements) both import from here; nothing here
imports either of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FetalCLIPError


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


# -- how well an ellipse describes a mask ----------------------------------------------------------------------
@dataclass(frozen=True)
class FitQuality:
    """``residual_px``: RMS distance of the mask's boundary points from the ellipse (pixels, first-order
    algebraic distance); ``coverage``: the share of the ellipse's perimeter that the mask's boundary follows
    (angular bins around the centre that hold at least one point: a head cut by the field of view or a
    half-segmented skull covers less); ``iou``: overlap of the mask and the rasterised ellipse."""

    residual_px: float
    coverage: float
    iou: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ellipse_distance(ellipse: Ellipse, points: ArrayLike) -> np.ndarray:
    """Approximate distance (pixels) of ``points`` ``[N, 2]`` from the ellipse's outline.

    The implicit value ``f = u^2 + v^2 - 1`` (in axis-normalised coordinates) divided by its gradient norm: the
    first-order (Sampson) distance, exact on the outline and close to it nearby, which is where a fit's
    boundary points are.
    """
    pts = np.asarray(points, dtype=np.float64)
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    dx, dy = pts[:, 0] - ellipse.cx, pts[:, 1] - ellipse.cy
    u = (dx * cos + dy * sin) / ellipse.a
    v = (-dx * sin + dy * cos) / ellipse.b
    value = u * u + v * v - 1.0
    gradient = 2.0 * np.hypot(u / ellipse.a, v / ellipse.b)
    return np.abs(value) / np.maximum(gradient, 1e-12)


def fit_quality(mask: ArrayLike, ellipse: Ellipse, bins: int = 72) -> FitQuality:
    """How well ``ellipse`` describes the (cleaned) ``mask``: boundary residual, perimeter coverage, IoU."""
    mask = largest_component(mask)
    points = mask_boundary_points(mask)
    if not len(points):
        return FitQuality(residual_px=math.inf, coverage=0.0, iou=0.0)
    residual = float(np.sqrt(np.mean(ellipse_distance(ellipse, points) ** 2)))
    # Angles in the ellipse's own frame (axis-normalised), so bins are equal arcs of its parameter.
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    dx, dy = points[:, 0] - ellipse.cx, points[:, 1] - ellipse.cy
    theta = np.arctan2((-dx * sin + dy * cos) / ellipse.b, (dx * cos + dy * sin) / ellipse.a)
    near = ellipse_distance(ellipse, points) <= max(2.0, 0.05 * ellipse.b)  # points on the outline, not stray edges
    occupied = np.unique(((theta[near] + math.pi) / (2 * math.pi) * bins).astype(int) % bins)
    fitted = rasterize_ellipse(ellipse, mask.shape).astype(bool)
    union = np.logical_or(fitted, mask).sum()
    iou = float(np.logical_and(fitted, mask).sum() / union) if union else 0.0
    return FitQuality(residual_px=residual, coverage=float(len(occupied) / bins), iou=iou)


__all__ = [
    "Ellipse", "FitQuality", "ellipse_distance", "fit_ellipse", "fit_mask", "fit_outline", "fit_quality",
    "head_mask_from_outline", "largest_component", "mask_boundary_points", "outline_points",
    "ramanujan_circumference", "rasterize_ellipse",
]
