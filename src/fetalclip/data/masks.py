"""Binary masks from annotations: filled regions from outlines, convex hulls, label maps from files.

HC18 ships each head as a thin ellipse *outline*; segmentation needs the filled head. The CSV's head
circumference is that of the ellipse through the middle of the drawn line, so the filled mask keeps the
inner half of the line and drops the outer half (each line pixel goes to whichever side, inside or
outside, is nearer); filling up to the outer edge would bias every area and perimeter measured from it.
Heads cut by the image border leave an open outline: there the inside is the part of the background that
lies within the outline's convex hull. No ellipse is fitted here: geometry belongs to the biometry task.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import ImageReadError

_EIGHT = np.ones((3, 3), dtype=bool)


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (scipy's Qhull for the hull, PIL to rasterise it)."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return mask.astype(bool)
    # Pixel corners, so the hull of a thin or rectangular region covers its pixels entirely.
    points = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull = ConvexHull(points)
    except QhullError:  # all points on a line
        return mask.astype(bool)
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(map(float, points[i])) for i in hull.vertices], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask.astype(bool)


def _split_line(inside: np.ndarray, outside: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Line pixels nearer ``inside`` than ``outside``: two fronts advance one pixel a step across the line
    (ties go inside), which for lines a few pixels wide costs a few dilations instead of distance maps."""
    ins, outs, remaining = inside.copy(), outside.copy(), line & ~inside & ~outside
    while remaining.any():
        grow_in = ndimage.binary_dilation(ins, structure=_EIGHT) & remaining
        grow_out = ndimage.binary_dilation(outs, structure=_EIGHT) & remaining & ~grow_in
        if not (grow_in.any() or grow_out.any()):
            break
        ins |= grow_in
        outs |= grow_out
        remaining &= ~(grow_in | grow_out)
    return ins


def _holes(line: np.ndarray) -> np.ndarray:
    """Background enclosed by ``line``: 4-connected background components not touching the border (the
    complement of an 8-connected curve must be 4-connected, or it would leak through diagonal steps).
    Labelling once is several times cheaper than ``binary_fill_holes``'s iterated dilation."""
    labels, count = ndimage.label(~line)
    if count == 0:
        return np.zeros_like(line)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = np.ones(count + 1, dtype=bool)
    enclosed[border] = False
    enclosed[0] = False
    return enclosed[labels]


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """uint8 HxW mask (1 inside) from a drawn closed outline (nonzero pixels), open at the border or not."""
    line_full = np.asarray(outline) > 0
    result = np.zeros(line_full.shape, dtype=np.uint8)
    if not line_full.any():
        return result
    # Work in the outline's bounding box (plus a margin of background), a fraction of the image.
    rows, cols = np.flatnonzero(line_full.any(axis=1)), np.flatnonzero(line_full.any(axis=0))
    margin = 3
    box = (slice(max(0, rows[0] - margin), rows[-1] + margin + 1), slice(max(0, cols[0] - margin), cols[-1] + margin + 1))
    line = line_full[box]
    inside = _holes(line)
    closed = line
    if inside.sum() < 0.05 * line.sum():
        # Close one-pixel gaps in the drawing; edge padding stops the closing from eating lines at the border.
        pad = 2
        closed = ndimage.binary_closing(np.pad(line, pad, mode="edge"), structure=_EIGHT)[pad:-pad, pad:-pad] | line
        inside = _holes(closed)
    if inside.sum() < 0.05 * closed.sum():
        # Open at the image border: background components mostly within the outline's hull are inside.
        hull = convex_hull_mask(closed)
        labels, count = ndimage.label(~closed)
        if count:
            total = ndimage.sum_labels(np.ones_like(closed), labels, np.arange(1, count + 1))
            within = ndimage.sum_labels(hull, labels, np.arange(1, count + 1))
            keep = np.nonzero(within >= 0.5 * total)[0] + 1
            inside = np.isin(labels, keep)
    if not inside.any():
        return result
    # Each line pixel joins the nearer side: the mask edge runs along the middle of the drawn line.
    result[box] = _split_line(inside, ~(inside | closed), closed)
    return result


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label map from an image file: uint8 HxW; a 0/255 binary image becomes 0/1.

    ``shape`` (H, W) is checked when given, so a mask for another image fails here, with its name.
    """
    path = Path(path)
    from .readers import image_to_array, open_image

    values = image_to_array(open_image(path))
    if values.ndim == 3:
        values = values.max(axis=2)
    if values.dtype != np.uint8:
        if values.max() > 255:
            raise ImageReadError(path, f"mask has label values up to {int(values.max())}; at most 255 are supported")
        values = values.astype(np.uint8)
    levels = np.nonzero(np.bincount(values.ravel(), minlength=256))[0]
    if set(levels.tolist()) <= {0, 255}:
        values = (values > 0).astype(np.uint8)
    if shape is not None and values.shape != tuple(shape):
        raise ImageReadError(path, f"mask is {values.shape[1]}x{values.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return values
