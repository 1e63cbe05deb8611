"""Clip-level binary detection (the published congenital-heart-defect protocol) on frozen frame embeddings.

Each clip contributes a fixed number of frames, sampled evenly over its length; their embeddings are
concatenated *in temporal order* into one vector and a single linear layer scores the clip, so the probe can
use the order of events as well as their content. Frames are ordinary feature-cache entries (keyed by their
pixels), so clips that share frames, or a second run, encode nothing again.

Evaluation is patient-level k-fold cross-validation repeated over runs, stratified by class (every fold, and
every inner hold-out, gets its share of both classes: pooled out-of-fold scores from folds of different class
mix would otherwise rank below chance with no signal at all): every fold is held out once, a head is trained
on the other folds (an inner patient hold-out picks its best epoch), and AUROC is reported per
fold x run (mean, SD) together with a percentile bootstrap CI over clips of the out-of-fold scores averaged
over runs. With an external ``test`` set, each fold's head scores that set instead.

Frame sources are whatever the data layer reads: a folder of frame images, a video, a multi-frame DICOM, or
a multi-frame TIFF/GIF. Frames are chosen here, not by the data layer's ``even:N`` selection, because a
clip shorter than N must still give N frames (repeats) for the concatenated vector to keep its length.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.datasets import SampleDataset
from ..data.readers import RASTER_SUFFIXES, frame_files, read_frame, source_kind
from ..data.splits import cross_validation_parts, patient_holdout
from ..errors import FetalCLIPError, ImageReadError
from ..metrics import auroc, auroc_ci
from .probe_linear import ProbeRun, train_linear_heads
from .probe_recipe import ProbeRecipe, RecipeError


def even_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (repeats when the clip is shorter)."""
    if total <= 0:
        raise ValueError("clip has no frames")
    return [int(round(x)) for x in np.linspace(0, total - 1, count)]


def list_clip_frames(source: str) -> list[tuple[str, int | None]]:
    """Every frame of a clip as (source, frame index or ``None``), in temporal order.

    Frame folders list their files (natural order, as the data layer sorts them), so each frame is its own
    file and the feature cache can index it without decoding; videos and multi-frame DICOM/TIFF give one
    (file, index) per frame.
    """
    path = Path(source)
    kind = source_kind(path) if path.exists() else "missing"
    if kind == "missing":
        raise ImageReadError(path, "no such clip")
    if kind == "frames":
        files = frame_files(path)
        if not files:
            raise ImageReadError(path, "clip folder holds no frame images")
        return [(str(p), None) for p in files]
    if kind == "video":
        from ..data.video import video_frame_count

        count = video_frame_count(path)
    elif kind == "dicom":
        from ..data.dicom import dicom_frame_count

        count = dicom_frame_count(path)
    elif path.suffix.lower() in RASTER_SUFFIXES + (".gif",):
        count = _multi_frame_count(path)
    else:
        raise ImageReadError(path, "unsupported clip (use a folder of frames, a video, a multi-frame DICOM or TIFF)")
    return [(str(path), i) for i in range(count)]


def _multi_frame_count(path: Path) -> int:
    from ..data.readers import raster_frame_count

    return raster_frame_count(path)  # the readers' budget and error rules, as for every other read


def read_clip_frame(record: dict[str, Any]) -> dict[str, Any]:
    """Loader for one frame record of ``clip_frame_dataset`` (through the data layer's readers)."""
    fields = {k: copy.deepcopy(v) for k, v in record.items() if k not in ("source", "frame_index")}
    return read_frame(record["source"], record.get("frame_index"), **fields)


def clip_frame_dataset(
    clips: SampleDataset,
    n_frames: int,
    frame_lister: Callable[[str], list[tuple[str, int | None]]] = list_clip_frames,
) -> SampleDataset:
    """One record per sampled frame (clip-major, time order), ``n_frames`` per clip."""
    records = []
    for clip in clips.records:
        frames = frame_lister(clip["source"])
        for position in even_indices(len(frames), n_frames):
            source, index = frames[position]
            records.append({"source": source, "frame_index": index, "pixel_spacing_mm": clip.get("pixel_spacing_mm"),
                            "label": clip.get("label"), "patient": clip.get("patient"),
                            "metadata": {"clip": clip["source"]}})
    return SampleDataset(f"{clips.name}#frames{n_frames}", records, loader=read_clip_frame)


def clip_features(cache, clips: SampleDataset, n_frames: int) -> np.ndarray:
    """``[n_clips, n_frames * D]``: frame embeddings concatenated in temporal order."""
    frames = clip_frame_dataset(clips, n_frames)
    embeddings = cache.embeddings(frames)
    return embeddings.reshape(len(clips), n_frames * embeddings.shape[1])


def binary_targets(labels: Sequence[Any], positive: str | None = None) -> tuple[np.ndarray, str, str]:
    """0/1 targets; ``positive`` names the positive class (default: the larger of the two sorted labels)."""
    classes = sorted({str(label) for label in labels})
    if len(classes) != 2:
        raise FetalCLIPError(f"clip probe needs exactly two classes; found {classes}")
    positive = positive if positive is not None else classes[1]
    if positive not in classes:
        raise FetalCLIPError(f"positive class {positive!r} is not among the labels {classes}")
    negative = classes[0] if classes[1] == positive else classes[1]
    return np.array([int(str(label) == positive) for label in labels]), positive, negative


def clip_probe(
    x: np.ndarray,
    labels: Sequence[Any],
    patients: Sequence[Any],
    recipe: ProbeRecipe,
    test: tuple[np.ndarray, Sequence[Any]] | None = None,
    *,
    positive: str | None = None,
    seed: int = 0,
    n_bootstrap: int = 10_000,
) -> ProbeRun:
    """AUROC of a linear layer on concatenated frame embeddings, over patient-level folds x runs.

    The run's ``head`` is the one with the lowest validation loss; its probability columns are
    ``[negative, positive]``.
    """
    lr, weight_decay = recipe.single_point("clip probe")
    folds, runs = recipe.folds, recipe.runs
    if folds < 2:
        raise RecipeError("folds", folds, "must be >= 2 for the clip probe (each fold is held out once)")
    y, positive, negative = binary_targets(labels, positive)
    patients = [str(p) for p in patients]
    if test is not None:
        unknown = sorted({str(label) for label in test[1]} - {positive, negative})
        if unknown:
            raise FetalCLIPError(f"external test labels {unknown} are not {positive!r}/{negative!r}")
        y_ext = np.array([int(str(label) == positive) for label in test[1]])
        ext_scores = np.zeros((runs, folds, len(y_ext)))
    parts = cross_validation_parts(patients, folds, seed, strata=y)
    oof = np.full((runs, len(y)), np.nan)
    per_head, best = [], None
    for r in range(runs):
        for k in range(folds):
            held = parts[k]
            rest = sorted(i for j, p in enumerate(parts) if j != k for i in p)
            if test is not None:  # every clip trains or validates; fold k validates
                train, val = rest, held
            else:
                train, val = patient_holdout(patients, rest, seed * 7 + k * 13 + r, strata=y)
            head = train_linear_heads(x[train], y[train], x[val], y[val], 2, recipe, seed=seed * 100_003 + k * 1_009 + r)[0]
            if best is None or head.val_loss < best.val_loss:
                best = head
            if test is not None:
                scores = head.probabilities(test[0])[:, 1]
                ext_scores[r, k] = scores
                per_head.append({"fold": k, "run": r, "auroc": auroc(y_ext, scores), "best_epoch": head.best_epoch})
            else:
                scores = head.probabilities(x[held])[:, 1]
                oof[r, held] = scores
                per_head.append({"fold": k, "run": r, "auroc": auroc(y[held], scores), "best_epoch": head.best_epoch})
    values = np.array([h["auroc"] for h in per_head], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if test is not None:
        truth, mean_scores = y_ext, ext_scores.mean(axis=(0, 1))
    else:
        truth, mean_scores = y, oof.mean(axis=0)
    low, high = auroc_ci(truth, mean_scores, n=n_bootstrap, seed=42)
    report = {
        "task": "clip-probe",
        "positive": positive,
        "negative": negative,
        "n_clips": int(len(y)),
        "n_test": int(len(truth)),
        "test_source": "external" if test is not None else "cross-validation",
        "folds": folds,
        "runs": runs,
        "seed": seed,
        "auroc_mean": float(finite.mean()) if finite.size else float("nan"),
        "auroc_sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "auroc_pooled": auroc(truth, mean_scores),
        "auroc_pooled_ci": [low, high],
        "undefined_folds": int(len(values) - finite.size),
        "heads": per_head,
    }
    return ProbeRun(report, best)


