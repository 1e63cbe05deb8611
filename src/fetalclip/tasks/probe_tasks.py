"""The linear probe, the few-shot curve and the clip probe as task objects (the evaluation contract).

The science is in ``probe`` / ``probe_fewshot`` / ``probe_clips`` (runners on feature matrices, one
``ProbeRecipe``); these objects compose it once for the benchmark, the CLI and anything else: labelled images ->
cached embeddings (offline augmented copies for training) -> runner -> one ``TaskResult`` with metrics in
percent, as the published tables are. Options keep the benchmark's names and CPU-sized defaults (fewer runs and
augmented copies than published); ``published()`` sets the published protocol's values. Each options object
builds the recipe it will train with as its check, so a bad value (``epochs=0``) fails where it is set, naming
the task and the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..data.sample import patient_id
from ..errors import FetalCLIPError
from .probe_recipe import ProbeRecipe, RecipeError
from .result import Metric, Task, TaskOptions, TaskResult, TaskUnavailable, percent


def _pct(value: float | None) -> float:
    """A fraction in percent for details (NaN, not ``None``, when nothing was measured; JSON writing nulls it)."""
    return float("nan") if value is None else 100.0 * float(value)


def _pct_ci(ci) -> tuple[float | None, ...]:
    return tuple(percent(v) for v in ci)


def _cache(model, cache, progress: bool):
    if cache is not None:
        return cache
    from .features import FeatureCache

    return FeatureCache(model, None, progress=progress)  # nothing kept on disk


@dataclass(frozen=True)
class _RecipeOptions(TaskOptions):
    """Options that are a probe recipe plus task extras; ``check`` builds the recipe (one error per bad value)."""

    def recipe(self) -> ProbeRecipe:
        return ProbeRecipe.from_mapping(self.to_dict())

    def check(self) -> None:
        try:
            self.recipe()
        except RecipeError as exc:
            raise FetalCLIPError(f"task {self.TASK}: option {exc.field} = {exc.value!r} {exc.rule}") from None
        augment = getattr(self, "augment", 0)
        if isinstance(augment, bool) or augment < 0:
            raise FetalCLIPError(f"task {self.TASK}: option augment = {augment!r} must be a whole number >= 0")


@dataclass(frozen=True)
class LinearProbeOptions(_RecipeOptions):
    TASK: ClassVar[str] = "probe"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"runs": 5, "augment": 5}

    folds: int = 5
    runs: int = 1
    epochs: int = 50
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    augment: int = 0  # offline augmented copies per training image (published: 5)
    standardize: bool = False


@dataclass(frozen=True)
class ProbePlanesOptions(LinearProbeOptions):
    TASK: ClassVar[str] = "probe-planes"


@dataclass(frozen=True)
class ProbeBrainOptions(LinearProbeOptions):
    TASK: ClassVar[str] = "probe-brain"


def _labelled_data(task: str, model, dataset, cache, progress: bool, seed: int, label_key: str, exclude, augment: int):
    """The probe data of ``dataset``'s records labelled ``label_key``; none labelled -> ``TaskUnavailable``."""
    from .features import AugmentSpec
    from .probe import labelled_subset, probe_data

    try:
        subset = labelled_subset(dataset, label_key, None, exclude)
    except FetalCLIPError as exc:
        raise TaskUnavailable(f"{task}: {exc}") from None
    spec = AugmentSpec(copies=augment, seed=seed) if augment else None
    return probe_data(_cache(model, cache, progress), subset, label_key, spec)


class _LinearProbe(Task):
    label_key: ClassVar[str]
    exclude: ClassVar[tuple[str, ...]] = ()

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .probe import linear_probe

        options = self.options
        data = _labelled_data(self.name, model, dataset, cache, progress, seed, self.label_key, self.exclude, options.augment)
        found = linear_probe(data, options.recipe(), seed=seed, n_bootstrap=max(n_bootstrap, 1), progress=progress).report
        n = found["n_test"]
        details = {
            "per_class": {label: {"f1_mean": _pct(row["f1_mean"]), "f1_sd": _pct(row["f1_sd"]), "support": row["support"]}
                          for label, row in found["per_class"].items()},
            "confusion": found["confusion"],
            **{key: found[key] for key in ("classes", "n_train_val", "n_test", "test_source", "folds", "runs", "heads",
                                           "epochs", "augmented_copies", "standardize", "best_epochs", "notes")},
        }
        return TaskResult(
            task=self.name,
            metrics={"macro_f1": Metric(percent(found["macro_f1_mean"]), ci=_pct_ci(found["macro_f1_ci"]), n=n),
                     "macro_f1_sd": Metric(percent(found["macro_f1_sd"]), n=found["heads"])},
            details=details,
        )


class ProbePlanes(_LinearProbe):
    """Linear probe on the six planes ("Other" included), patient-level folds x runs; macro F1 on the test split."""

    name = "probe-planes"
    Options = ProbePlanesOptions
    label_key = "label"


class ProbeBrain(_LinearProbe):
    """Linear probe on the brain sub-planes (FETAL_PLANES_DB's "Other" brain plane left out)."""

    name = "probe-brain"
    Options = ProbeBrainOptions
    label_key = "brain_plane"
    exclude = ("other",)


@dataclass(frozen=True)
class FewShotOptions(_RecipeOptions):
    TASK: ClassVar[str] = "fewshot-planes"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"support_sets": 5, "runs": 5, "epochs": 100, "augment": 10}

    sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)  # labelled training patients (as many again validate)
    support_sets: int = 2
    runs: int = 1
    epochs: int = 50
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    augment: int = 0  # published: 10
    standardize: bool = False

    def check(self) -> None:
        super().check()
        if not self.sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.sizes):
            raise FetalCLIPError(f"task {self.TASK}: option sizes = {list(self.sizes)!r} must be whole numbers >= 1")
        self.require_whole("support_sets")


class FewShotPlanes(Task):
    """Few-shot linear probe on the planes: macro F1 against N labelled patients; the table shows the largest N."""

    name = "fewshot-planes"
    Options = FewShotOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .probe_fewshot import fewshot_curve

        options = self.options
        data = _labelled_data(self.name, model, dataset, cache, progress, seed, "label", (), options.augment)
        found = fewshot_curve(data, options.recipe(), sizes=list(options.sizes), support_sets=options.support_sets,
                              seed=seed, progress=progress)
        curve = found["curve"]
        if not curve:
            raise TaskUnavailable(f"{self.name}: {dataset.name} has {found['available_patients']} training patients, "
                                  f"too few for N={min(options.sizes)} (N train + N validation)")
        last = curve[-1]
        metrics = {"macro_f1": Metric(percent(last["macro_f1_mean"]), n=found["n_test"]),
                   "macro_f1_sd": Metric(percent(last["macro_f1_sd"]), n=last["n"])}
        metrics.update({f"macro_f1_n{row['n_patients']}": Metric(percent(row["macro_f1_mean"]), n=row["n"]) for row in curve})
        return TaskResult(
            task=self.name,
            metrics=metrics,
            details={
                "fewshot": {"n": [row["n_patients"] for row in curve], "mean": [_pct(row["macro_f1_mean"]) for row in curve],
                            "sd": [_pct(row["macro_f1_sd"]) for row in curve], "metric": "macro F1 (%)"},
                "largest_n": last["n_patients"],
                **{key: found[key] for key in ("classes", "n_test", "available_patients", "support_sets", "runs", "epochs",
                                               "skipped_sizes")},
            },
        )


@dataclass(frozen=True)
class ClipProbeOptions(_RecipeOptions):
    TASK: ClassVar[str] = "clips"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"runs": 5}

    frames: int = 16  # sampled evenly over each clip, embeddings concatenated in temporal order
    folds: int = 5
    runs: int = 1
    epochs: int = 50
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    positive: str | None = None  # the positive class (default: the larger of the two sorted labels)
    standardize: bool = False

    def check(self) -> None:
        super().check()
        self.require_whole("frames")
        if self.folds < 2:
            raise FetalCLIPError(f"task {self.TASK}: option folds = {self.folds!r} must be >= 2 (each fold is held out once)")


class ClipProbe(Task):
    """Clip-level detection (the CHD protocol): frame embeddings in temporal order -> one linear layer; AUROC."""

    name = "clips"
    Options = ClipProbeOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .probe_clips import clip_features, clip_probe

        options = self.options
        labels = [record.get("label") for record in dataset.records]
        if any(label is None for label in labels):
            raise TaskUnavailable(f"{self.name}: every clip of {dataset.name} needs a label")
        x = clip_features(_cache(model, cache, progress), dataset, options.frames)
        found = clip_probe(x, labels, [patient_id(record) for record in dataset.records], options.recipe(),
                           positive=options.positive, seed=seed, n_bootstrap=max(n_bootstrap, 1)).report
        heads = len(found["heads"])
        return TaskResult(
            task=self.name,
            metrics={
                "auroc": Metric(percent(found["auroc_pooled"]), ci=_pct_ci(found["auroc_pooled_ci"]), n=found["n_clips"]),
                "auroc_fold_mean": Metric(percent(found["auroc_mean"]), n=heads),
                "auroc_fold_sd": Metric(percent(found["auroc_sd"]), n=heads),
            },
            details={key: found[key] for key in ("positive", "negative", "n_clips", "test_source", "folds", "runs",
                                                 "undefined_folds")},
        )


PROBE_TASKS = (ProbePlanes, ProbeBrain, FewShotPlanes, ClipProbe)

__all__ = ["PROBE_TASKS", "ClipProbe", "ClipProbeOptions", "FewShotOptions", "FewShotPlanes", "LinearProbeOptions",
           "ProbeBrain", "ProbeBrainOptions", "ProbePlanes", "ProbePlanesOptions"]
