"""Probe sweeps through a standard plane, with the frame that shows it best known: the phantom's test of
"find the best frame" (``tasks.predictor.Predictor.sweep``).

A sweep is two samples of the image phantom for the same index, one of the sweep's standard plane and one
of the ``other`` class (what the probe shows off the plane), played over ``frames`` frames. Frame ``t`` shows
the standard view with weight ``w(t) = exp(-((t - best) / width)^2 / 2)`` over the off-plane view, each with
its own speckle per frame (the tissue moves under the beam), so the plane comes into view, is clearest at
``best``, and goes again. ``best`` is drawn per sweep from the middle half of the frames, so its position
says nothing by itself. A pixel blend is not how a real probe moves, but it has the property the test needs:
the standard-plane content of each frame rises and falls with a known peak.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .render import SimConfig, plan_sample, render_plan


@dataclass(frozen=True)
class SweepConfig:
    seed: int = 0
    size: int = 224
    frames: int = 24
    plane: str = "brain"
    width: float = 3.0  # frames over which the plane fades (the Gaussian's sigma)

    def __post_init__(self) -> None:
        if self.frames < 4:
            raise ValueError(f"a sweep needs at least 4 frames, not {self.frames}")
        if not self.width > 0:
            raise ValueError("width must be positive")
        _ = self.standard, self.off_plane  # validates the plane name with the image phantom's message

    @property
    def standard(self) -> SimConfig:
        return SimConfig(seed=self.seed, size=self.size, classes=(self.plane,))

    @property
    def off_plane(self) -> SimConfig:
        return SimConfig(seed=self.seed, size=self.size, classes=("other",))


@dataclass
class Sweep:
    index: int
    plane: str
    best_frame: int
    frames: list[np.ndarray]
    spacing_mm: float
    weights: list[float]


def render_sweep(config: SweepConfig, index: int) -> Sweep:
    """Sweep ``index``: its frames in time order and the frame where its standard plane is clearest."""
    rng = np.random.default_rng([config.seed, 11, index])
    lo, hi = config.frames // 4, config.frames - 1 - config.frames // 4
    best = int(rng.integers(lo, hi + 1))
    standard, off = plan_sample(config.standard, index), plan_sample(config.off_plane, index)
    frames, weights = [], []
    for t in range(config.frames):
        w = math.exp(-0.5 * ((t - best) / config.width) ** 2)
        a = render_plan(standard, (config.seed, 12, index, t), (config.seed, 13, index))[0].astype(np.float32)
        b = render_plan(off, (config.seed, 14, index, t), (config.seed, 15, index))[0].astype(np.float32)
        if b.shape != a.shape:  # the two views are drawn at one size; guard against a renderer change
            raise ValueError(f"sweep {index}: views of different sizes {a.shape} and {b.shape}")
        frames.append(np.clip(w * a + (1 - w) * b, 0, 255).astype(np.uint8))
        weights.append(w)
    return Sweep(index, config.plane, best, frames, standard.spacing_mm, weights)


SWEEP_COLUMNS = ("path", "label", "best_frame", "frames", "pixel_spacing_mm")


def write_sweeps(n: int, config: SweepConfig, out: str | Path, progress: Callable[[Iterable[int]], Iterable[int]] | None = None
                 ) -> dict[str, Any]:
    """Render ``n`` sweeps into ``out``: ``sweeps/NNNNNN/TTT.png``, ``manifest.csv`` (written last) and ``sweep.json``."""
    from ..io import write_csv_atomic, write_json_atomic
    from .dataset import save_png
    from .render import RENDERER_VERSION

    out = Path(out)
    rows = []
    indices: Iterable[int] = range(n) if progress is None else progress(range(n))
    for index in indices:
        sweep = render_sweep(config, index)
        folder = f"sweeps/{index:06d}"
        for t, frame in enumerate(sweep.frames):
            save_png(frame, out / folder / f"{t:03d}.png")
        rows.append({"path": folder, "label": sweep.plane, "best_frame": str(sweep.best_frame),
                     "frames": str(config.frames), "pixel_spacing_mm": f"{sweep.spacing_mm:.6f}"})
    summary = {"n": n, "renderer": RENDERER_VERSION, "config": asdict(config), "spec": f"csv:{out / 'manifest.csv'}"}
    write_json_atomic(out / "sweep.json", summary)
    write_csv_atomic(out / "manifest.csv", SWEEP_COLUMNS, rows)
    return summary


__all__ = ["SWEEP_COLUMNS", "Sweep", "SweepConfig", "render_sweep", "write_sweeps"]
