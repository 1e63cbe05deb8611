"""Geometry helpers: ellipse perimeter, its inverse, and scan conversion of the fan."""

import math

import numpy as np
import pytest

from fetalclip.sim.geometry import PolarGrid, Sector, ellipse_perimeter, scan_conversion, semi_axes_for_perimeter


def _perimeter_by_integration(a: float, b: float) -> float:
    t = np.linspace(0, 2 * np.pi, 200_001)
    x, y = a * np.cos(t), b * np.sin(t)
    return float(np.sum(np.hypot(np.diff(x), np.diff(y))))


@pytest.mark.parametrize("a,b", [(10.0, 10.0), (60.0, 48.0), (100.0, 30.0)])
def test_ramanujan_perimeter_matches_integration(a, b):
    assert ellipse_perimeter(a, b) == pytest.approx(_perimeter_by_integration(a, b), rel=1e-6)


def test_semi_axes_reproduce_the_perimeter_and_ratio():
    a, b = semi_axes_for_perimeter(250.0, 0.8)
    assert b / a == pytest.approx(0.8)
    assert ellipse_perimeter(a, b) == pytest.approx(250.0, rel=1e-12)
    assert semi_axes_for_perimeter(2 * math.pi * 5, 1.0) == pytest.approx((5.0, 5.0))


def test_scan_conversion_reproduces_a_smooth_polar_field():
    sector = Sector(apex_x=64.0, apex_y=-20.0, r_min=30.0, r_max=110.0, half_angle=math.radians(35))
    grid = PolarGrid(sector, n_r=96, n_lines=64)
    conversion = scan_conversion(grid, height=96, width=128)
    # A field linear in radius must come back as each pixel's distance to the apex (bilinear is exact).
    polar = np.repeat(grid.r[:, None], grid.n_lines, axis=1).astype(np.float32)
    image = conversion.apply(polar, np.zeros((96, 128), np.float32))
    ys, xs = np.nonzero(conversion.fan)
    np.testing.assert_allclose(image[ys, xs], np.hypot(xs - 64.0, ys + 20.0), atol=1e-3)
    # The fan holds the centre line and excludes the top corners (outside the opening angle).
    assert conversion.fan[60, 64] and not conversion.fan[2, 0] and not conversion.fan[2, 127]
    xs, ys = np.meshgrid(np.arange(128), np.arange(96))
    assert np.mean(conversion.fan == sector.contains(xs, ys)) > 0.995  # they differ only by rounding on the rim


def test_polar_window_covers_a_disc():
    sector = Sector(apex_x=64.0, apex_y=-20.0, r_min=30.0, r_max=110.0, half_angle=math.radians(35))
    grid = PolarGrid(sector, n_r=96, n_lines=64)
    rows, lines = grid.window(70.0, 50.0, 12.0)
    inside = np.hypot(grid.x - 70.0, grid.y - 50.0) <= 12.0
    assert inside.any() and inside[rows, lines].sum() == inside.sum()
    assert grid.window(500.0, 500.0, 5.0) is None
