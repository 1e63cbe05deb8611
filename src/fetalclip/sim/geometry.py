"""Scanner geometry for the phantom: the sector (fan) field of view, its beam-line grid, and scan conversion.

A curvilinear or transvaginal probe samples along beam lines that fan out from a virtual apex. The phantom
renders echoes on that polar grid (rows = depth samples, columns = beam lines), because three things are
natural there and awkward on pixels: acoustic shadowing is a cumulative sum down each line, speckle is
correlated over a resolution cell that is fixed in (depth, line) units and therefore widens laterally with
depth as on a real scanner, and the beam direction at every sample (which decides how bright a specular
boundary is) is just the line's angle. The polar image is then scan converted to pixels with bilinear
interpolation, as a scanner's display does. Everything measurable (masks, spacing) lives on the pixel grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Sector:
    """A fan in pixel coordinates (x right, y down): apex, near and far radii, half opening angle (radians)."""

    apex_x: float
    apex_y: float
    r_min: float
    r_max: float
    half_angle: float

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radius and beam angle (0 straight down, positive to the right) of pixel positions."""
        dx, dy = x - self.apex_x, y - self.apex_y
        return np.hypot(dx, dy), np.arctan2(dx, dy)

    def contains(self, x: np.ndarray, y: np.ndarray, margin_px: float = 0.0, near_px: float = 0.0) -> np.ndarray:
        """Whether points lie inside the fan, ``margin_px`` clear of its edges and ``near_px`` below its top."""
        r, phi = self.polar(np.asarray(x, np.float64), np.asarray(y, np.float64))
        angle_margin = margin_px / np.maximum(r, 1.0)
        return (
            (r >= self.r_min + max(margin_px, near_px))
            & (r <= self.r_max - margin_px)
            & (np.abs(phi) <= self.half_angle - angle_margin)
        )


class PolarGrid:
    """Sample positions of ``n_r`` depth samples on ``n_lines`` beam lines of a sector, in pixel coordinates."""

    def __init__(self, sector: Sector, n_r: int, n_lines: int):
        self.sector = sector
        self.n_r, self.n_lines = n_r, n_lines
        self.dr = (sector.r_max - sector.r_min) / (n_r - 1)
        self.dphi = 2 * sector.half_angle / (n_lines - 1)
        r = sector.r_min + self.dr * np.arange(n_r, dtype=np.float32)
        phi = -sector.half_angle + self.dphi * np.arange(n_lines, dtype=np.float32)
        self.r = r
        # Beam direction per line: the unit vector from the apex, for specular angle factors.
        self.beam_x = np.sin(phi)[None, :].astype(np.float32)
        self.beam_y = np.cos(phi)[None, :].astype(np.float32)
        self.x = (sector.apex_x + r[:, None] * self.beam_x).astype(np.float32)
        self.y = (sector.apex_y + r[:, None] * self.beam_y).astype(np.float32)

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
        """Row and line slices covering the disc of ``radius`` around (cx, cy); ``None`` when it misses the fan."""
        s = self.sector
        dx, dy = cx - s.apex_x, cy - s.apex_y
        d = math.hypot(dx, dy)
        k0 = max(0, math.floor((d - radius - s.r_min) / self.dr))
        k1 = min(self.n_r, math.ceil((d + radius - s.r_min) / self.dr) + 1)
        half = math.asin(radius / d) if d > radius else math.pi
        centre = math.atan2(dx, dy)
        j0 = max(0, math.floor((centre - half + s.half_angle) / self.dphi))
        j1 = min(self.n_lines, math.ceil((centre + half + s.half_angle) / self.dphi) + 1)
        if k0 >= k1 or j0 >= j1:
            return None
        return slice(k0, k1), slice(j0, j1)


def pixel_window(height: int, width: int, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
    """Row and column slices of an image covering the disc of ``radius`` around (cx, cy)."""
    y0, y1 = max(0, math.floor(cy - radius)), min(height, math.ceil(cy + radius) + 1)
    x0, x1 = max(0, math.floor(cx - radius)), min(width, math.ceil(cx + radius) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


@dataclass
class ScanConversion:
    """Bilinear lookup from a polar image to the pixels inside the fan."""

    fan: np.ndarray  # bool HxW: pixels that show data
    flat: np.ndarray  # int: flat pixel indices of the fan
    i00: np.ndarray  # int: flat polar index of each fan pixel's upper-left neighbour
    wr: np.ndarray  # float32: fractional depth offset
    wl: np.ndarray  # float32: fractional line offset
    n_lines: int

    def apply(self, polar: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the bilinear interpolation of ``polar`` (n_r x n_lines) into the fan pixels of ``out``."""
        p = polar.ravel()
        i00 = self.i00
        top = p[i00] + (p[i00 + 1] - p[i00]) * self.wl
        bottom = p[i00 + self.n_lines] + (p[i00 + self.n_lines + 1] - p[i00 + self.n_lines]) * self.wl
        out.ravel()[self.flat] = top + (bottom - top) * self.wr
        return out


@lru_cache(maxsize=8)
def _apex_table(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius and beam angle of every pixel offset from an apex at x = width / 2, for dy in [-PAD, 2 height).

    Scan conversion needs (r, angle) for every pixel; with the apex on the centre column and on a whole pixel
    row, those are slices of one table, so no image pays for square roots and arctangents of its own.
    """
    dy = np.arange(-APEX_PAD, 2 * height, dtype=np.float32)[:, None]
    dx = np.arange(width, dtype=np.float32)[None, :] - np.float32(width / 2)
    return np.sqrt(dx * dx + dy * dy), np.arctan2(dx, dy)


APEX_PAD = 32  # table rows above the apex: an apex may sit a little below the image's top edge


def scan_conversion(grid: PolarGrid, height: int, width: int) -> ScanConversion:
    s = grid.sector
    apex_row = int(round(s.apex_y))
    if s.apex_x != width / 2 or apex_row != s.apex_y or not -height <= apex_row < APEX_PAD:
        raise ValueError(
            f"scan conversion needs the apex on the centre column, on a whole row in [-{height}, {APEX_PAD})"
        )
    table_r, table_phi = _apex_table(width, height)
    start = APEX_PAD - apex_row
    r, phi = table_r[start: start + height], table_phi[start: start + height]
    fr = (r - np.float32(s.r_min)) * np.float32(1 / grid.dr)
    fl = (phi + np.float32(s.half_angle)) * np.float32(1 / grid.dphi)
    fan = (fr >= 0) & (fr <= grid.n_r - 1) & (fl >= 0) & (fl <= grid.n_lines - 1)
    flat = np.flatnonzero(fan)
    fr, fl = fr.ravel()[flat], fl.ravel()[flat]
    # Clamp the base cell so the +1 neighbours stay inside; the fraction then reaches exactly 1 at the edge.
    kr = np.minimum(fr.astype(np.int32), grid.n_r - 2)
    kl = np.minimum(fl.astype(np.int32), grid.n_lines - 2)
    return ScanConversion(
        fan=fan,
        flat=flat,
        i00=kr * np.int32(grid.n_lines) + kl,
        wr=fr - kr,
        wl=fl - kl,
        n_lines=grid.n_lines,
    )


def ellipse_perimeter(a: float | np.ndarray, b: float | np.ndarray) -> float | np.ndarray:
    """Ramanujan's second approximation (relative error below 1e-9 for head-like ellipses), semi-axes a, b."""
    h = ((a - b) / (a + b)) ** 2
    return np.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))


def semi_axes_for_perimeter(perimeter: float, ratio: float) -> tuple[float, float]:
    """Semi-axes (a, b = ratio * a) of the ellipse with the given perimeter; the perimeter is linear in a."""
    a = perimeter / float(ellipse_perimeter(1.0, ratio))
    return a, ratio * a
