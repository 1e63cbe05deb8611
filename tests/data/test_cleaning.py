"""Cleaning on synthetic scans with known overlays, and on real FETAL_PLANES_DB images."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from fetalclip.data.cleaning import clean_image, clean_sample, inpaint, overlay_mask, sector_mask
from fetalclip.data.readers import read_image


def _fan(height=420, width=560):
    """Boolean fan-shaped field of view: apex above the top edge, +-38 degrees, like a curved probe."""
    yy, xx = np.mgrid[0:height, 0:width]
    apex_y, apex_x = -60.0, width / 2
    radius = np.hypot(yy - apex_y, xx - apex_x)
    angle = np.degrees(np.arctan2(xx - apex_x, yy - apex_y))
    return (np.abs(angle) <= 38) & (radius >= 90) & (radius <= height + 40)


def _speckle_scan(seed=0, height=420, width=560):
    """Grey scan: smoothed Rayleigh speckle with a bright elliptical 'skull' and an anechoic region."""
    rng = np.random.default_rng(seed)
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (height, width)), 1.0)
    tissue = 60 * speckle / speckle.mean()
    yy, xx = np.mgrid[0:height, 0:width]
    ellipse = ((yy - 230) / 120.0) ** 2 + ((xx - 280) / 160.0) ** 2
    tissue = np.where(np.abs(ellipse - 1) < 0.12, tissue * 2.6, tissue)  # bright ring (bone)
    tissue = np.where(ellipse < 0.35, tissue * 0.15, tissue)  # dark fluid
    fan = _fan(height, width)
    # Log-like compression as scanners apply it: bright echoes approach white without piling up at one
    # clipped level (a spike at one level is what drawn graphics look like).
    image = np.where(fan, 1 + 250 * (1 - np.exp(-tissue / 120.0)), 0).astype(np.uint8)
    return image, fan


def _draw_overlays(canvas: Image.Image, colour_marks=None):
    """Scanner-style graphics; returns the boolean mask of every pixel drawn."""
    truth = Image.new("L", canvas.size, 0)
    font = ImageFont.load_default()
    white = 255 if canvas.mode == "L" else (255, 255, 255)
    grey = 190 if canvas.mode == "L" else (190, 190, 190)
    caliper = colour_marks or white
    for target, value in ((ImageDraw.Draw(canvas), None), (ImageDraw.Draw(truth), 255)):
        target.fontmode = "1"  # scanners draw aliased glyphs; anti-aliased text is tested on real images
        # Machine text: outside the fan (top corners) and over the anatomy.
        target.text((8, 6), "GE Voluson E8  MI 1.2  TIs 0.4", fill=value or white, font=font)
        target.text((400, 8), "FR 31Hz  17cm", fill=value or grey, font=font)
        target.text((170, 330), "HC 172.4 mm  BPD 48.1 mm", fill=value or white, font=font)
        target.text((215, 185), "Gn -2  C6/M7", fill=value or grey, font=font)
        # Calipers: two crosses and a dotted measurement line across the head.
        for cx, cy in ((150, 230), (410, 230)):
            target.line([(cx - 6, cy), (cx + 6, cy)], fill=value or caliper, width=1)
            target.line([(cx, cy - 6), (cx, cy + 6)], fill=value or caliper, width=1)
        for x in range(160, 400, 8):
            target.line([(x, 230), (x + 3, 230)], fill=value or caliper, width=1)
        # Depth scale bar with ticks along the fan's right edge, and an orientation marker.
        target.line([(470, 120), (470, 380)], fill=value or white, width=2)
        for y in range(120, 381, 26):
            target.line([(464, y), (470, y)], fill=value or white, width=2)
        target.polygon([(120, 100), (132, 106), (120, 112)], fill=value or white)
    return np.asarray(truth) > 0


def _check(original, cleaned, truth, fan):
    cleaned_grey = cleaned if cleaned.ndim == 2 else cleaned.mean(axis=2)
    original_grey = original if original.ndim == 2 else original.mean(axis=2)
    base = _speckle_scan()[0]
    # An overlay pixel is removed when its drawn value is gone: it is back near the anatomy's value.
    removed = np.abs(cleaned_grey[truth].astype(float) - base[truth]) < np.abs(original_grey[truth].astype(float) - base[truth])
    anatomy = fan & ~truth
    changed = cleaned_grey[anatomy] != original_grey[anatomy]
    return removed.mean(), changed.mean()


def test_grey_scan_overlays_removed_anatomy_untouched():
    image, fan = _speckle_scan()
    canvas = Image.fromarray(image)
    truth = _draw_overlays(canvas)
    original = np.asarray(canvas)
    cleaned, stats = clean_image(original)
    removed, changed = _check(original, cleaned, truth, fan)
    assert removed >= 0.95, f"only {removed:.1%} of overlay pixels removed"
    assert changed < 0.01, f"{changed:.2%} of sector pixels changed"
    # Outside the fan is black afterwards; the stats agree with what happened.
    inside = sector_mask(original)
    assert cleaned[~inside].max() == 0
    # The mask covers the fan; beyond it, it may only add the black area a convex hull spans (the near-field
    # arc), and the machine text drawn on the black border is gone.
    assert inside[fan].mean() > 0.995 and (inside & ~ndimage.binary_dilation(fan, iterations=6)).mean() < 0.03
    assert cleaned[truth & ~fan].max() < 100
    assert 0.4 < stats.sector_fraction < 0.8 and 0 < stats.overlay_fraction < 0.05
    assert stats.changed_fraction == pytest.approx((cleaned != original).mean(), abs=1e-9)


def test_coloured_calipers_on_rgb_export_come_back_grey():
    image, fan = _speckle_scan(seed=1)
    canvas = Image.fromarray(image).convert("RGB")
    truth = _draw_overlays(canvas, colour_marks=(255, 220, 0))
    original = np.asarray(canvas)
    cleaned, _ = clean_image(original)
    assert cleaned.ndim == 2  # the only colour was the calipers
    removed, changed = _check(original, cleaned, truth, fan)
    assert removed >= 0.95 and changed < 0.01


def test_clean_scan_is_left_alone():
    image, fan = _speckle_scan(seed=2)
    cleaned, stats = clean_image(image)
    assert (cleaned[fan] != image[fan]).mean() < 0.002
    assert stats.overlay_fraction < 0.001


def test_switches_and_zero_fill():
    image, _ = _speckle_scan(seed=3)
    canvas = Image.fromarray(image)
    truth = _draw_overlays(canvas)
    original = np.asarray(canvas)
    untouched, stats = clean_image(original, sector=False, overlays=False)
    assert np.array_equal(untouched, original) and stats.changed_fraction == 0
    zeroed, _ = clean_image(original, sector=False, fill="zero")
    assert (zeroed[truth] == 0).mean() > 0.95
    with pytest.raises(ValueError):
        clean_image(original, fill="blur")


def test_inpaint_fills_from_surroundings():
    image = np.full((40, 40), 100, np.uint8)
    mask = np.zeros_like(image, dtype=bool)
    mask[18:22, 5:35] = True
    image[mask] = 255
    out = inpaint(image, mask)
    assert np.all(out[mask] == 100) and np.array_equal(out[~mask], image[~mask])
    assert overlay_mask(np.zeros((30, 30), np.uint8)).sum() == 0


def test_clean_sample_records_stats_and_keeps_mask():
    image, _ = _speckle_scan(seed=4)
    sample = {"image": image, "mask": np.ones_like(image), "metadata": {"dataset": "x"}}
    out = clean_sample(sample)
    assert out["mask"] is sample["mask"] and "cleaning" in out["metadata"] and "cleaning" not in sample["metadata"]
    assert set(out["metadata"]["cleaning"]) == {"sector_fraction", "overlay_fraction", "changed_fraction"}


@pytest.mark.parametrize("name", ["Patient00004_Plane1_12_of_30.png", "Patient00305_Plane6_1_of_3.png"])
def test_real_fpdb_overlays(fpdb_dir, name):
    """Real exports: the white/grey machine marks found are removed, and most of the scan is untouched."""
    sample = read_image(fpdb_dir / "Images" / name)
    original = sample["image"]
    cleaned, stats = clean_image(original)
    assert 0.0005 < stats.overlay_fraction < 0.02
    assert stats.changed_fraction < 0.05
    marks = overlay_mask(original, region=sector_mask(original))
    # Pure-white marks (255) are gone wherever they were found.
    assert (cleaned[marks & (original == 255)] < 255).all()
    # What stays white is saturated anatomy (blobs), not thin marks.
    labels, count = ndimage.label(cleaned == 255)
    sizes = ndimage.sum_labels(cleaned == 255, labels, range(1, count + 1))
    assert (np.asarray(sizes) >= 100).all()
    assert ((original == 255).sum() - (cleaned == 255).sum()) > 50
