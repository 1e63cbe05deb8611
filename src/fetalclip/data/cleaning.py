"""Ultrasound cleaning: keep the field of view, remove burned-in graphics (text, calipers, markers, scale bars).

Two observations drive the design, both true of scanner exports and cheap to test:

* The field of view (a fan for curved and phased probes, a rectangle for linear ones) is one large, convex,
  textured region on a black background. So the sector mask is the convex hull of the largest bright
  component of a median-filtered, downsampled copy, grown by a small margin: the hull is robust to dark
  (anechoic) regions touching the edge, and the margin costs nothing because the border is black.
* Scanner graphics are drawn, not imaged: thin strokes at a few exact colour values (white text, a grey
  level for secondary text, yellow or green calipers), while speckle has a smooth histogram. So overlay pixels
  are thin bright structures (white top-hat) whose value is a *spike* of the top-hat pixels' histogram, plus
  coloured pixels in an otherwise grey image, plus one ring of anti-aliasing around both.

Detected overlay pixels are inpainted from their surroundings (nearest valid pixel, then a normalised
Gaussian blend) rather than blacked out, so no dark glyph-shaped holes remain for a model to learn from.
Cleaning is off for the published model's evaluation path (which never cleaned) and on by default when
packing pretraining shards; every cleaned sample carries the fractions of pixels it touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .masks import convex_hull_mask
from .readers import as_uint8

# Working resolution of the sector search (longest side), enough to place a fan edge within ~2 full-res px.
_SECTOR_SIDE = 320
# Intensity above which a pixel of the median-filtered image counts as inside the field of view.
_SECTOR_LEVEL = 12
# Exported borders are black up to compression noise; anything above this is image content.
_BLACK_LEVEL = 4
# Other bright components at least this share of the largest also belong to the field of view.
_SECOND_COMPONENT = 0.1
# Glyph shadows (a dark outline some scanners draw around text) are at most this bright.
_SHADOW_LEVEL = 8
# Seeds on a local background at least this bright (tissue, not the black border) must be strokes to
# count: at most this half-width and at least this long, in pixels.
_BRIGHT_BASE = 30
_STROKE_HALF_WIDTH = 1.5
_STROKE_MIN_LENGTH = 5
# ... unless they step up from their immediate surroundings by at least this much.
_EDGE_STEP = 100
# More than this share of the field of view "detected" means the detector is wrong for this image.
_MAX_OVERLAY = 0.08


@dataclass
class CleaningStats:
    sector_fraction: float  # share of the image inside the field of view
    overlay_fraction: float  # share of the image detected as burned-in graphics
    changed_fraction: float  # share of the image whose value changed

    def as_dict(self) -> dict[str, float]:
        return {key: round(float(value), 6) for key, value in asdict(self).items()}


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image.mean(axis=2)


def _text_like(mask: np.ndarray) -> np.ndarray:
    """Parts of ``mask`` thinner than the opening below (text, ticks, bars at the working resolution)."""
    return mask & ~ndimage.binary_opening(mask, structure=np.ones((7, 7)))


def sector_mask(image: np.ndarray, margin_px: int = 2) -> np.ndarray:
    """Boolean HxW mask of the ultrasound field of view (everything when no clear one is found)."""
    grey = as_uint8(_grey(image).astype(image.dtype) if image.ndim == 3 else image)
    height, width = grey.shape
    scale = min(1.0, _SECTOR_SIDE / max(height, width))
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(grey).resize(small_size, Image.BOX)) if scale < 1 else grey
    # The median removes thin text and isolated marks, so they neither join nor form the component.
    smooth = ndimage.median_filter(small, size=5)
    foreground = smooth > _SECTOR_LEVEL
    # Opening detaches text blocks and bars lying next to the fan (they would bulge its hull); closing then
    # bridges dark speckle inside it.
    foreground = ndimage.binary_opening(foreground, structure=np.ones((7, 7)))
    foreground = ndimage.binary_closing(foreground, structure=np.ones((5, 5)))
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.ones_like(grey, dtype=bool)
    sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))
    if sizes.max() < 0.05 * foreground.size:  # nothing that looks like a field of view: leave the image alone
        return np.ones_like(grey, dtype=bool)
    # The largest component, plus any other large one: an anechoic band (a vessel, amniotic fluid) can cut
    # the field of view in two, and zeroing real anatomy is worse than keeping a panel the overlay step sees.
    keep = np.nonzero(sizes >= _SECOND_COMPONENT * sizes.max())[0] + 1
    hull = convex_hull_mask(ndimage.binary_fill_holes(np.isin(labels, keep)))
    # Dim tissue beyond the hull but attached to it (a dark corner of a linear-probe image) is still scan,
    # not background: black borders are near 0, dark speckle is not.
    dim, _ = ndimage.label(smooth > _BLACK_LEVEL)
    touching = np.unique(dim[hull & (dim > 0)])
    hull |= np.isin(dim, touching[touching > 0]) & ~_text_like(smooth > _BLACK_LEVEL)
    # Grow by a margin measured in full-resolution pixels, then bring the mask back to full size.
    grow = int(np.ceil(margin_px * scale)) + 1
    hull = ndimage.binary_dilation(hull, iterations=grow)
    if scale < 1:
        hull = np.asarray(Image.fromarray(hull.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
    return hull


def _spike_levels(values: np.ndarray, min_count: int, ratio: float) -> np.ndarray:
    """Grey levels that are far more frequent than their neighbourhood in ``values`` (drawn colours)."""
    counts = np.bincount(values.astype(np.int64), minlength=256).astype(np.float64)
    # Background frequency: median of the levels 2-6 away on either side (skipping +-1, where
    # anti-aliasing of a drawn colour piles up too).
    offsets = [d for d in range(-6, 7) if abs(d) >= 2]
    padded = np.pad(counts, 6)  # zeros beyond 0 and 255: saturated marks at 255 have no level above them
    neighbours = np.stack([padded[6 + d : 6 + d + 256] for d in offsets])
    background = np.median(neighbours, axis=0)
    return np.nonzero((counts >= min_count) & (counts >= ratio * (background + 1.0)))[0]


def overlay_mask(
    image: np.ndarray,
    region: np.ndarray | None = None,
    stroke_px: int = 7,
    contrast: int = 40,
    min_level: int = 90,
    colour_chroma: int = 40,
) -> np.ndarray:
    """Boolean HxW mask of burned-in graphics inside ``region`` (default: the whole image).

    ``stroke_px``: graphics thinner than this are found (the top-hat's structuring element); ``contrast``:
    how much brighter than their surroundings strokes must be; ``min_level``: the darkest drawn colour
    considered; ``colour_chroma``: channel spread above which a pixel of a grey scan is a coloured mark.
    """
    image = as_uint8(image)
    grey = _grey(image).astype(np.float32)
    region = np.ones(grey.shape, dtype=bool) if region is None else region
    found = np.zeros(grey.shape, dtype=bool)

    if image.ndim == 3:
        chroma = image.max(axis=2).astype(np.int16) - image.min(axis=2)
        coloured = (chroma > colour_chroma) & region
        # Colour Doppler or a tinted display colours much of the scan: colour is content there, not overlay.
        if coloured.sum() < 0.05 * max(1, region.sum()):
            found |= coloured

    base = ndimage.grey_opening(grey, size=(stroke_px, stroke_px))
    tophat = grey - base
    # Drawn colours are learnt from the whole image: marks on the black border show them most clearly.
    candidates = (tophat >= contrast) & (grey >= min_level)
    if candidates.any():
        levels = np.round(grey[candidates]).astype(np.int64)
        spikes = _spike_levels(levels, min_count=20, ratio=4.0)
        if len(spikes):
            grey_level = np.clip(np.round(grey), 0, 255).astype(np.int64)
            near_spike = np.zeros(258, dtype=bool)  # within 1 of a drawn colour: conversions round either way
            exact = np.zeros(258, dtype=bool)
            for level in spikes:
                near_spike[max(0, level - 1) : level + 2] = True
                exact[level] = True
            seeds = candidates & near_spike[grey_level]
            # Saturated speckle in bright tissue also piles up at 255. Drawn strokes are either on a dark
            # background or one or two pixels thin; grains of saturated speckle are neither.
            on_bright = seeds & (base >= _BRIGHT_BASE)
            if on_bright.any():
                thickness = ndimage.distance_transform_edt(on_bright)
                labels, count = ndimage.label(on_bright, structure=np.ones((3, 3), dtype=bool))
                widest = np.asarray(ndimage.maximum(thickness, labels, np.arange(1, count + 1))).reshape(-1)
                extent = np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in ndimage.find_objects(labels)])
                # Drawn marks of any shape (dots, arrows) step sharply up from their surroundings; speckle,
                # blurred by the imaging, rises gradually to its saturated peak.
                ids = np.arange(1, count + 1)
                ring_labels = ndimage.grey_dilation(labels, size=(3, 3)) * (labels == 0)
                ring_mean = np.nan_to_num(np.asarray(ndimage.mean(grey, ring_labels, ids)).reshape(-1), nan=255.0)
                step = np.asarray(ndimage.mean(grey, labels, ids)).reshape(-1) - ring_mean
                grains = ((widest > _STROKE_HALF_WIDTH) | (extent < _STROKE_MIN_LENGTH)) & (step < _EDGE_STEP)
                seeds &= ~np.isin(labels, np.nonzero(grains)[0] + 1)
            # A stroke crossing bright anatomy loses most of its top-hat contrast there but keeps its exact
            # colour: follow each seed along connected pixels of exactly that colour that still stand out a
            # little (a flat white background, e.g. a figure's margin, does not).
            follow = seeds | (exact[grey_level] & (tophat >= contrast / 4))
            found |= ndimage.binary_propagation(seeds, structure=np.ones((3, 3), dtype=bool), mask=follow)

    found &= region
    if found.any():
        # One ring for anti-aliased edges (brighter than the unmarked surroundings) and dark glyph shadows
        # (near black); other neighbours, i.e. speckle beside a mark, stay untouched.
        ring = ndimage.binary_dilation(found, structure=np.ones((3, 3), dtype=bool)) & ~found & region
        unmarked = (~found).astype(np.float32)
        background = ndimage.uniform_filter(grey * unmarked, size=stroke_px) / np.maximum(
            ndimage.uniform_filter(unmarked, size=stroke_px), 1e-6
        )
        found |= ring & ((grey - background >= contrast / 2) | (grey <= _SHADOW_LEVEL))
    if found.sum() > _MAX_OVERLAY * max(1, region.sum()):
        # Scanner graphics never cover this much: this is not a scan with marks (a re-saved figure, a
        # screenshot); changing it would do more harm than leaving it.
        return np.zeros_like(found)
    return found


def _fill_patch(patch: np.ndarray, hole: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Values for ``hole`` pixels of one patch from its ``valid`` pixels."""
    if not valid.any():
        return np.zeros_like(patch)
    # Nearest valid pixel everywhere, then a Gaussian-weighted average of valid pixels where there are any
    # close by; together they fill strokes smoothly and large blocks without undefined values.
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    weight = ndimage.gaussian_filter(valid.astype(np.float32), sigma)
    channels = [patch] if patch.ndim == 2 else [patch[..., c] for c in range(patch.shape[2])]
    filled = []
    for channel in channels:
        nearest = channel[iy, ix].astype(np.float32)
        blended = ndimage.gaussian_filter(channel.astype(np.float32) * valid, sigma)
        smooth = np.where(weight > 0.05, blended / np.maximum(weight, 1e-6), nearest)
        filled.append(np.clip(np.round(smooth), 0, 255).astype(np.uint8))
    return filled[0] if patch.ndim == 2 else np.stack(filled, axis=2)


def inpaint(image: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None, sigma: float = 2.0) -> np.ndarray:
    """Replace ``mask`` pixels with a smooth continuation of the ``valid`` pixels around them (default: all
    pixels outside ``mask``); uint8 in, uint8 out. Works patch by patch around groups of marks, so the cost
    follows the marks' area rather than the image's."""
    out = image.copy()
    if not mask.any():
        return out
    valid = ~mask if valid is None else (valid & ~mask)
    margin = int(4 * sigma) + 2
    groups, _ = ndimage.label(ndimage.binary_dilation(mask, iterations=margin))
    for box in ndimage.find_objects(groups):
        hole = mask[box]
        if not hole.any():
            continue
        patch = image[box]
        filled = _fill_patch(patch, hole, valid[box], sigma)
        out[box][hole] = filled[hole]
    return out


def _collapse_grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return np.ascontiguousarray(image[..., 0])
    return image


def clean_image(
    image: np.ndarray,
    sector: bool = True,
    overlays: bool = True,
    fill: str = "inpaint",
) -> tuple[np.ndarray, CleaningStats]:
    """Zero outside the field of view (``sector``) and remove burned-in graphics (``overlays``).

    ``fill``: ``inpaint`` (default) or ``zero`` for overlay pixels. Returns the cleaned uint8 image (grey
    stays grey; an RGB scan whose only colour was overlay comes back grey) and what was changed.
    """
    if fill not in ("inpaint", "zero"):
        raise ValueError(f"fill must be 'inpaint' or 'zero', not {fill!r}")
    original = as_uint8(image)
    height, width = original.shape[:2]
    inside = sector_mask(original) if sector else np.ones((height, width), dtype=bool)
    cleaned = original.copy()
    marks = overlay_mask(original, region=inside) if overlays else np.zeros((height, width), dtype=bool)
    if marks.any():
        if fill == "inpaint":
            # Inpaint from the field of view only, so the black border does not bleed into edge marks.
            cleaned = inpaint(cleaned, marks, valid=inside)
        else:
            cleaned[marks] = 0
    cleaned[~inside] = 0
    if original.ndim == 3 and overlays:
        # Leftover colour after removing coloured marks is anti-aliasing noise if the rest is grey.
        cleaned = _collapse_grey(cleaned)
    changed = (cleaned != original) if cleaned.ndim == original.ndim else (cleaned[..., None] != original)
    if changed.ndim == 3:
        changed = changed.any(axis=2)
    total = float(height * width)
    stats = CleaningStats(float(inside.sum()) / total, float(marks.sum()) / total, float(changed.sum()) / total)
    return cleaned, stats


def clean_sample(sample: dict[str, Any], sector: bool = True, overlays: bool = True, fill: str = "inpaint") -> dict[str, Any]:
    """A copy of ``sample`` with a cleaned image and ``metadata['cleaning']`` stats (mask untouched)."""
    cleaned, stats = clean_image(sample["image"], sector=sector, overlays=overlays, fill=fill)
    out = dict(sample)
    out["image"] = cleaned
    out["metadata"] = {**sample.get("metadata", {}), "cleaning": stats.as_dict()}
    return out
