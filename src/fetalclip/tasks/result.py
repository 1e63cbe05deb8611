"""The evaluation contract: every task is an object with typed options whose ``run`` returns one ``TaskResult``.

The CLI, the benchmark, the training hooks and the predictor compose an evaluation only through these objects
and only render what comes back, so a number means the same thing wherever it is printed. The shape follows
big_vision's evaluators (named metrics such as ``zeroshot/ga/vpr``) and open_clip's pure functions (the task holds
options, never global state):

- ``TaskOptions``: a frozen dataclass per task. ``cpu()`` gives the defaults sized for a laptop or a CI runner,
  ``published()`` the published protocol's values (the class's ``PUBLISHED`` overrides), ``updated(mapping)``
  applies ``--set``-style overrides; each checks names and values once, where they are made, so a task body never
  validates. ``to_dict()`` is what a stored benchmark result is fingerprinted with.
- ``Metric``: value, unit, 95% CI and n. Percentages are in percent (0-100, like the published tables); a value
  with nothing to measure is ``None``, never NaN, so every result is valid JSON.
- ``TaskResult``: named metrics, per-sample rows, figures as data (the figure modules draw them), small details,
  and what was skipped and why. ``to_dict()`` is valid JSON and carries ``SCHEMA_VERSION``.

A task that cannot run on the data it is given (no labels of its kind, no pixel spacing, an encoder without
blocks to tap) raises ``TaskUnavailable`` with the reason; the benchmark reports that cell as skipped.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ..errors import FetalCLIPError

SCHEMA_VERSION = 1


class TaskUnavailable(FetalCLIPError):
    """A task that cannot run on this model or data (the reason says which); the benchmark skips it."""


def percent(fraction: float | None) -> float | None:
    """A fraction as a percentage; ``None`` and NaN (nothing measured) stay ``None``."""
    if fraction is None or not math.isfinite(float(fraction)):
        return None
    return 100.0 * float(fraction)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Metric:
    """One reported number: ``value`` in ``unit`` with an optional 95% CI over ``n`` items (images, heads...)."""

    value: float | None
    unit: str = "%"
    ci: tuple[float, float] | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _finite(self.value))
        if self.ci is not None:
            low, high = (_finite(v) for v in self.ci)
            object.__setattr__(self, "ci", None if low is None or high is None else (low, high))
        if self.n is not None:
            object.__setattr__(self, "n", int(self.n))

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": None if self.ci is None else list(self.ci), "unit": self.unit, "n": self.n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Metric":
        ci = data.get("ci")
        return cls(data.get("value"), data.get("unit", "%"), tuple(ci) if ci else None, data.get("n"))


@dataclass
class TaskResult:
    """What one task run found: the only shape the CLI, the benchmark, hooks and the predictor read."""

    task: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per sample (image, clip, patient) where it applies
    figures: dict[str, Any] = field(default_factory=dict)  # plot data: the figure modules render it
    details: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts (per-class scores, split sizes)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"source": ..., "reason": ...}

    def value(self, name: str) -> float | None:
        return self.metrics[name].value

    def named_metrics(self, prefix: str) -> dict[str, float]:
        """``{"<prefix>/<metric>": value}`` for logging (NaN for nothing measured, as loggers expect floats)."""
        return {f"{prefix}/{name}": (math.nan if m.value is None else m.value) for name, m in self.metrics.items()}

    def to_dict(self, rows: bool = True) -> dict[str, Any]:
        """Valid JSON (NaN and infinities become null), with the schema version."""
        from ..io import finite_json

        out = {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
            "details": finite_json(self.details),
            "figures": finite_json(self.figures),
            "skipped": list(self.skipped),
        }
        if rows:
            out["rows"] = finite_json(self.rows)
        return out


def skipped_rows(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """``(source, reason)`` pairs, as the readers' ``skip_bad`` paths collect them, in ``TaskResult.skipped`` form."""
    return [{"source": str(source), "reason": str(reason)} for source, reason in pairs]


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a simple option annotation (int, float, bool, str, Path, None, lists, unions)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return isinstance(value, Mapping)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is Path:
        return isinstance(value, (str, Path))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


@dataclass(frozen=True)
class TaskOptions:
    """Base of every task's options: constructors for the CPU defaults and the published protocol, checked once.

    Subclasses are frozen dataclasses whose field defaults are the CPU values; ``PUBLISHED`` lists the fields the
    published protocol sets differently. Override ``check`` for constraints across or within fields (raise
    ``FetalCLIPError`` naming the option).
    """

    PUBLISHED: ClassVar[Mapping[str, Any]] = {}
    TASK: ClassVar[str] = "task"  # the task name errors are reported under

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # lists in options are values, not shared state: store as tuples
                object.__setattr__(self, f.name, tuple(value))
                value = getattr(self, f.name)
            if hints.get(f.name) is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # lr=1 and lr=1.0 are one option (one fingerprint)
                value = getattr(self, f.name)
            if not _accepts(hints.get(f.name, Any), value):
                raise FetalCLIPError(f"task {self.TASK}: option {f.name} = {value!r} is not a {hints.get(f.name)}")
        self.check()

    def check(self) -> None:
        """Constraints beyond the types; the default has none."""

    def require_whole(self, *names: str, low: int = 1) -> None:
        """Each named option is a whole number >= ``low`` (the one-line error names the task and the option)."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FetalCLIPError(f"task {self.TASK}: option {name} = {value!r} must be a whole number >= {low}")

    @classmethod
    def cpu(cls) -> "TaskOptions":
        return cls()

    @classmethod
    def published(cls) -> "TaskOptions":
        return cls().updated(cls.PUBLISHED)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def updated(self, given: Mapping[str, Any] | None) -> "TaskOptions":
        """A copy with ``given`` applied; an unknown name is an error listing the known ones."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.names()))
        if unknown:
            raise FetalCLIPError(f"task {self.TASK}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(self.names()))}")
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists, paths as text): what a stored result is fingerprinted with."""
        def plain(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, Path):
                return str(value)
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


class Task(ABC):
    """One evaluation. ``run`` is a pure function of the model, the data, the options and the keyword settings."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]]

    def __init__(self, options: TaskOptions | Mapping[str, Any] | None = None):
        if options is None:
            options = self.Options.cpu()
        elif isinstance(options, Mapping):
            options = self.Options.cpu().updated(options)
        elif not isinstance(options, self.Options):
            raise FetalCLIPError(f"task {self.name}: options must be {self.Options.__name__}, not {type(options).__name__}")
        self.options = options

    @classmethod
    def published(cls) -> "Task":
        return cls(cls.Options.published())

    @abstractmethod
    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        """Evaluate ``model`` on ``dataset``.

        ``cache``: a ``FeatureCache`` of this model (image features are encoded once across tasks and reruns);
        ``None`` encodes directly. ``seed`` drives splits and training; ``n_bootstrap`` sizes confidence intervals
        (0: none). ``workdir``: where a task may keep what it trained (a segmentation decoder) for a later task or
        rerun; ``None`` keeps nothing. ``data_digest``: a checksum of ``dataset`` the caller already holds (the
        benchmark's manifest); a task that keys kept state on the data uses it instead of hashing the files again.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


__all__ = ["SCHEMA_VERSION", "Metric", "Task", "TaskOptions", "TaskResult", "TaskUnavailable", "percent", "skipped_rows"]
