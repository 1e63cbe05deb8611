"""The benchmark's task table: task name -> data key, column title, primary metric, published numbers, task object.

The evaluations themselves are task objects in ``fetalclip.tasks`` (the evaluation contract of
``tasks.result``); this module only says which of them the benchmark runs, on which ``--data KEY``, under which
column, with which published reference numbers. ``TaskSpec.fn`` runs one cell: the task's options (its CPU
defaults, the protocol's overrides, ``--set`` values), the model's one ``FeatureCache`` under the run's cache
folder, the run's seed and bootstrap size, and the task's ``TaskResult`` turned into the stored entry's shape:

    {"metrics": {"macro_f1": {"value": 91.2, "ci": [88.0, 94.1], "unit": "%", "n": 412}, ...},
     "details": {...}, "figures": {...}}

A spec may also hold a plain function ``fn(model, dataset, context) -> that dict`` (tests and plug-ins do), so
the harness can run anything with one signature. Percentages are in percent (0-100), like the published table.
A task that cannot run (``TaskUnavailable``) is reported as skipped and not stored, so it runs once it can.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import FetalCLIPError
from ..tasks.maps import CAMs, EmbeddingMap, png_base64
from ..tasks.probe_tasks import ClipProbe, FewShotPlanes, ProbeBrain, ProbePlanes
from ..tasks.result import Metric, Task, TaskUnavailable
from ..tasks.segmentation_tasks import BiometryHC, SegmentHC
from ..tasks.transfer_tasks import TransferPlanes
from ..tasks.zeroshot_tasks import ZeroShotBrain, ZeroShotGA, ZeroShotPlanes

TaskOutput = dict[str, Any]


@dataclass
class TaskContext:
    """Everything a task cell may need besides the model and the data: explicit, so tasks stay library objects."""

    cache_dir: Path  # per-benchmark folder for feature caches and kept decoders (shared by tasks and reruns)
    seed: int = 0
    device: str = "cpu"
    n_bootstrap: int = 10_000
    progress: bool = True
    model_label: str = "model"
    options: dict[str, Any] = field(default_factory=dict)  # task name -> option overrides
    data_sha256: str | None = None  # manifest checksum of the task's dataset (keys what tasks keep, e.g. a decoder)


TaskFn = Callable[[Any, Any, TaskContext], TaskOutput]


def _is_task(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Task)


@dataclass(frozen=True)
class TaskSpec:
    """One row of the table. ``task`` is a ``tasks.result.Task`` subclass or a plain ``TaskFn``."""

    name: str
    data_key: str  # which ``--data KEY=SPEC`` the task reads
    title: str  # table column header
    primary: str | None  # metric key shown in the table (None: figures only, no column)
    task: Any
    higher_is_better: bool = True
    unit: str = "%"
    published: Mapping[str, float] = field(default_factory=dict)  # reference row label -> published value
    version: int = 1  # bump when the computation changes, so stored results are recomputed
    description: str = ""
    options_from: str | None = None  # read the options of another task (biometry-hc shares segment-hc's decoder)
    plain_defaults: Mapping[str, Any] = field(default_factory=dict)  # a plain function's options, if it reads any

    @property
    def options_key(self) -> str:
        return self.options_from or self.name

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option the task reads, with its CPU default."""
        return self.task.Options.cpu().to_dict() if _is_task(self.task) else dict(self.plain_defaults)

    @property
    def published_options(self) -> dict[str, Any]:
        return dict(self.task.Options.PUBLISHED) if _is_task(self.task) else {}

    def resolve_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The task's defaults overridden by ``given``; an unknown option name is an error naming the known ones."""
        if _is_task(self.task):
            return self.task.Options.cpu().updated(given).to_dict()
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.plain_defaults))
        if unknown and self.plain_defaults:
            raise FetalCLIPError(f"task {self.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(self.plain_defaults))}")
        return {**self.plain_defaults, **given}

    @property
    def fn(self) -> TaskFn:
        """The cell runner the harness calls: ``fn(model, dataset, context) -> stored-entry dict``."""
        return self.task if not _is_task(self.task) else self._run_task

    def _run_task(self, model, dataset, context: TaskContext) -> TaskOutput:
        task = self.task(self.task.Options.cpu().updated(context.options.get(self.options_key)))
        result = task.run(model, dataset, cache=feature_cache(model, context), progress=context.progress,
                          seed=context.seed, n_bootstrap=context.n_bootstrap, workdir=Path(context.cache_dir),
                          data_digest=context.data_sha256)
        if "not_measured" in result.details:  # a table cell needs its primary metric: nothing measured is a skip
            raise TaskUnavailable(f"{self.name}: {dataset.name}: {result.details['not_measured']}")
        return result.to_dict(rows=False)


class TaskRegistry:
    """An ordered name -> ``TaskSpec`` table (order = the report's column order)."""

    def __init__(self, specs: Sequence[TaskSpec] = ()):
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: TaskSpec) -> None:
        self._specs[spec.name] = spec

    def connect(self, name: str, fn: Any, version: int | None = None) -> None:
        """Replace the task (object class or function) of a registered row, keeping its table layout."""
        spec = self.get(name)
        self._specs[name] = replace(spec, task=fn, version=spec.version if version is None else version)

    def get(self, name: str) -> TaskSpec:
        if name not in self._specs:
            raise FetalCLIPError(f"unknown benchmark task {name!r}; known tasks: {', '.join(self._specs)}")
        return self._specs[name]

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def copy(self) -> "TaskRegistry":
        return TaskRegistry(list(self._specs.values()))


PROTOCOLS = ("cpu", "published")


def protocol_options(protocol: str = "cpu", registry: TaskRegistry | None = None) -> dict[str, dict[str, Any]]:
    """Per-task option overrides of a protocol: ``cpu`` (none: the defaults) or ``published``."""
    if protocol not in PROTOCOLS:
        raise FetalCLIPError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "cpu":
        return {}
    specs = registry or default_registry()
    return {spec.name: spec.published_options for spec in specs if not spec.options_from and spec.published_options}


_CACHES: "weakref.WeakKeyDictionary[Any, dict[Path, Any]]" = weakref.WeakKeyDictionary()


def feature_cache(model, context: TaskContext):
    """The model's ``FeatureCache`` under ``context.cache_dir``, one object per (model, folder).

    Reusing the object matters for large encoders: building one hashes every vision weight (the fingerprint).
    """
    from ..tasks.features import FeatureCache

    root = Path(context.cache_dir) / "features"
    per_model = _CACHES.setdefault(model, {})
    if root not in per_model:
        per_model[root] = FeatureCache(model, root, progress=context.progress)
    per_model[root].progress = context.progress
    return per_model[root]


def metric(value: float | None, ci: Sequence[float] | None = None, unit: str = "%", n: int | None = None) -> dict[str, Any]:
    """One metric entry in the stored shape (``tasks.result.Metric``'s); a value that is not finite is ``None``."""
    return Metric(value, unit, None if ci is None else tuple(ci), n).to_dict()


PUBLISHED_FETALCLIP = "FetalCLIP"
PUBLISHED_CLIP = "CLIP ViT-L/14"


def _published(fetalclip: float, clip: float) -> dict[str, float]:
    return {PUBLISHED_FETALCLIP: fetalclip, PUBLISHED_CLIP: clip}


DATA_KEYS = ("planes", "brain", "ga", "seg", "clips")


def default_registry() -> TaskRegistry:
    """The benchmark's tasks in the published table's column order (figure-only tasks last).

    Versions: 1 was the harness with unconnected adapters; 2 is the first connected computation; 3 (segment-hc,
    biometry-hc) segments the whole head where masks label structures inside it.
    """
    S = TaskSpec
    return TaskRegistry(
        [
            S("zeroshot-planes", "planes", "ZS planes F1", "macro_f1", ZeroShotPlanes, version=2,
              published=_published(97.27, 30.77), description="zero-shot five standard planes, macro F1"),
            S("zeroshot-brain", "brain", "ZS brain F1", "macro_f1", ZeroShotBrain, version=2,
              published=_published(70.15, 20.61), description="zero-shot brain sub-planes, macro F1"),
            S("zeroshot-ga", "ga", "ZS GA VPR", "vpr", ZeroShotGA, version=2,
              published=_published(83.42, 11.43), description="zero-shot gestational age, validity prediction rate"),
            S("probe-planes", "planes", "LP planes F1", "macro_f1", ProbePlanes, version=2,
              published=_published(94.73, 86.74), description="linear probe, six planes, macro F1"),
            S("probe-brain", "brain", "LP brain F1", "macro_f1", ProbeBrain, version=2,
              published=_published(82.01, 63.42), description="linear probe, brain sub-planes, macro F1"),
            S("fewshot-planes", "planes", "FS planes F1", "macro_f1", FewShotPlanes, version=2,
              description="few-shot linear probe, planes, macro F1 at the largest N"),
            S("clips", "clips", "CHD AUROC", "auroc", ClipProbe, version=3,
              published=_published(78.72, 67.88), description="clip-level detection (CHD protocol), AUROC"),
            S("segment-hc", "seg", "Seg HC Dice", "dice", SegmentHC, version=3,
              published=_published(97.92, 97.70), description="head segmentation, pooled Dice"),
            S("biometry-hc", "seg", "HC abs. error", "hc_mean_abs_diff_mm", BiometryHC, version=3, options_from="segment-hc",
              higher_is_better=False, unit="mm", description="head circumference from segmentation, mean |error|"),
            S("transfer-planes", "planes", "LOMO LP F1", "probe_macro_f1", TransferPlanes, version=2,
              description="transfer: leave-one-machine-out linear probe (and zero-shot), mean macro F1 over machines"),
            S("embedding-map", "planes", "embedding map", None, EmbeddingMap, version=2,
              description="2-D map of image embeddings coloured by class (figure only)"),
            S("cams", "planes", "CAMs", None, CAMs, version=2,
              description="class-activation maps for a few images per class (figure only)"),
        ]
    )


TASK_NAMES = tuple(default_registry().names())

__all__ = [
    "DATA_KEYS",
    "PROTOCOLS",
    "PUBLISHED_CLIP",
    "PUBLISHED_FETALCLIP",
    "TASK_NAMES",
    "TaskContext",
    "TaskOutput",
    "TaskRegistry",
    "TaskSpec",
    "TaskUnavailable",
    "default_registry",
    "feature_cache",
    "metric",
    "png_base64",
    "protocol_options",
]

