"""Linear probes on frozen (cached) image embeddings: k-fold x runs classification and few-shot curves.

Everything here works on feature matrices, never on images: the feature cache (``features.py``) turns a
dataset into embeddings once, and a probe then trains many small heads over them in seconds. The design choice
is to train a whole learning-rate / weight-decay grid *in one pass*: every grid point is its own linear layer in
its own AdamW parameter group, all fed the same shuffled batches, each keeping the epoch with its best
validation loss (the published protocol: AdamW lr 3e-4, wd 0.01, batch 64, <= 50 epochs, best validation loss).
The grid point reported is the one with the lowest mean validation loss over folds x runs, so the test split
never picks hyperparameters.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError
from ..metrics import classification_report, macro_f1, mean_macro_f1_ci
from .probe_splits import make_splits

DEFAULT_GRID = ((3e-4, 0.01),)


class single_thread:
    """Run tiny-matrix training on one intra-op thread: on a shared CPU, thread hand-offs cost more than the maths."""

    def __enter__(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self._threads)
FEWSHOT_SIZES = (2, 4, 8, 16, 32, 64)


@dataclass
class TrainedHead:
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    best_epoch: int
    val_loss: float
    lr: float
    weight_decay: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = self.logits(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def train_linear_heads(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    epochs: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    standardize: bool = False,
) -> list[TrainedHead]:
    """One linear head per (lr, weight decay) in ``grid``, trained together; each keeps its best-val-loss epoch.

    ``standardize`` z-scores features with the training rows' mean and SD while training and folds that into
    the returned weights (the head stays one linear layer on raw features). The published probe trains on raw
    embeddings; standardising matters for encoders whose embeddings barely vary (random weights).
    """
    if len(x_train) == 0 or len(x_val) == 0:
        raise FetalCLIPError(f"linear probe needs training and validation rows (got {len(x_train)} and {len(x_val)})")
    with single_thread():
        return _train_linear_heads(x_train, y_train, x_val, y_val, n_classes, grid, epochs, batch_size, seed, standardize)


def _train_linear_heads(x_train, y_train, x_val, y_val, n_classes, grid, epochs, batch_size, seed, standardize):
    generator = torch.Generator().manual_seed(seed)
    x_train, x_val = np.asarray(x_train, dtype=np.float32), np.asarray(x_val, dtype=np.float32)
    mean = x_train.mean(axis=0) if standardize else np.zeros(x_train.shape[1], np.float32)
    scale = x_train.std(axis=0) + 1e-6 if standardize else np.ones(x_train.shape[1], np.float32)
    x_train, x_val = (x_train - mean) / scale, (x_val - mean) / scale
    xt = torch.as_tensor(x_train)
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    xv = torch.as_tensor(np.asarray(x_val, dtype=np.float32))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    dim = xt.shape[1]
    heads = []
    for _ in grid:
        head = torch.nn.Linear(dim, n_classes)
        # Same init for every grid point: differences then come from the hyperparameters alone.
        with torch.no_grad():
            bound = 1.0 / math.sqrt(dim)
            init = torch.Generator().manual_seed(seed + 1)
            head.weight.copy_(torch.empty(n_classes, dim).uniform_(-bound, bound, generator=init))
            head.bias.copy_(torch.empty(n_classes).uniform_(-bound, bound, generator=init))
        heads.append(head)
    optimizer = torch.optim.AdamW(
        [{"params": list(h.parameters()), "lr": lr, "weight_decay": wd} for h, (lr, wd) in zip(heads, grid)]
    )
    best = [(math.inf, -1, None) for _ in grid]
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = sum(F.cross_entropy(h(xt[index]), yt[index]) for h in heads)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for g, head in enumerate(heads):
                val_loss = float(F.cross_entropy(head(xv), yv))
                if val_loss < best[g][0]:
                    best[g] = (val_loss, epoch, copy.deepcopy(head.state_dict()))
    out = []
    for (val_loss, epoch, state), (lr, wd) in zip(best, grid):
        weight = state["weight"].numpy() / scale[None, :]
        bias = state["bias"].numpy() - weight @ mean
        out.append(TrainedHead(weight.astype(np.float32), bias.astype(np.float32), epoch, val_loss, lr, wd))
    return out


# -- classification over folds x runs ------------------------------------------------------------------------
@dataclass
class ProbeData:
    """Embeddings of one labelled set. ``augmented`` holds extra training copies (``[copies, N, D]``)."""

    x: np.ndarray
    labels: list[str]
    patients: list[str]
    splits: list[Any] | None = None
    augmented: np.ndarray | None = None


def _training_rows(data: ProbeData, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Original rows plus every augmented copy of them (augmentation is for training rows only)."""
    idx = np.asarray(indices, dtype=np.int64)
    xs, rows = [data.x[idx]], [idx]
    if data.augmented is not None:
        for copy_x in data.augmented:
            xs.append(copy_x[idx])
            rows.append(idx)
    return np.concatenate(xs), np.concatenate(rows)


def run_classification(
    data: ProbeData,
    test: ProbeData | None = None,
    folds: int = 5,
    runs: int = 5,
    seed: int = 0,
    grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    epochs: int = 50,
    batch_size: int = 64,
    test_fraction: float = 0.2,
    n_bootstrap: int = 10_000,
    standardize: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Linear probe: patient-level folds x runs; macro F1 (mean, SD, CI) and per-class F1 on the test split.

    The test split is ``test`` when given (an external set), else the records' own test split when it is
    patient-disjoint, else a seeded patient hold-out of ``test_fraction``.
    """
    from ..progress import progress_bar

    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise FetalCLIPError(f"linear probe needs at least two classes; found {classes}")
    splits = make_splits(data.patients, folds=folds, seed=seed, test_fraction=test_fraction,
                         record_splits=data.splits, with_test=test is None)
    if test is None:
        x_test = data.x[splits.test]
        test_labels = [data.labels[i] for i in splits.test]
    else:
        x_test, test_labels = test.x, list(test.labels)
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        raise FetalCLIPError(f"test labels {unknown} never occur in the training data (classes: {classes})")
    if not test_labels:
        raise FetalCLIPError("the test split is empty")
    index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([index[c] for c in data.labels])
    y_test = np.array([index[c] for c in test_labels])
    eval_labels = sorted(set(y_test.tolist()))

    per_grid_preds: list[list[np.ndarray]] = [[] for _ in grid]
    per_grid_val: list[list[float]] = [[] for _ in grid]
    per_grid_epochs: list[list[int]] = [[] for _ in grid]
    jobs = [(k, r) for k in range(len(splits.folds)) for r in range(runs)]
    for k, r in progress_bar(jobs, desc="probe", disable=not progress):
        train, val = splits.folds[k]
        x_train, rows = _training_rows(data, train)
        heads = train_linear_heads(
            x_train, y_all[rows], data.x[val], y_all[val], len(classes), grid=grid, epochs=epochs,
            batch_size=batch_size, seed=seed * 100_003 + k * 1_009 + r, standardize=standardize,
        )
        for g, head in enumerate(heads):
            per_grid_preds[g].append(head.predict(x_test))
            per_grid_val[g].append(head.val_loss)
            per_grid_epochs[g].append(head.best_epoch)

    grid_rows = []
    for g, (lr, wd) in enumerate(grid):
        f1s = [macro_f1(y_test, p, eval_labels) for p in per_grid_preds[g]]
        grid_rows.append({"lr": lr, "weight_decay": wd, "val_loss": float(np.mean(per_grid_val[g])),
                          "macro_f1_mean": float(np.mean(f1s)), "macro_f1_sd": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0})
    chosen = int(np.argmin([row["val_loss"] for row in grid_rows]))
    preds = np.stack(per_grid_preds[chosen])
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
        "runs": runs,
        "heads": int(len(preds)),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "augmented_copies": 0 if data.augmented is None else int(len(data.augmented)),
        "standardize": standardize,
        "chosen": {"lr": grid[chosen][0], "weight_decay": grid[chosen][1]},
        "macro_f1_mean": float(f1s.mean()),
        "macro_f1_sd": float(f1s.std(ddof=1)) if len(f1s) > 1 else 0.0,
        "macro_f1_ci": [low, high],
        "macro_f1_per_head": f1s.tolist(),
        "best_epochs": per_grid_epochs[chosen],
        "per_class": per_class,
        "confusion": {"labels": classes, "matrix": pooled["confusion_matrix"], "heads": int(len(preds))},
        "grid": grid_rows,
        "splits": splits.to_dict(),
        "notes": splits.notes,
    }


# -- few-shot --------------------------------------------------------------------------------------------------
def run_fewshot(
    data: ProbeData,
    test: ProbeData | None = None,
    sizes: Sequence[int] = FEWSHOT_SIZES,
    support_sets: int = 5,
    runs: int = 5,
    seed: int = 0,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    epochs: int = 100,
    batch_size: int = 64,
    test_fraction: float = 0.2,
    standardize: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Macro F1 on the test split against N labelled patients for training (and N more for validation).

    For each N, ``support_sets`` random patient draws (seeded by N and the draw) x ``runs`` head seeds. Sizes
    needing more than the available training patients are skipped and listed.
    """
    from ..progress import progress_bar

    classes = sorted(set(data.labels))
    splits = make_splits(data.patients, folds=1, seed=seed, test_fraction=test_fraction,
                         record_splits=data.splits, with_test=test is None)
    pool = sorted(set(splits.folds[0][0]) | set(splits.folds[0][1]))
    if test is None:
        x_test, test_labels = data.x[splits.test], [data.labels[i] for i in splits.test]
    else:
        x_test, test_labels = test.x, list(test.labels)
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        raise FetalCLIPError(f"test labels {unknown} never occur in the training data (classes: {classes})")
    index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([index[c] for c in data.labels])
    y_test = np.array([index[c] for c in test_labels])
    eval_labels = sorted(set(y_test.tolist()))
    by_patient: dict[str, list[int]] = {}
    for i in pool:
        by_patient.setdefault(str(data.patients[i]), []).append(i)
    patients = sorted(by_patient)

    rows, curve, skipped = [], [], []
    usable = [n for n in sizes if 2 * n <= len(patients)]
    skipped = [n for n in sizes if 2 * n > len(patients)]
    bar = progress_bar(total=len(usable) * support_sets * runs, desc="few-shot", disable=not progress)
    for n in usable:
        scores = []
        for s in range(support_sets):
            rng = np.random.default_rng([seed, n, s])
            chosen = rng.choice(len(patients), size=2 * n, replace=False)
            train = [i for p in chosen[:n] for i in by_patient[patients[p]]]
            val = [i for p in chosen[n:] for i in by_patient[patients[p]]]
            x_train, train_rows = _training_rows(data, train)
            for r in range(runs):
                head = train_linear_heads(x_train, y_all[train_rows], data.x[val], y_all[val], len(classes),
                                          grid=[(lr, weight_decay)], epochs=epochs, batch_size=batch_size,
                                          seed=seed * 100_003 + n * 1_009 + s * 101 + r, standardize=standardize)[0]
                score = macro_f1(y_test, head.predict(x_test), eval_labels)
                scores.append(score)
                rows.append({"n_patients": n, "support_set": s, "run": r, "n_train_images": len(train), "macro_f1": score})
                bar.update(1)
        scores = np.array(scores)
        curve.append({"n_patients": n, "macro_f1_mean": float(scores.mean()),
                      "macro_f1_sd": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0, "n": int(len(scores))})
    bar.close()
    return {
        "task": "few-shot",
        "classes": classes,
        "n_test": int(len(y_test)),
        "available_patients": len(patients),
        "support_sets": support_sets,
        "runs": runs,
        "seed": seed,
        "lr": lr,
        "weight_decay": weight_decay,
        "epochs": epochs,
        "standardize": standardize,
        "curve": curve,
        "rows": rows,
        "skipped_sizes": skipped,
    }


def plot_curve(curve: Sequence[dict[str, Any]], path, title: str = "few-shot linear probe") -> bool:
    """Write the few-shot curve as a PNG; ``False`` (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from ..io import atomic_path

    sizes = [row["n_patients"] for row in curve]
    means = [100 * row["macro_f1_mean"] for row in curve]
    sds = [100 * row["macro_f1_sd"] for row in curve]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar(sizes, means, yerr=sds, marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("labelled patients for training (N; N more validate)")
    ax.set_ylabel("macro F1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


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
        patients=[str(r.get("patient") or r.get("source")) for r in dataset.records],
        splits=[r.get("split") for r in dataset.records] if any(r.get("split") for r in dataset.records) else None,
        augmented=augmented,
    )
