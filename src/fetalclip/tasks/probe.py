"""Linear probes on frozen (cached) image embeddings: patient-level folds x runs, macro F1 with a bootstrap CI.

Everything here works on feature matrices, never on images: the feature cache (``features.py``) turns a
dataset into embeddings once (``probe_data``), and a probe then trains many small heads over them in seconds
(``probe_linear``: a whole lr / weight-decay grid in one pass, each head keeping its best-validation-loss
epoch, the published protocol). The grid point reported is the one with the lowest mean validation loss over
folds x runs, so the test split never picks hyperparameters. How heads train is one ``ProbeRecipe``; the few-shot
curve is ``probe_fewshot``, the clip probe ``probe_clips``, the benchmark's task objects ``probe_tasks``.

``linear_probe`` returns the JSON report and the head with the lowest validation loss (of the chosen grid
point), which ``tasks.heads`` can save for prediction.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data.sample import patient_id
from ..data.splits import index_splits
from ..errors import FetalCLIPError
from ..metrics import classification_report, macro_f1, mean_macro_f1_ci
from .probe_fewshot import FEWSHOT_SIZES, fewshot_curve, plot_curve
from .probe_linear import ProbeData, ProbeRun, TrainedHead, class_targets, single_thread, train_linear_heads, training_rows
from .probe_recipe import ProbeRecipe, RecipeError


def linear_probe(
    data: ProbeData,
    recipe: ProbeRecipe,
    test: ProbeData | None = None,
    *,
    seed: int = 0,
    n_bootstrap: int = 10_000,
    progress: bool = False,
) -> ProbeRun:
    """Linear probe: patient-level folds x runs; macro F1 (mean, SD, CI) and per-class F1 on the test split.

    The test split is ``test`` when given (an external set), else the records' own test split when it is
    patient-disjoint, else a seeded patient hold-out of ``recipe.test_fraction``.
    """
    from ..progress import progress_bar

    grid = recipe.points
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise FetalCLIPError(f"linear probe needs at least two classes; found {classes}")
    splits = index_splits(data.patients, folds=recipe.folds, seed=seed, test_fraction=recipe.test_fraction,
                          record_splits=data.splits, with_test=test is None)
    classes, y_all, x_test, y_test, eval_labels = class_targets(data, test, splits.test)
    if not len(y_test):
        raise FetalCLIPError("the test split is empty")

    per_grid: list[list[tuple[TrainedHead, np.ndarray]]] = [[] for _ in grid]
    jobs = [(k, r) for k in range(len(splits.folds)) for r in range(recipe.runs)]
    for k, r in progress_bar(jobs, desc="probe", disable=not progress):
        train, val = splits.folds[k]
        x_train, rows = training_rows(data, train)
        heads = train_linear_heads(x_train, y_all[rows], data.x[val], y_all[val], len(classes), recipe,
                                   seed=seed * 100_003 + k * 1_009 + r)
        for g, head in enumerate(heads):
            per_grid[g].append((head, head.predict(x_test)))

    grid_rows = []
    for g, (lr, wd) in enumerate(grid):
        f1s = [macro_f1(y_test, p, eval_labels) for _, p in per_grid[g]]
        grid_rows.append({"lr": lr, "weight_decay": wd, "val_loss": float(np.mean([h.val_loss for h, _ in per_grid[g]])),
                          "macro_f1_mean": float(np.mean(f1s)), "macro_f1_sd": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0})
    chosen = int(np.argmin([row["val_loss"] for row in grid_rows]))
    heads = [head for head, _ in per_grid[chosen]]
    preds = np.stack([p for _, p in per_grid[chosen]])
    report = _report(data, test, splits, recipe, seed, classes, y_test, eval_labels, preds, n_bootstrap,
                     chosen={"lr": grid[chosen][0], "weight_decay": grid[chosen][1]}, best_epochs=[h.best_epoch for h in heads])
    report.update(grid=grid_rows, splits=splits.to_dict(), notes=splits.notes)
    return ProbeRun(report, min(heads, key=lambda h: h.val_loss))


def _report(data, test, splits, recipe, seed, classes, y_test, eval_labels, preds, n_bootstrap, chosen, best_epochs) -> dict[str, Any]:
    f1s = np.array([macro_f1(y_test, p, eval_labels) for p in preds])
    per_class = {}
    for label in eval_labels:
        values = [classification_report(y_test, p, list(range(len(classes))), eval_labels, ci=False)["per_class"][str(label)]["f1"] for p in preds]
        per_class[classes[label]] = {"f1_mean": float(np.mean(values)), "f1_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                     "support": int(np.sum(y_test == label))}
    low, high = mean_macro_f1_ci(y_test, preds, eval_labels, n=n_bootstrap, seed=42)
    # Test predictions of every head pooled (counts add up to heads x test images): what the probe confuses.
    pooled = classification_report(np.tile(y_test, len(preds)), preds.reshape(-1), list(range(len(classes))), eval_labels, ci=False)
    return {
        "task": "linear-probe",
        "classes": classes,
        "n_train_val": int(sum(len(v) for v in [splits.folds[0][0], splits.folds[0][1]])),
        "n_test": int(len(y_test)),
        "test_source": "external" if test is not None else splits.source,
        "folds": len(splits.folds),
        "runs": recipe.runs,
        "heads": int(len(preds)),
        "seed": seed,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "augmented_copies": 0 if data.augmented is None else int(len(data.augmented)),
        "standardize": recipe.standardize,
        "chosen": chosen,
        "macro_f1_mean": float(f1s.mean()),
        "macro_f1_sd": float(f1s.std(ddof=1)) if len(f1s) > 1 else 0.0,
        "macro_f1_ci": [low, high],
        "macro_f1_per_head": f1s.tolist(),
        "best_epochs": best_epochs,
        "per_class": per_class,
        "confusion": {"labels": classes, "matrix": pooled["confusion_matrix"], "heads": int(len(preds))},
    }


def labelled_subset(dataset, label_key: str = "label", classes: Sequence[str] | None = None, exclude: Sequence[str] = ()):
    """The records that carry ``label_key`` (and, if given, one of ``classes``; none of ``exclude``)."""
    keep = []
    for i, record in enumerate(dataset.records):
        value = record.get(label_key)
        if value is None or value in exclude or (classes and value not in classes):
            continue
        keep.append(i)
    if not keep:
        raise FetalCLIPError(f"{dataset.name}: no records with a {label_key!r} label" + (f" in {list(classes)}" if classes else ""))
    return dataset.subset(keep)


def probe_data(cache, dataset, label_key: str = "label", augment=None) -> ProbeData:
    """Embeddings (through ``cache``) and labels of ``dataset``; ``augment`` = AugmentSpec for training copies."""
    x = cache.embeddings(dataset)
    augmented = None
    if augment is not None and augment.copies > 0:
        augmented = np.stack([cache.embeddings(dataset, augment=(augment, c)) for c in range(augment.copies)])
    return ProbeData(
        x=x,
        labels=[str(r[label_key]) for r in dataset.records],
        patients=[patient_id(r) for r in dataset.records],
        splits=[r.get("split") for r in dataset.records] if any(r.get("split") for r in dataset.records) else None,
        augmented=augmented,
    )


__all__ = [
    "FEWSHOT_SIZES", "ProbeData", "ProbeRecipe", "ProbeRun", "RecipeError", "TrainedHead", "fewshot_curve", "labelled_subset",
    "linear_probe", "plot_curve", "probe_data", "single_thread", "train_linear_heads",
]
