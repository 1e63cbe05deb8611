"""Analytic shapes the phantom's anatomy is drawn with: filled ellipses (with an optional hole) and capsules.

Anatomy is described in millimetres in a local frame (see ``anatomy.py``) and placed on the image by one
similarity transform (scale = 1 / pixel spacing, rotation, optional mirror, offset), so a structure's size in
pixels is exactly its size in mm over the spacing: that is what makes the rendered masks ground truth for
biometry. Each shape paints three fields on the beam-line grid (echo power inside it, a specular boundary
whose brightness depends on the angle between boundary normal and beam, and bone attenuation that casts a
shadow down the beam) and, when it carries a label, its filled region into the pixel mask. Painting works on
the window of the grid around the shape only, so a small structure costs a small fraction of a full pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .geometry import PolarGrid, pixel_window

_CIRCLE = (np.cos(np.linspace(0, 2 * np.pi, 48, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False)))
_UNIT = np.linspace(0, 1, 24)


@dataclass(frozen=True)
class Placement:
    """Millimetre frame -> pixels: ``p_px = (ox, oy) + R(angle) @ (x, mirror * y) / spacing``."""

    spacing_mm: float
    angle: float
    ox: float
    oy: float
    mirror: bool = False

    def point(self, x: float | np.ndarray, y: float | np.ndarray) -> tuple:
        y = -y if self.mirror else y
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.ox + (c * x - s * y) / self.spacing_mm, self.oy + (s * x + c * y) / self.spacing_mm

    def direction(self, angle: float) -> float:
        return self.angle + (-angle if self.mirror else angle)


@dataclass
class Fields:
    """What shapes paint on the beam-line grid: echo power, specular amplitude, bone attenuation per mm."""

    grid: PolarGrid
    echo: np.ndarray
    specular: np.ndarray
    bone: np.ndarray
    bone_lines: tuple[int, int, int] | None = None  # (first row, first line, end line) touched by bone

    def add_bone(self, win: tuple[slice, slice], inside: np.ndarray, value: float) -> None:
        self.bone[win][inside] += value
        rows, lines = win
        if self.bone_lines is None:
            self.bone_lines = (rows.start, lines.start, lines.stop)
        else:
            k, j0, j1 = self.bone_lines
            self.bone_lines = (min(k, rows.start), min(j0, lines.start), max(j1, lines.stop))


def _local(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    return dx * np.float32(c) + dy * np.float32(s), dy * np.float32(c) - dx * np.float32(s)


def _angle_factor(nx: np.ndarray, ny: np.ndarray, bx: np.ndarray, by: np.ndarray, floor: float) -> np.ndarray:
    """Specular reflections are strongest where the boundary faces the beam (normal parallel to it)."""
    cos2 = (nx * bx + ny * by) ** 2 / (nx * nx + ny * ny + np.float32(1e-12))
    return np.float32(floor) + np.float32(1 - floor) * cos2


@dataclass(frozen=True)
class Ellipse:
    """A filled ellipse (semi-axes a, b along and across ``angle``), optionally with an elliptical hole.

    ``level``: echo power inside (None leaves what is there); ``edge``: specular amplitude on the outline
    (and on the hole's outline); ``bone``: attenuation per mm inside (shadowing); ``label``: mask name.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    level: float | None = None
    edge: float = 0.0
    edge_px: float = 1.0
    hole_a: float = 0.0
    hole_b: float = 0.0
    bone: float = 0.0
    label: str | None = None
    edge_floor: float = 0.25

    def placed(self, p: Placement) -> "Ellipse":
        cx, cy = p.point(self.cx, self.cy)
        k = 1.0 / p.spacing_mm
        return replace(
            self, cx=cx, cy=cy, a=self.a * k, b=self.b * k, hole_a=self.hole_a * k, hole_b=self.hole_b * k,
            angle=p.direction(self.angle),
        )

    def outline(self) -> tuple[np.ndarray, np.ndarray]:
        u, v = self.a * _CIRCLE[0], self.b * _CIRCLE[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + c * u - s * v, self.cy + s * u + c * v

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    @property
    def radius(self) -> float:
        """Of a disc holding the shape and its edge band."""
        return max(self.a, self.b) + 3 * self.edge_px

    def _inside(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = (u * np.float32(1 / self.a)) ** 2 + (v * np.float32(1 / self.b)) ** 2
        inside = q <= 1
        if self.hole_a > 0:
            inside &= (u * np.float32(1 / self.hole_a)) ** 2 + (v * np.float32(1 / self.hole_b)) ** 2 > 1
        return inside, q

    def paint(self, f: Fields) -> None:
        win = f.grid.window(self.cx, self.cy, self.radius)
        if win is None:
            return
        u, v = _local(f.grid.x[win], f.grid.y[win], self.cx, self.cy, self.angle)
        inside, q = self._inside(u, v)
        if self.level is not None:
            f.echo[win][inside] = self.level
        if self.bone:
            f.add_bone(win, inside, self.bone)
        if self.edge:
            bx, by = f.grid.beam_x[:, win[1]], f.grid.beam_y[:, win[1]]
            c, s = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
            rr = np.sqrt(u * u + v * v)
            band = self._band(rr, q)
            if self.hole_a > 0:
                qh = (u * np.float32(1 / self.hole_a)) ** 2 + (v * np.float32(1 / self.hole_b)) ** 2
                band += self._band(rr, qh)
            nu, nv = u * np.float32(1 / self.a**2), v * np.float32(1 / self.b**2)
            factor = _angle_factor(c * nu - s * nv, s * nu + c * nv, bx, by, self.edge_floor)
            f.specular[win] += np.float32(self.edge) * band * factor

    def _band(self, rr: np.ndarray, q: np.ndarray) -> np.ndarray:
        # Distance to the outline along the ray from the centre: |p| (1 - 1/rho), exact for circles.
        d = rr * (1 - 1 / np.sqrt(np.maximum(q, np.float32(1e-6))))
        return np.exp(-((d * np.float32(1 / self.edge_px)) ** 2))

    def mask_region(self, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
        win = pixel_window(height, width, self.cx, self.cy, max(self.a, self.b) + 1)
        if win is None:
            return None
        ys = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        xs = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        u, v = _local(xs, ys, self.cx, self.cy, self.angle)
        return win, self._inside(u, v)[0]


@dataclass(frozen=True)
class Capsule:
    """A segment from (x0, y0) to (x1, y1) thickened by ``half_width``; with half_width 0 and an edge, a line."""

    x0: float
    y0: float
    x1: float
    y1: float
    half_width: float
    level: float | None = None
    edge: float = 0.0
    edge_px: float = 1.0
    bone: float = 0.0
    label: str | None = None
    edge_floor: float = 0.25

    def placed(self, p: Placement) -> "Capsule":
        x0, y0 = p.point(self.x0, self.y0)
        x1, y1 = p.point(self.x1, self.y1)
        return replace(self, x0=x0, y0=y0, x1=x1, y1=y1, half_width=self.half_width / p.spacing_mm)

    def outline(self) -> tuple[np.ndarray, np.ndarray]:
        t = _UNIT
        nx, ny = self._normal()
        xs = np.concatenate([self.x0 + t * (self.x1 - self.x0) + s * self.half_width * nx for s in (-1, 1)])
        ys = np.concatenate([self.y0 + t * (self.y1 - self.y0) + s * self.half_width * ny for s in (-1, 1)])
        return xs, ys

    def _normal(self) -> tuple[float, float]:
        length = math.hypot(self.x1 - self.x0, self.y1 - self.y0) or 1.0
        return -(self.y1 - self.y0) / length, (self.x1 - self.x0) / length

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def radius(self) -> float:
        """Of a disc around ``centre`` holding the shape and its edge band."""
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0) / 2 + self.half_width + 3 * self.edge_px

    def _distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = dx * dx + dy * dy or 1.0
        px, py = x - np.float32(self.x0), y - np.float32(self.y0)
        t = np.clip((px * np.float32(dx) + py * np.float32(dy)) * np.float32(1 / length2), 0, 1)
        return np.hypot(px - t * np.float32(dx), py - t * np.float32(dy))

    def paint(self, f: Fields) -> None:
        win = f.grid.window(*self.centre, self.radius)
        if win is None:
            return
        d = self._distance(f.grid.x[win], f.grid.y[win])
        inside = d <= self.half_width
        if self.level is not None:
            f.echo[win][inside] = self.level
        if self.bone:
            f.add_bone(win, inside, self.bone)
        if self.edge:
            nx, ny = self._normal()
            bx, by = f.grid.beam_x[:, win[1]], f.grid.beam_y[:, win[1]]
            factor = _angle_factor(np.float32(nx), np.float32(ny), bx, by, self.edge_floor)
            band = np.exp(-(((d - np.float32(self.half_width)) * np.float32(1 / self.edge_px)) ** 2))
            f.specular[win] += np.float32(self.edge) * band * factor

    def mask_region(self, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
        cx, cy = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        half_length = math.hypot(self.x1 - self.x0, self.y1 - self.y0) / 2
        win = pixel_window(height, width, cx, cy, half_length + self.half_width + 1)
        if win is None:
            return None
        ys = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        xs = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        return win, self._distance(xs, ys) <= self.half_width


Shape = Ellipse | Capsule


def paint_mask(shapes: list[Shape], labels: dict[str, int], height: int, width: int) -> np.ndarray:
    """uint8 label map: the first labelled shape is the primary structure; later ones are clipped inside it."""
    mask = np.zeros((height, width), np.uint8)
    primary = None
    for shape in shapes:
        if shape.label is None:
            continue
        region = shape.mask_region(height, width)
        if region is None:
            continue
        win, inside = region
        value = labels[shape.label]
        view = mask[win]
        if primary is None or shape.label == primary:
            primary = shape.label
            view[inside] = value
        else:
            view[inside & (view > 0)] = value
    return mask
