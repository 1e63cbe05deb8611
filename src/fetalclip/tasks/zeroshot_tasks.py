"""Zero-shot planes, brain sub-planes and gestational age as task objects (the evaluation contract).

The science lives in ``tasks.zeroshot`` (prompt classifier) and ``tasks.gestational_age`` (day scores, top-k
median); these objects compose it once, so ``fetalclip zeroshot``, the benchmark and the training hooks report
the same numbers from the same code. Metrics are in percent, as the published tables are; per-image predictions
are the result's rows, and the GA scatter is figure data (``bench.figures.ga_scatter`` draws it).

``ZeroShotGA.evaluate`` scores already-decoded predictions, so a saved score map (``zeroshot ga --scores``) is
judged by the very code a model run is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import FetalCLIPError
from ..growth import HC_RANGE_MM, ga_from_hc, hadlock_ga_from_hc
from .result import Metric, Task, TaskOptions, TaskResult, TaskUnavailable, percent, skipped_rows


@dataclass(frozen=True)
class ZeroShotOptions(TaskOptions):
    TASK: ClassVar[str] = "zeroshot"

    prompts: Any = None  # None: the packaged prompts; a JSON file; or {class: [prompt, ...]}
    distractors: bool = True  # offer the classes without ground truth too (the published protocol does)
    batch_size: int = 32
    skip_bad: bool = False  # list unreadable images instead of stopping

    def check(self) -> None:
        self.require_whole("batch_size")


@dataclass(frozen=True)
class ZeroShotPlanesOptions(ZeroShotOptions):
    TASK: ClassVar[str] = "zeroshot-planes"


@dataclass(frozen=True)
class ZeroShotBrainOptions(ZeroShotOptions):
    TASK: ClassVar[str] = "zeroshot-brain"


class _ZeroShotClassification(Task):
    target: ClassVar[str]  # "planes" or "brain": the label vocabulary and packaged prompt file

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .zeroshot import predict, record_target, report

        options = self.options
        if not any(record_target(record, self.target) not in (None, "other") for record in dataset.records):
            field_name = "plane" if self.target == "planes" else "brain sub-plane"
            raise TaskUnavailable(f"{self.name}: {dataset.name} has no images with a {field_name} label")
        predictions = predict(model, dataset, self.target, options.prompts, distractors=options.distractors,
                              batch_size=options.batch_size, skip_bad=options.skip_bad, progress=progress, cache=cache)
        found = report(predictions, n_bootstrap=n_bootstrap)
        n = found["n"]
        ci = found.get("macro_f1_ci")
        metrics = {
            "macro_f1": Metric(percent(found["macro_f1"]), ci=tuple(percent(v) for v in ci) if ci else None, n=n),
            "balanced_accuracy": Metric(percent(found["balanced_accuracy"]), n=n),
            "accuracy": Metric(percent(found["accuracy"]), n=n),
        }
        metrics.update({name: Metric(percent(value), n=n) for name, value in found.get("top_k", {}).items()})
        per_class = {
            label: {"f1": percent(row["f1"]), "recall": percent(row["recall"]), "precision": percent(row["precision"]),
                    "support": row["support"]}
            for label, row in found["per_class"].items()
        }
        return TaskResult(
            task=self.name,
            metrics=metrics,
            rows=[{"source": s, "true": t, "pred": p}
                  for s, t, p in zip(predictions.sources, predictions.y_true, predictions.y_pred)],
            details={
                "per_class": per_class,
                "confusion": {"labels": found["labels"], "matrix": found["confusion_matrix"]},
                "classes_offered": predictions.classnames,
                "classes_evaluated": list(found["eval_labels"]),
                "excluded": predictions.excluded,
                "prompts": str(options.prompts) if options.prompts else "packaged",
            },
            skipped=skipped_rows(predictions.skipped),
        )


class ZeroShotPlanes(_ZeroShotClassification):
    """Five standard planes (FETAL_PLANES_DB's "Other" left out), distractor classes offered; macro F1 over five."""

    name = "zeroshot-planes"
    Options = ZeroShotPlanesOptions
    target = "planes"


class ZeroShotBrain(_ZeroShotClassification):
    """Brain sub-planes: trans-thalamic, trans-cerebellum, trans-ventricular."""

    name = "zeroshot-brain"
    Options = ZeroShotBrainOptions
    target = "brain"


@dataclass(frozen=True)
class ZeroShotGAOptions(TaskOptions):
    TASK: ClassVar[str] = "zeroshot-ga"

    templates: Any = None  # None: the packaged templates; a JSON file; or a list of templates
    top_k: int = 15  # prediction = median of the top_k best-scoring days (published: 15)
    batch_size: int = 32
    skip_bad: bool = False

    def check(self) -> None:
        self.require_whole("top_k", "batch_size")


NO_SPACING = "no pixel spacing"


class ZeroShotGA(Task):
    """Zero-shot gestational age of head images with a pixel spacing: day scores, top-k median, VPR over the WHO band.

    Images without a pixel spacing cannot be prompted; they are left out and listed in ``skipped``. Images without
    a reference HC in ``HC_RANGE_MM`` still get an age (a row) but are not scored; when none has one, VPR is
    ``None`` and ``details["not_measured"]`` says why.
    """

    name = "zeroshot-ga"
    Options = ZeroShotGAOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        return self.evaluate(self.predict(model, dataset, cache=cache, progress=progress), n_bootstrap=n_bootstrap)

    def predict(self, model, dataset, cache=None, progress: bool = True):
        """Day-score maps (``gestational_age.GAPredictions``) of the images with a pixel spacing; the others are
        listed in ``skipped`` as having none."""
        from .gestational_age import predict_ga

        options = self.options
        keep = [i for i, record in enumerate(dataset.records) if record.get("pixel_spacing_mm") is not None]
        if not keep:
            raise TaskUnavailable(f"{self.name}: {dataset.name} has no images with a pixel spacing "
                                  "(no pixel spacing, no GA prompt: add a pixel_spacing_mm column)")
        no_spacing = [record["source"] for record in dataset.records if record.get("pixel_spacing_mm") is None]
        predictions = predict_ga(model, dataset.subset(keep), options.templates, batch_size=options.batch_size,
                                 skip_bad=options.skip_bad, progress=progress, cache=cache)
        predictions.skipped[:0] = [(source, NO_SPACING) for source in no_spacing]
        return predictions

    def evaluate(self, predictions, n_bootstrap: int = 10_000) -> TaskResult:
        """The result for decoded GA predictions (``gestational_age.GAPredictions``): VPR, MAE, rows, scatter."""
        from ..metrics import vpr_mask
        from .gestational_age import ga_metrics

        top_k = self.options.top_k
        if len(predictions.scores) == 0:
            raise FetalCLIPError(f"{self.name}: no images were scored")
        if top_k > predictions.scores.shape[1]:
            raise FetalCLIPError(f"{self.name}: top_k {top_k} exceeds the {predictions.scores.shape[1]} days scored")
        days = predictions.predicted_days(top_k)
        hc = np.asarray(predictions.hc_mm, dtype=np.float64)
        found = ga_metrics(days, hc, hc_range=HC_RANGE_MM, n_bootstrap=n_bootstrap)
        n_evaluated = int(found["zeroshot/ga/n_evaluated"])
        ci = (found["zeroshot/ga/vpr_ci_low"], found["zeroshot/ga/vpr_ci_high"]) if "zeroshot/ga/vpr_ci_low" in found else None
        evaluated = np.isfinite(hc) & (hc >= HC_RANGE_MM[0]) & (hc <= HC_RANGE_MM[1])  # the images VPR is computed over
        within = vpr_mask(days, hc)
        who_median, hadlock = ga_from_hc(hc), hadlock_ga_from_hc(hc)
        rows = [
            {
                "source": predictions.sources[i],
                "spacing_224_mm": float(predictions.spacing_224[i]),
                "hc_mm": float(hc[i]),
                "pred_ga_days": int(days[i]),
                "who_median_ga_days": float(who_median[i]) if np.isfinite(hc[i]) else None,
                "hadlock_ga_days": float(hadlock[i]) if np.isfinite(hc[i]) else None,
                "hc_in_range": bool(evaluated[i]),
                "within_who_band": bool(within[i]),
            }
            for i in range(len(days))
        ]
        return TaskResult(
            task=self.name,
            metrics={
                "vpr": Metric(found["zeroshot/ga/vpr"], ci=ci, n=n_evaluated),
                "mae_days_vs_who_median": Metric(found["zeroshot/ga/mae_days_vs_who_median"], unit="days", n=n_evaluated),
            },
            rows=rows,
            details={
                "n_images": len(predictions.sources),
                "n_without_spacing": sum(reason == NO_SPACING for _, reason in predictions.skipped),
                "n_evaluated": n_evaluated,
                "n_valid": int(found["zeroshot/ga/n_valid"]),
                "hc_range_mm": list(HC_RANGE_MM),
                "top_k": top_k,
                "within_band": int(within[evaluated].sum()),
                "first_day": int(predictions.first_day),
                "templates": str(self.options.templates) if self.options.templates else "packaged",
                # Ages are predicted either way; only the validity rate needs a reference HC in range.
                **({} if n_evaluated else {"not_measured": f"no image has a reference HC in {HC_RANGE_MM[0]:g}-{HC_RANGE_MM[1]:g} mm"}),
            },
            figures={"ga_scatter": {"pred_ga_days": days[evaluated].astype(float).tolist(),
                                    "true_hc_mm": hc[evaluated].round(2).tolist()}},
            skipped=skipped_rows(predictions.skipped),
        )


__all__ = ["ZeroShotBrain", "ZeroShotGA", "ZeroShotGAOptions", "ZeroShotOptions", "ZeroShotPlanes"]
