"""The training core every probe shares: linear heads on frozen embeddings, a whole (lr, wd) grid in one pass.

Every grid point of a ``ProbeRecipe`` is its own linear layer in its own AdamW parameter group, all fed the same
shuffled batches and started from the same initial weights (differences then come from the hyperparameters
alone), each keeping the epoch with its best validation loss. Optional standardisation is folded back into the
returned weights, so a trained head is always one linear layer on the raw embeddings the feature cache (and
``FetalCLIP.encode_image``) gives: what a saved head (``tasks.heads``) applies at prediction time.
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
from .probe_recipe import ProbeRecipe


class single_thread:
    """Run tiny-matrix training on one intra-op thread: on a shared CPU, thread hand-offs cost more than the maths."""

    def __enter__(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self._threads)


@dataclass
class TrainedHead:
    weight: np.ndarray  # [C, D], on raw embeddings (standardisation folded in)
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
    recipe: ProbeRecipe,
    seed: int = 0,
) -> list[TrainedHead]:
    """One linear head per point of ``recipe.points``, trained together; each keeps its best-val-loss epoch.

    ``recipe.standardize`` z-scores features with the training rows' mean and SD while training and folds that
    into the returned weights. The published probe trains on raw embeddings; standardising matters for encoders
    whose embeddings barely vary (random weights).
    """
    if len(x_train) == 0 or len(x_val) == 0:
        raise FetalCLIPError(f"linear probe needs training and validation rows (got {len(x_train)} and {len(x_val)})")
    with single_thread():
        return _train(x_train, y_train, x_val, y_val, n_classes, recipe, seed)


def _train(x_train, y_train, x_val, y_val, n_classes, recipe: ProbeRecipe, seed: int) -> list[TrainedHead]:
    grid, epochs, batch_size = recipe.points, recipe.epochs, recipe.batch_size
    generator = torch.Generator().manual_seed(seed)
    x_train, x_val = np.asarray(x_train, dtype=np.float32), np.asarray(x_val, dtype=np.float32)
    mean = x_train.mean(axis=0) if recipe.standardize else np.zeros(x_train.shape[1], np.float32)
    scale = x_train.std(axis=0) + 1e-6 if recipe.standardize else np.ones(x_train.shape[1], np.float32)
    x_train, x_val = (x_train - mean) / scale, (x_val - mean) / scale
    xt = torch.as_tensor(x_train)
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    xv = torch.as_tensor(np.asarray(x_val, dtype=np.float32))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    dim = xt.shape[1]
    heads = []
    for _ in grid:
        head = torch.nn.Linear(dim, n_classes)
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


@dataclass
class ProbeRun:
    """A probe's JSON report and its best head (lowest validation loss), the one worth keeping."""

    report: dict[str, Any]
    head: TrainedHead


@dataclass
class ProbeData:
    """Embeddings of one labelled set. ``augmented`` holds extra training copies (``[copies, N, D]``)."""

    x: np.ndarray
    labels: list[str]
    patients: list[str]
    splits: list[Any] | None = None
    augmented: np.ndarray | None = None


def training_rows(data: ProbeData, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Original rows plus every augmented copy of them (augmentation is for training rows only)."""
    idx = np.asarray(indices, dtype=np.int64)
    xs, rows = [data.x[idx]], [idx]
    if data.augmented is not None:
        for copy_x in data.augmented:
            xs.append(copy_x[idx])
            rows.append(idx)
    return np.concatenate(xs), np.concatenate(rows)


def class_targets(data: ProbeData, test: ProbeData | None, test_indices: Sequence[int]):
    """(classes, y of every record, x and y of the test set, the test's classes as indices) of a labelled probe.

    The test set is ``test`` when given (an external set), else ``test_indices`` of ``data``; a test label the
    training data never shows is an error.
    """
    classes = sorted(set(data.labels))
    if test is None:
        x_test, test_labels = data.x[list(test_indices)], [data.labels[i] for i in test_indices]
    else:
        x_test, test_labels = test.x, list(test.labels)
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        raise FetalCLIPError(f"test labels {unknown} never occur in the training data (classes: {classes})")
    index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([index[c] for c in data.labels])
    y_test = np.array([index[c] for c in test_labels], dtype=np.int64)
    return classes, y_all, x_test, y_test, sorted(set(y_test.tolist()))


__all__ = ["ProbeData", "ProbeRun", "TrainedHead", "class_targets", "single_thread", "train_linear_heads", "training_rows"]
