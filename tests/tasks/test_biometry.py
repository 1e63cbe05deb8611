"""Ellipse geometry and head biometry: exact recovery on synthetic ellipses, HC18 ground truth on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fetalclip.errors import FetalCLIPError
from fetalclip.growth import ga_from_hc, hadlock_ga_from_hc, who_hc
from fetalclip.tasks.biometry import (
    Ellipse,
    fit_ellipse,
    fit_mask,
    fit_outline,
    head_mask_from_outline,
    mask_boundary_points,
    measure_dataset,
    measure_ellipse,
    measure_head,
    ramanujan_circumference,
    rasterize_ellipse,
)


def ellipse_points(e: Ellipse, n: int = 200) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = e.a * np.cos(t)
    y = e.b * np.sin(t)
    c, s = math.cos(e.angle), math.sin(e.angle)
    return np.column_stack([e.cx + c * x - s * y, e.cy + s * x + c * y])


def test_ramanujan_is_exact_for_a_circle_and_close_for_an_ellipse():
    assert ramanujan_circumference(10, 10) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    # Perimeter of a 2:1 ellipse by numerical integration.
    t = np.linspace(0, 2 * np.pi, 200_001)
    exact = np.trapezoid(np.hypot(20 * np.sin(t), 10 * np.cos(t)), t)
    assert ramanujan_circumference(20, 10) == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("angle", [0.0, 0.4, -1.2, math.pi / 2])
def test_fit_ellipse_recovers_parameters_exactly(angle):
    truth = Ellipse(cx=412.3, cy=288.8, a=180.0, b=131.5, angle=angle)
    fitted = fit_ellipse(ellipse_points(truth))
    assert fitted.cx == pytest.approx(truth.cx, abs=1e-6)
    assert fitted.cy == pytest.approx(truth.cy, abs=1e-6)
    assert fitted.a == pytest.approx(truth.a, abs=1e-6)
    assert fitted.b == pytest.approx(truth.b, abs=1e-6)
    # An axis has no sign: compare directions modulo pi.
    assert math.sin(fitted.angle - truth.angle) == pytest.approx(0.0, abs=1e-8)


def test_fit_ellipse_rejects_too_few_or_degenerate_points():
    with pytest.raises(FetalCLIPError):
        fit_ellipse(np.zeros((3, 2)))
    with pytest.raises(FetalCLIPError):
        fit_ellipse(np.column_stack([np.arange(20.0), 2 * np.arange(20.0)]))  # a line


def test_mask_boundary_points_are_unbiased():
    """Fitting the rasterised ellipse's edge midpoints gives its true circumference (no half-pixel growth)."""
    truth = Ellipse(cx=200.4, cy=150.7, a=120.0, b=80.0, angle=0.3)
    mask = rasterize_ellipse(truth, (300, 400))
    fitted = fit_mask(mask)
    assert fitted.circumference() == pytest.approx(truth.circumference(), rel=2e-3)
    # The naive alternative (centres of the mask's edge pixels) shrinks by about half a pixel all round.
    assert len(mask_boundary_points(mask)) > 0


def test_a_head_cut_by_the_image_border_is_fitted_by_its_visible_edge():
    truth = Ellipse(cx=150.0, cy=40.0, a=90.0, b=60.0, angle=0.2)  # extends above the image
    mask = rasterize_ellipse(truth, (200, 300))
    assert mask[0].any()
    fitted = fit_mask(mask)
    assert fitted.circumference() == pytest.approx(truth.circumference(), rel=5e-3)
    assert len(mask_boundary_points(mask, include_image_border=True)) > len(mask_boundary_points(mask))


def test_fit_mask_uses_the_largest_component_and_fails_on_empty():
    truth = Ellipse(cx=100, cy=100, a=60, b=40, angle=0.0)
    mask = rasterize_ellipse(truth, (220, 260))
    mask[5:9, 240:250] = 1  # a speck of noise far away
    assert fit_mask(mask).a == pytest.approx(60, abs=0.5)
    with pytest.raises(FetalCLIPError):
        fit_mask(np.zeros((50, 50), np.uint8))


def test_measurements_in_mm_and_ga():
    e = Ellipse(cx=0, cy=0, a=500.0, b=400.0, angle=0.0)
    m = measure_ellipse(e, pixel_spacing_mm=0.1)
    assert m.ofd_mm == pytest.approx(100.0)
    assert m.bpd_mm == pytest.approx(80.0)
    assert m.hc_mm == pytest.approx(ramanujan_circumference(50, 40))
    assert who_hc(m.ga_who_days) == pytest.approx(m.hc_mm, rel=1e-4)
    assert m.ga_who_days == pytest.approx(float(ga_from_hc(m.hc_mm)))
    # Hadlock (1984): HC 17.5 cm -> 8.96 + 0.54*17.5 + 0.0003*17.5^3 = 20.02 weeks.
    assert float(hadlock_ga_from_hc(175.0)) / 7 == pytest.approx(8.96 + 0.54 * 17.5 + 0.0003 * 17.5**3)
    with pytest.raises(FetalCLIPError):
        measure_ellipse(e, pixel_spacing_mm=None)


@pytest.mark.shared_data
def test_hc18_outline_fit_reproduces_the_csv_head_circumference(hc18_dir):
    """Ellipse through every 8th ground-truth outline: CSV HC within 0.1 mm on average (geometry + spacing)."""
    from fetalclip.data.datasets import open_dataset
    from fetalclip.data.readers import image_to_array, open_image

    dataset = open_dataset(f"hc18:{hc18_dir}")
    outline_diffs, mask_diffs = [], []
    for number, record in enumerate(dataset.records[::8]):
        outline = image_to_array(open_image(record["metadata"]["annotation"]))
        ellipse = fit_outline(outline)
        outline_diffs.append(ellipse.circumference() * record["pixel_spacing_mm"] - record["hc_mm"])
        if number % 4 == 0:  # round trip through the filled mask (what a segmenter learns and is measured by)
            mask = head_mask_from_outline(outline)
            mask_diffs.append(measure_head(mask, record["pixel_spacing_mm"]).hc_mm - record["hc_mm"])
    assert len(outline_diffs) >= 100
    assert np.mean(np.abs(outline_diffs)) < 0.1
    assert np.mean(np.abs(mask_diffs)) < 0.1


@pytest.mark.shared_data
def test_measure_dataset_on_hc18_ground_truth(hc18_dir):
    from fetalclip.data.datasets import open_dataset

    dataset = open_dataset(f"hc18:{hc18_dir}")
    result = measure_dataset(dataset.subset(range(0, 40, 8)))
    assert result["n"] == 5 and result["n_failed"] == 0
    assert result["hc_mean_abs_diff_mm"] < 0.1
    row = result["rows"][0]
    assert {"hc_mm", "bpd_mm", "ofd_mm", "ga_who_days", "ga_hadlock_days", "ref_hc_mm", "hc_diff_mm"} <= set(row)
    assert row["bpd_mm"] < row["ofd_mm"]


def test_measure_dataset_on_phantoms_measures_heads_only():
    """The phantom's brain images carry multi-structure masks (skull + inner structures) and their true HC."""
    from fetalclip.data.datasets import open_dataset

    result = measure_dataset(open_dataset("sim:12"))
    assert result["n_skipped_not_head"] > 0 and result["n_failed"] == 0
    assert result["n"] + result["n_skipped_not_head"] == 12
    assert result["hc_mean_abs_diff_mm"] < 1.0
