"""Evaluations and single-scan answers on top of the model: every evaluation is a task object.

The contract (``tasks.result``): a task has typed options (``Options.cpu()``, ``Options.published()``) and
``run(model, dataset, cache=None, progress=True, seed=..., n_bootstrap=..., workdir=...) -> TaskResult``. The CLI,
the benchmark table (``bench.tasks``), the training hooks and the predictor compose evaluations only through them.

    zero-shot        ZeroShotPlanes, ZeroShotBrain, ZeroShotGA       (tasks.zeroshot_tasks)
    probes           ProbePlanes, ProbeBrain, FewShotPlanes, ClipProbe (tasks.probe_tasks)
    segmentation     SegmentHC, BiometryHC                            (tasks.segmentation_tasks)
    figures          EmbeddingMap, CAMs                               (tasks.maps)
    one scan         Predictor                                        (tasks.predictor)

Names load lazily, so ``import fetalclip.tasks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Metric": "result", "Task": "result", "TaskOptions": "result", "TaskResult": "result", "TaskUnavailable": "result",
    "ZeroShotPlanes": "zeroshot_tasks", "ZeroShotBrain": "zeroshot_tasks", "ZeroShotGA": "zeroshot_tasks",
    "ProbePlanes": "probe_tasks", "ProbeBrain": "probe_tasks", "FewShotPlanes": "probe_tasks", "ClipProbe": "probe_tasks",
    "SegmentHC": "segmentation_tasks", "BiometryHC": "segmentation_tasks",
    "EmbeddingMap": "maps", "CAMs": "maps",
    "Predictor": "predictor",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
