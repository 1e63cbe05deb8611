"""The report's figures, drawn with matplotlib and returned as PNG bytes.

Every function takes plain data (lists, arrays) rather than result entries, so a figure can be redrawn from
``results.json`` or from a notebook. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas,
never through ``pyplot``: no global figure state, no GUI backend, nothing to close, safe in a server thread.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

from ..growth import who_hc

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _colours(count: int):
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def ga_scatter(pred_ga_days: Sequence[float], true_hc_mm: Sequence[float], title: str = "",
               hc_range: tuple[float, float] | None = None) -> bytes:
    """Predicted gestational age against true head circumference over the WHO 2.5-97.5% band.

    With ``hc_range`` (the range VPR is computed over) points outside it are drawn grey as not scored; without it
    every point is taken as scored (the benchmark passes only the scored ones).
    """
    from ..metrics import vpr_mask

    days = np.asarray(pred_ga_days, dtype=np.float64)
    pred, hc = days / 7.0, np.asarray(true_hc_mm, dtype=np.float64)
    weeks = np.linspace(14.0, 40.0, 261)
    figure = _figure(5.2, 4.0)
    axes = figure.add_subplot()
    axes.fill_between(weeks, who_hc(weeks * 7, 0.025), who_hc(weeks * 7, 0.975), color="#9ecae1", alpha=0.5,
                      label="WHO 2.5-97.5%")
    axes.plot(weeks, who_hc(weeks * 7, 0.5), color="#3182bd", lw=1.2, label="WHO median")
    known = np.isfinite(hc)
    scored = known if hc_range is None else known & (hc >= hc_range[0]) & (hc <= hc_range[1])
    inside = vpr_mask(days, hc)
    for mask, colour, label in ((scored & inside, "#31a354", "within band"), (scored & ~inside, "#de2d26", "outside"),
                                (known & ~scored, "#969696", "HC outside the scored range")):
        if mask.any() or label != "HC outside the scored range":
            axes.scatter(pred[mask], hc[mask], s=9, color=colour, label=f"{label} ({int(mask.sum())})")
    axes.set_xlabel("predicted gestational age (weeks)")
    axes.set_ylabel("true head circumference (mm)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(alpha=0.3)
    return _png(figure)


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "") -> bytes:
    """Row-normalised confusion matrix (true classes as rows), with counts in the cells.

    Rows with no ground truth (distractor classes) are dropped: they carry no information and would dominate
    the picture for zero-shot classifiers offered many distractors.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    labels = list(labels)
    rows = [i for i in range(len(labels)) if counts[i].sum() > 0] or list(range(len(labels)))
    shown = counts[rows]
    rates = shown / np.clip(shown.sum(axis=1, keepdims=True), 1, None)
    size = max(3.2, 0.55 * len(labels) + 1.6)
    figure = _figure(size, max(2.6, 0.5 * len(rows) + 1.4))
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(len(rows)):
        for c in range(len(labels)):
            if shown[r, c]:
                axes.text(c, r, f"{int(shown[r, c])}", ha="center", va="center", fontsize=7,
                          color="white" if rates[r, c] > 0.6 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(rows)), [labels[i] for i in rows], fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return _png(figure)


def fewshot_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], metric: str = "macro F1", title: str = "") -> bytes:
    """One line per model: metric (mean +- SD) against the number of labelled patients."""
    figure = _figure(5.2, 3.6)
    axes = figure.add_subplot()
    for colour, (name, curve) in zip(_colours(len(curves)), curves.items()):
        n = np.asarray(curve["n"], dtype=np.float64)
        mean = np.asarray(curve["mean"], dtype=np.float64)
        sd = np.asarray(curve.get("sd") or np.zeros_like(mean), dtype=np.float64)
        axes.errorbar(n, mean, yerr=sd, marker="o", ms=4, capsize=3, color=colour, label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("labelled patients per class set (N)")
    axes.set_ylabel(metric)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _png(figure)


def embedding_map(xy: Sequence[Sequence[float]], labels: Sequence[Any], method: str = "", title: str = "") -> bytes:
    """Scatter of 2-D embedding coordinates, one colour per class."""
    points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    labels = [str(label) for label in labels]
    classes = sorted(set(labels))
    figure = _figure(5.0, 4.2)
    axes = figure.add_subplot()
    for colour, name in zip(_colours(len(classes)), classes):
        mask = np.array([label == name for label in labels], dtype=bool)
        axes.scatter(points[mask, 0], points[mask, 1], s=10, color=colour, label=f"{name} ({mask.sum()})", alpha=0.8)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"{title} ({method})" if method else title, fontsize=10)
    axes.legend(fontsize=7, markerscale=1.5, loc="best")
    return _png(figure)


def cam_grid(cams: Sequence[Mapping[str, Any]], title: str = "", max_per_class: int = 3) -> bytes:
    """Class-activation maps overlaid on the model's input images: one row per class."""
    import base64

    from PIL import Image

    from ..tasks.explain import overlay

    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for item in cams:
        by_class.setdefault(str(item["label"]), []).append(item)
    classes = sorted(by_class)
    columns = max(1, min(max_per_class, max((len(v) for v in by_class.values()), default=1)))
    figure = _figure(1.9 * columns + 0.4, 2.0 * max(1, len(classes)) + 0.3)
    grid = figure.add_gridspec(max(1, len(classes)), columns)
    for row, name in enumerate(classes):
        for column, item in enumerate(by_class[name][:columns]):
            axes = figure.add_subplot(grid[row, column])
            image = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["image_png"]))).convert("RGB"))
            axes.imshow(overlay(image, np.asarray(item["cam"], dtype=np.float32)))
            mark = "" if item.get("predicted") in (None, item["label"]) else f" (pred. {item['predicted']})"
            axes.set_title(f"{name}{mark}", fontsize=7)
            axes.set_xticks([])
            axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return _png(figure)


def cam_panels(image: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], title: str = "") -> bytes:
    """One image beside its maps, in a row: the input the model saw, then one overlay per (caption, map)."""
    from ..tasks.explain import overlay

    figure = _figure(2.3 * (len(maps) + 1), 2.7)
    panels = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    panels[0].imshow(image)
    panels[0].set_title("model input", fontsize=8)
    for axes, (caption, cam) in zip(panels[1:], maps):
        axes.imshow(overlay(image, np.asarray(cam, dtype=np.float32)))
        axes.set_title(caption, fontsize=8)
    for axes in panels:
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=8)
    return _png(figure)


__all__ = ["cam_grid", "cam_panels", "confusion_matrix", "embedding_map", "fewshot_curves", "ga_scatter"]
