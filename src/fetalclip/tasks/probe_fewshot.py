"""Few-shot curves: macro F1 on a fixed test split against N labelled *patients* for training.

For each N, ``support_sets`` seeded draws of 2N patients from the non-test pool (N train, N validate, so the
best epoch is picked without the test split) x ``runs`` head seeds; sizes needing more patients than the pool
holds are skipped and listed. Heads are trained by the shared core (``probe_linear``) with one ``ProbeRecipe``
point; the recipe's ``folds`` play no part (each support set is its own split).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data.splits import index_splits
from ..metrics import macro_f1
from .probe_linear import ProbeData, class_targets, train_linear_heads, training_rows
from .probe_recipe import ProbeRecipe

FEWSHOT_SIZES = (2, 4, 8, 16, 32, 64)


def fewshot_curve(
    data: ProbeData,
    recipe: ProbeRecipe,
    test: ProbeData | None = None,
    *,
    sizes: Sequence[int] = FEWSHOT_SIZES,
    support_sets: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The curve (``curve``: mean and SD of macro F1 per N), every head's score (``rows``) and the sizes skipped."""
    from ..progress import progress_bar

    lr, weight_decay = recipe.single_point("few-shot probe")
    splits = index_splits(data.patients, folds=1, seed=seed, test_fraction=recipe.test_fraction,
                          record_splits=data.splits, with_test=test is None)
    pool = sorted(set(splits.folds[0][0]) | set(splits.folds[0][1]))
    classes, y_all, x_test, y_test, eval_labels = class_targets(data, test, splits.test)
    by_patient: dict[str, list[int]] = {}
    for i in pool:
        by_patient.setdefault(str(data.patients[i]), []).append(i)
    patients = sorted(by_patient)

    rows, curve = [], []
    usable = [n for n in sizes if 2 * n <= len(patients)]
    skipped = [n for n in sizes if 2 * n > len(patients)]
    bar = progress_bar(total=len(usable) * support_sets * recipe.runs, desc="few-shot", disable=not progress)
    for n in usable:
        scores = []
        for s in range(support_sets):
            rng = np.random.default_rng([seed, n, s])
            chosen = rng.choice(len(patients), size=2 * n, replace=False)
            train = [i for p in chosen[:n] for i in by_patient[patients[p]]]
            val = [i for p in chosen[n:] for i in by_patient[patients[p]]]
            x_train, train_rows = training_rows(data, train)
            for r in range(recipe.runs):
                head = train_linear_heads(x_train, y_all[train_rows], data.x[val], y_all[val], len(classes), recipe,
                                          seed=seed * 100_003 + n * 1_009 + s * 101 + r)[0]
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
        "runs": recipe.runs,
        "seed": seed,
        "lr": lr,
        "weight_decay": weight_decay,
        "epochs": recipe.epochs,
        "standardize": recipe.standardize,
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


__all__ = ["FEWSHOT_SIZES", "fewshot_curve", "plot_curve"]
