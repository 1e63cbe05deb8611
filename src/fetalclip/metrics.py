"""Evaluation metrics with the published protocol's exact definitions.

- Macro F1 is averaged over the classes that have ground truth (``eval_labels``), also when the classifier
  was offered distractor classes that never occur as truth: a prediction of a distractor is an error for the
  true class, but the distractor gets no F1 of its own.
- VPR (validity prediction rate): among images whose true HC lies in ``hc_range`` (100-342 mm), the share
  whose true HC lies between the WHO 2.5th and 97.5th quantiles at the predicted gestational age.
- Confidence intervals: percentile bootstrap, 10,000 resamples, ``numpy.random.default_rng(42)``, drawing
  each resample's indices with its own ``rng.choice(n, n)`` call. A single ``(n_resamples, n)`` draw is not
  the same stream (numpy buffers 32-bit draws per call), so the loop is kept for reproducibility of
  published intervals; it costs well under a second.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .growth import HC_RANGE_MM, within_who_hc_band


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: ArrayLike,
    n: int = 10_000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling the rows of every array together."""
    arrays = tuple(np.asarray(a) for a in arrays)
    size = len(arrays[0])
    if any(len(a) != size for a in arrays):
        raise ValueError("bootstrap_ci: all arrays must have the same length")
    if size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n, dtype=np.float64)
    for i in range(n):
        index = rng.choice(size, size, replace=True)
        stats[i] = metric_fn(*(a[index] for a in arrays))
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _encode(values: np.ndarray, index: dict[Any, int], what: str, labels: Sequence[Any]) -> np.ndarray:
    try:
        return np.fromiter((index[v] for v in values.tolist()), dtype=np.int64, count=len(values))
    except KeyError as exc:
        unknown = sorted({v for v in values.tolist() if v not in index}, key=str)
        raise ValueError(f"{what} labels {unknown} are not among the classifier's labels {list(labels)}") from exc


def _confusion(true_codes: np.ndarray, pred_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: truth, columns: prediction (one ``bincount``, so bootstrap resamples stay cheap)."""
    return np.bincount(true_codes * n_classes + pred_codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _scores_from_confusion(confusion: np.ndarray, eval_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 for ``eval_codes``; an undefined ratio counts as 0 (sklearn's rule)."""
    tp = np.diag(confusion)[eval_codes].astype(np.float64)
    predicted = confusion.sum(axis=0)[eval_codes]
    actual = confusion.sum(axis=1)[eval_codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _macro_f1_codes(true_codes: np.ndarray, pred_codes: np.ndarray, eval_codes: np.ndarray, n_classes: int) -> float:
    return float(np.mean(_scores_from_confusion(_confusion(true_codes, pred_codes, n_classes), eval_codes)[2]))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, eval_labels: Sequence[Any] | None = None) -> float:
    """Macro F1 over ``eval_labels`` (default: the labels present in ``y_true``).

    A prediction outside ``eval_labels`` (a distractor) is a false negative for the true class and nothing else.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(eval_labels) if eval_labels is not None else sorted(set(y_true.tolist()), key=str)
    if not labels:
        return float("nan")
    # Everything outside the evaluated classes shares one extra code: it only ever counts as a miss.
    index = {label: i for i, label in enumerate(labels)}
    other = len(labels)
    true_codes = np.fromiter((index.get(v, other) for v in y_true.tolist()), dtype=np.int64, count=len(y_true))
    pred_codes = np.fromiter((index.get(v, other) for v in y_pred.tolist()), dtype=np.int64, count=len(y_pred))
    return _macro_f1_codes(true_codes, pred_codes, np.arange(len(labels)), len(labels) + 1)


def classification_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    labels: Sequence[Any],
    eval_labels: Sequence[Any] | None = None,
    scores: ArrayLike | None = None,
    top_k: Sequence[int] = (1, 2, 3),
    ci: bool = True,
    n_bootstrap: int = 10_000,
    seed: int = 42,
) -> dict[str, Any]:
    """Macro F1 (with CI), per-class precision/recall/F1, balanced accuracy, confusion matrix, top-k.

    ``labels`` is every class the classifier could output (distractors included), in score-column order;
    ``eval_labels`` the classes averaged over (default: those with ground truth, in ``labels`` order).
    Balanced accuracy is the mean recall over ``eval_labels``. The CI resamples images (rows) with
    ``bootstrap_ci``; labels are integer-coded first so 10,000 resamples of 8,000 images take about a second.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    true_codes = _encode(y_true, index, "true", labels)
    pred_codes = _encode(y_pred, index, "predicted", labels)
    if eval_labels is None:
        present = set(y_true.tolist())
        eval_labels = [label for label in labels if label in present]
    eval_labels = list(eval_labels)
    eval_codes = _encode(np.asarray(eval_labels, dtype=object), index, "evaluated", labels)
    confusion = _confusion(true_codes, pred_codes, len(labels))
    precision, recall, f1 = _scores_from_confusion(confusion, eval_codes)
    support = confusion.sum(axis=1)
    nan = float("nan")
    report: dict[str, Any] = {
        "n": int(len(y_true)),
        "labels": labels,
        "eval_labels": eval_labels,
        "macro_f1": float(np.mean(f1)) if eval_labels else nan,
        "balanced_accuracy": float(np.mean(recall)) if eval_labels else nan,
        "accuracy": float(np.mean(true_codes == pred_codes)) if len(y_true) else nan,
        "per_class": {
            str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(support[code])}
            for label, code, p, r, f in zip(eval_labels, eval_codes, precision, recall, f1)
        },
        "confusion_matrix": confusion.tolist(),
    }
    if ci and len(y_true) and eval_labels:
        n_classes = len(labels)
        report["macro_f1_ci"] = list(
            bootstrap_ci(
                lambda t, p: _macro_f1_codes(t, p, eval_codes, n_classes), true_codes, pred_codes, n=n_bootstrap, seed=seed
            )
        )
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape != (len(y_true), len(labels)):
            raise ValueError(f"scores must have shape (n, {len(labels)}) in labels order; got {scores.shape}")
        # A stable sort on the negated scores ranks ties by column order, the same rule argmax uses.
        ranking = np.argsort(-scores, axis=1, kind="stable")
        report["top_k"] = {
            f"top{k}": float(np.mean(np.any(ranking[:, :k] == true_codes[:, None], axis=1)))
            for k in top_k
            if k <= len(labels)
        }
    return report


def vpr_mask(pred_ga_days: ArrayLike, true_hc_mm: ArrayLike) -> np.ndarray:
    """Per image: does the true HC lie within the WHO 2.5-97.5% band at the predicted GA?

    The VPR spelling of ``growth.within_who_hc_band``, the one band test (this module adds no rule of its own).
    """
    return within_who_hc_band(pred_ga_days, true_hc_mm)


def vpr(
    pred_ga_days: ArrayLike,
    true_hc_mm: ArrayLike,
    hc_range: tuple[float, float] = HC_RANGE_MM,
    n_bootstrap: int = 10_000,
    seed: int = 42,
) -> dict[str, Any]:
    """Validity prediction rate (in %) over images with true HC in ``hc_range``, with bootstrap CI."""
    pred, hc = np.asarray(pred_ga_days, dtype=np.float64), np.asarray(true_hc_mm, dtype=np.float64)
    in_range = (hc >= hc_range[0]) & (hc <= hc_range[1])
    valid = within_who_hc_band(pred[in_range], hc[in_range])
    rate = 100.0 * float(np.mean(valid)) if valid.size else float("nan")
    low, high = bootstrap_ci(lambda v: 100.0 * float(np.mean(v)), valid, n=n_bootstrap, seed=seed)
    return {"vpr": rate, "ci": [low, high], "n_valid": int(valid.sum()), "n_evaluated": int(valid.size), "n_total": int(len(hc))}


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve for binary labels (ties count one half)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, np.asarray(scores)))


def dice(pred_mask: ArrayLike, true_mask: ArrayLike, label: int | None = None) -> float:
    """Dice of two masks, pooled over all their pixels (pass stacks to pool over images, as published)."""
    pred, true = np.asarray(pred_mask), np.asarray(true_mask)
    if label is not None:
        pred, true = pred == label, true == label
    pred, true = pred.astype(bool), true.astype(bool)
    total = pred.sum() + true.sum()
    return float(2.0 * np.logical_and(pred, true).sum() / total) if total else 1.0


# ============================================================================================================
# Probe and segmentation metrics (owned by the probes work; kept at the end so edits above do not collide).
# ============================================================================================================


def bootstrap_indices(size: int, n: int = 10_000, seed: int = 42) -> np.ndarray:
    """The ``[n, size]`` resample indices ``bootstrap_ci`` draws (same generator, same per-resample calls)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(size, size, replace=True) for _ in range(n)]) if size else np.zeros((n, 0), np.int64)


def mean_macro_f1_ci(
    y_true: ArrayLike,
    predictions: ArrayLike,
    eval_labels: Sequence[Any],
    n: int = 10_000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI (over test images) of the macro F1 averaged over several classifiers.

    ``predictions`` is ``[H, N]``: H heads (folds x runs) scored on the same N test images. Each resample
    draws test images once and scores every head on them, so the interval reflects test-set sampling of the
    reported mean. Vectorised through per-resample counts (resample weights), so 10,000 resamples of 25
    heads cost a few matrix products instead of 250,000 F1 calls.
    """
    y_true, preds = np.asarray(y_true), np.atleast_2d(np.asarray(predictions))
    labels = list(eval_labels)
    size = len(y_true)
    if size == 0 or not labels:
        return float("nan"), float("nan")
    weights = np.stack([np.bincount(row, minlength=size) for row in bootstrap_indices(size, n, seed)]).astype(np.float64)
    truth = np.stack([y_true == label for label in labels], axis=1).astype(np.float64)  # [N, C]
    predicted = np.stack([preds == label for label in labels], axis=2).astype(np.float64)  # [H, N, C]
    hits = predicted * truth[None]
    tp = np.einsum("bn,hnc->bhc", weights, hits)
    n_pred = np.einsum("bn,hnc->bhc", weights, predicted)
    n_true = (weights @ truth)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(n_pred + n_true > 0, 2 * tp / (n_pred + n_true), 0.0)
    stats = f1.mean(axis=2).mean(axis=1)
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def dice_per_label(
    pred_masks: ArrayLike | Sequence[ArrayLike], true_masks: ArrayLike | Sequence[ArrayLike], labels: Sequence[int]
) -> dict[int, float]:
    """Dice per label pooled over every pixel of a set of label maps (images may differ in size)."""
    pairs = list(zip(pred_masks, true_masks))
    out = {}
    for label in labels:
        both = total = 0
        for pred, true in pairs:
            p, t = np.asarray(pred) == label, np.asarray(true) == label
            both += int(np.logical_and(p, t).sum())
            total += int(p.sum() + t.sum())
        out[int(label)] = float(2.0 * both / total) if total else 1.0
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)


def hausdorff_mm(pred_mask: ArrayLike, true_mask: ArrayLike, spacing_mm: float | Sequence[float] = 1.0) -> float:
    """Symmetric Hausdorff distance between the boundaries of two binary masks, in mm.

    Boundary pixels are those of a mask with a background 8-neighbour; distances come from Euclidean distance
    transforms with the pixel spacing, so anisotropic spacing (row, column) is handled. Both masks empty: 0;
    exactly one empty: ``inf`` (the measurement failed, which a mean must not hide).
    """
    from scipy import ndimage

    pred, true = np.asarray(pred_mask).astype(bool), np.asarray(true_mask).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"hausdorff_mm: mask shapes differ {pred.shape} vs {true.shape}")
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return float("inf")
    sampling = (spacing_mm, spacing_mm) if np.isscalar(spacing_mm) else tuple(spacing_mm)
    edge_pred, edge_true = _boundary(pred), _boundary(true)
    to_true = ndimage.distance_transform_edt(~edge_true, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~edge_pred, sampling=sampling)
    return float(max(to_true[edge_pred].max(), to_pred[edge_true].max()))


def auroc_ci(y_true: ArrayLike, scores: ArrayLike, n: int = 10_000, seed: int = 42, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, with ``bootstrap_ci``'s resamples, computed in closed form.

    For resample counts ``w`` the AUROC is ``w_pos . C . w_neg / (sum w_pos * sum w_neg)`` with ``C`` the
    positive-versus-negative comparison matrix (1 greater, 1/2 tie), so 10,000 resamples are two matrix
    products rather than 10,000 calls of a sorting AUROC. Resamples holding one class only are left out.
    """
    y, s = np.asarray(y_true).astype(bool), np.asarray(scores, dtype=np.float64)
    size = len(y)
    if size == 0 or y.all() or not y.any():
        return float("nan"), float("nan")
    weights = np.stack([np.bincount(row, minlength=size) for row in bootstrap_indices(size, n, seed)]).astype(np.float64)
    pos, neg = s[y], s[~y]
    compare = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    w_pos, w_neg = weights[:, y], weights[:, ~y]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.einsum("bp,pn,bn->b", w_pos, compare, w_neg) / (w_pos.sum(1) * w_neg.sum(1))
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)
