"""TEMPORARY: the benchmark adapters of the probe, few-shot, clip and segmentation tasks, until their task objects
land in ``fetalclip.tasks`` (issue 14). Each adapter is wrapped as a ``Task`` so the table in ``bench.tasks`` has
one shape; this module goes when the objects replace it.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FetalCLIPError
from ..tasks.result import Metric, Task, TaskOptions, TaskResult, TaskUnavailable
from .tasks import TaskContext, TaskOutput, feature_cache, metric

SEGMENT_OPTIONS: dict[str, Any] = {
    "size": 112, "channels": [128, 64, 32, 16, 16], "epochs": 12, "lr": 2e-3, "weight_decay": 0.01, "batch_size": 8,
    "folds": 1, "runs": 1, "patience": None, "taps": None,
    "merge_labels": True,
}
_PROBE = {"folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01, "augment": 0, "standardize": False}
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "probe-planes": dict(_PROBE),
    "probe-brain": dict(_PROBE),
    "fewshot-planes": {"sizes": [2, 4, 8, 16, 32, 64], "support_sets": 2, "runs": 1, "epochs": 50, "batch_size": 64,
                       "lr": 3e-4, "weight_decay": 0.01, "augment": 0, "standardize": False},
    "clips": {"frames": 16, "folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01,
              "positive": None, "standardize": False},
    "segment-hc": SEGMENT_OPTIONS,
}
PUBLISHED_PROTOCOL_OPTIONS: dict[str, dict[str, Any]] = {
    "probe-planes": {"runs": 5, "augment": 5},
    "probe-brain": {"runs": 5, "augment": 5},
    "fewshot-planes": {"support_sets": 5, "runs": 5, "epochs": 100, "augment": 10},
    "clips": {"runs": 5},
    "segment-hc": {"size": 224, "channels": [416, 256, 128, 64, 32], "epochs": 100, "lr": 3e-4},
}


def task_options(context: TaskContext, name: str) -> dict[str, Any]:
    given = dict(context.options.get(name) or {})
    return {**TASK_OPTIONS[name], **given}


def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _probe_inputs(model, dataset, context: TaskContext, name: str, label_key: str, exclude: Sequence[str]):
    from ..tasks.features import AugmentSpec
    from ..tasks.probe import labelled_subset, probe_data

    options = task_options(context, name)
    try:
        subset = labelled_subset(dataset, label_key, None, exclude)
    except FetalCLIPError as exc:
        raise TaskUnavailable(f"{name}: {exc}") from None
    augment = AugmentSpec(copies=options["augment"], seed=context.seed) if options["augment"] else None
    return options, probe_data(feature_cache(model, context), subset, label_key, augment)


def _probe(model, dataset, context: TaskContext, name: str, label_key: str, exclude: Sequence[str] = ()) -> TaskOutput:
    from ..tasks.probe import run_classification

    options, data = _probe_inputs(model, dataset, context, name, label_key, exclude)
    result = run_classification(
        data, folds=options["folds"], runs=options["runs"], seed=context.seed, grid=[(options["lr"], options["weight_decay"])],
        epochs=options["epochs"], batch_size=options["batch_size"], n_bootstrap=max(context.n_bootstrap, 1),
        standardize=options["standardize"], progress=context.progress,
    )
    n = result["n_test"]
    return {
        "metrics": {
            "macro_f1": metric(_percent(result["macro_f1_mean"]), [_percent(v) for v in result["macro_f1_ci"]], n=n),
            "macro_f1_sd": metric(_percent(result["macro_f1_sd"]), n=result["heads"]),
        },
        "details": {
            "per_class": {label: {"f1_mean": _percent(row["f1_mean"]), "f1_sd": _percent(row["f1_sd"]), "support": row["support"]}
                          for label, row in result["per_class"].items()},
            "confusion": result["confusion"],
            **{key: result[key] for key in ("classes", "n_train_val", "n_test", "test_source", "folds", "runs", "heads",
                                            "epochs", "augmented_copies", "standardize", "best_epochs", "notes")},
        },
    }


def _probe_planes(model, dataset, context: TaskContext) -> TaskOutput:
    """Linear probe (``tasks.probe``), six planes including "Other", patient-level folds x runs."""
    return _probe(model, dataset, context, "probe-planes", "label")


def _probe_brain(model, dataset, context: TaskContext) -> TaskOutput:
    """Linear probe on the brain sub-plane (FETAL_PLANES_DB's "Other" brain plane left out)."""
    return _probe(model, dataset, context, "probe-brain", "brain_plane", exclude=("other",))


def _fewshot_planes(model, dataset, context: TaskContext) -> TaskOutput:
    """Few-shot linear probe (``tasks.probe.run_fewshot``): macro F1 against N labelled patients."""
    from ..tasks.probe import run_fewshot

    options, data = _probe_inputs(model, dataset, context, "fewshot-planes", "label", ())
    result = run_fewshot(
        data, sizes=options["sizes"], support_sets=options["support_sets"], runs=options["runs"], seed=context.seed,
        lr=options["lr"], weight_decay=options["weight_decay"], epochs=options["epochs"], batch_size=options["batch_size"],
        standardize=options["standardize"], progress=context.progress,
    )
    curve = result["curve"]
    if not curve:
        raise TaskUnavailable(f"fewshot-planes: {dataset.name} has {result['available_patients']} training patients, "
                              f"too few for N={min(options['sizes'])} (N train + N validation)")
    last = curve[-1]
    metrics = {"macro_f1": metric(_percent(last["macro_f1_mean"]), n=result["n_test"]),
               "macro_f1_sd": metric(_percent(last["macro_f1_sd"]), n=last["n"])}
    metrics.update({f"macro_f1_n{row['n_patients']}": metric(_percent(row["macro_f1_mean"]), n=row["n"]) for row in curve})
    return {
        "metrics": metrics,
        "details": {
            "fewshot": {"n": [row["n_patients"] for row in curve], "mean": [_percent(row["macro_f1_mean"]) for row in curve],
                        "sd": [_percent(row["macro_f1_sd"]) for row in curve], "metric": "macro F1 (%)"},
            "largest_n": last["n_patients"],
            **{key: result[key] for key in ("classes", "n_test", "available_patients", "support_sets", "runs", "epochs", "skipped_sizes")},
        },
    }


def _segmenter(model, dataset, context: TaskContext) -> dict[str, Any]:
    """The segmentation probe of ``model`` on ``dataset`` (``tasks.segmentation``), trained once and kept.

    Both segment-hc and biometry-hc need the same trained decoder; it is saved under ``context.cache_dir``
    keyed by the encoder's weights, the data, the options and the seed, so the second task (or a rerun)
    loads it instead of training again.
    """
    import hashlib
    import json

    from ..io import write_json_atomic
    from ..tasks.features import default_taps
    from ..tasks.segmentation import load_decoder, run_segmentation, sample_mask, save_decoder, segmentation_data

    options = task_options(context, "segment-hc")
    try:
        sample_mask(dataset[0])  # one image tells whether the data has masks, before every image is encoded
    except FetalCLIPError as exc:
        raise TaskUnavailable(f"segment-hc: {exc}") from None
    blocks = getattr(getattr(model.clip.visual, "transformer", None), "resblocks", None)
    if blocks is None:  # e.g. a timm tower inside an open_clip baseline
        raise TaskUnavailable(f"segment-hc: {model.name} has no open_clip ViT blocks to tap")
    cache = feature_cache(model, context)
    n_layers = len(blocks)
    taps = list(options["taps"]) if options["taps"] else default_taps(n_layers)
    key_source = {"encoder": cache.fingerprint, "data": context.data_sha256 or _sources_digest(dataset),
                  "options": options, "taps": taps, "seed": context.seed}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = context.cache_dir / "segmenters" / key
    if (folder / "run.json").is_file():
        decoder, meta = load_decoder(folder)
        saved = json.loads((folder / "run.json").read_text())
        return {"decoder": decoder, "taps": meta["encoder"]["taps"], "size": int(meta["size"]), "cache": cache, **saved}
    seg_data, originals = segmentation_data(cache, dataset, taps, progress=context.progress, size=options["size"],
                                             merge_labels=options["merge_labels"])
    result, best, split_info = run_segmentation(
        seg_data, originals, folds=options["folds"], runs=options["runs"], seed=context.seed, epochs=options["epochs"],
        batch_size=options["batch_size"], lr=options["lr"], weight_decay=options["weight_decay"], channels=options["channels"],
        patience=options["patience"], progress=context.progress,
    )
    del seg_data, originals  # token grids of every image: let them go before the next task
    save_decoder(folder, best.decoder, {"name": model.name, "fingerprint": cache.fingerprint, "taps": taps},
                 extra={"size": int(options["size"]), "best_epoch": best.best_epoch, "val_loss": best.val_loss})
    saved = {"result": result, "splits": split_info}
    write_json_atomic(folder / "run.json", saved)  # written last: its presence means the folder is complete
    return {"decoder": best.decoder, "taps": taps, "size": int(options["size"]), "cache": cache, **saved}


def _sources_digest(dataset) -> str:
    import hashlib

    return hashlib.sha256("\n".join(str(r.get("source")) for r in dataset.records).encode()).hexdigest()


def _segment_hc(model, dataset, context: TaskContext) -> TaskOutput:
    """Head segmentation probe: frozen blocks + UNETR-style decoder, pooled Dice on held-out subjects."""
    result = _segmenter(model, dataset, context)["result"]
    n = result["n_test"]
    hausdorff = result["hausdorff_mm_mean"]["mean"]
    return {
        "metrics": {
            "dice": metric(_percent(result["dice_pooled"]["mean"]), n=n),
            "dice_per_image": metric(_percent(result["dice_per_image_mean"]["mean"]), n=n),
            "hausdorff_mm": metric(float("nan") if hausdorff is None else hausdorff, unit="mm", n=n),
        },
        "details": {key: result[key] for key in ("n_classes", "n_test", "test_source", "folds", "runs", "epochs", "lr",
                                                  "batch_size", "decoder_parameters", "heads", "notes")},
    }


def _biometry_hc(model, dataset, context: TaskContext) -> TaskOutput:
    """HC from the segmentation probe's masks (ellipse fit, ``tasks.biometry``) on its held-out subjects."""
    from ..metrics import bootstrap_ci
    from ..tasks.biometry import measure_dataset

    segmenter = _segmenter(model, dataset, context)
    test_patients = set(map(str, segmenter["splits"].get("test") or []))
    keep = [i for i, record in enumerate(dataset.records) if str(record.get("patient") or record.get("source")) in test_patients]
    if not keep:
        raise TaskUnavailable(f"biometry-hc: the segmentation split of {dataset.name} has no test images")
    test = dataset.subset(keep)
    if not any(record.get("hc_mm") is not None for record in test.records):
        raise TaskUnavailable(f"biometry-hc: {dataset.name} has no reference head circumferences (hc_mm)")
    result = measure_dataset(test, (segmenter["decoder"], segmenter["taps"], segmenter["size"]), segmenter["cache"],
                             progress=context.progress)
    diffs = np.array([row["hc_diff_mm"] for row in result["rows"] if "hc_diff_mm" in row], dtype=np.float64)
    # A segmenter whose every mask fails the ellipse fit has no HC error to report: NaN (shown as a dash), with the count.
    nan = float("nan")
    ci = bootstrap_ci(lambda d: float(np.mean(np.abs(d))), diffs, n=context.n_bootstrap) if context.n_bootstrap > 0 and diffs.size else None
    return {
        "metrics": {
            "hc_mean_abs_diff_mm": metric(float(np.mean(np.abs(diffs))) if diffs.size else nan, ci, unit="mm", n=len(diffs)),
            "hc_mean_diff_mm": metric(float(np.mean(diffs)) if diffs.size else nan, unit="mm", n=len(diffs)),
            "hc_median_abs_diff_mm": metric(float(np.median(np.abs(diffs))) if diffs.size else nan, unit="mm", n=len(diffs)),
            "dice": metric(_percent(result["dice"]), n=len(diffs)),
            "hausdorff_mm": metric(nan if result["hausdorff_mm"] is None else result["hausdorff_mm"], unit="mm", n=len(diffs)),
        },
        "details": {key: result[key] for key in ("n", "n_failed", "n_skipped_not_head", "source_of_masks")},
    }


def _clips(model, dataset, context: TaskContext) -> TaskOutput:
    """Clip-level detection (``tasks.probe_clips``): frame embeddings in temporal order -> one linear layer, AUROC."""
    from ..tasks.probe_clips import clip_features, run_clip_probe

    options = task_options(context, "clips")
    labels = [record.get("label") for record in dataset.records]
    if any(label is None for label in labels):
        raise TaskUnavailable(f"clips: every clip of {dataset.name} needs a label")
    x = clip_features(feature_cache(model, context), dataset, options["frames"])
    result = run_clip_probe(
        x, labels, [record.get("patient") or record.get("source") for record in dataset.records], folds=options["folds"],
        runs=options["runs"], seed=context.seed, lr=options["lr"], weight_decay=options["weight_decay"], epochs=options["epochs"],
        batch_size=options["batch_size"], positive=options["positive"], standardize=options["standardize"],
        n_bootstrap=max(context.n_bootstrap, 1),
    )
    return {
        "metrics": {
            "auroc": metric(_percent(result["auroc_pooled"]), [_percent(v) for v in result["auroc_pooled_ci"]], n=result["n_clips"]),
            "auroc_fold_mean": metric(_percent(result["auroc_mean"]), n=len(result["heads"])),
            "auroc_fold_sd": metric(_percent(result["auroc_sd"]), n=len(result["heads"])),
        },
        "details": {key: result[key] for key in ("positive", "negative", "n_clips", "test_source", "folds", "runs", "undefined_folds")},
    }




def _options_class(name: str) -> type:
    fields = [(key, Any, field(default=tuple(v) if isinstance(v, list) else v)) for key, v in TASK_OPTIONS[name].items()]
    cls = make_dataclass(f"Options_{name.replace('-', '_')}", fields, bases=(TaskOptions,), frozen=True)
    cls.TASK = name
    cls.PUBLISHED = PUBLISHED_PROTOCOL_OPTIONS.get(name, {})
    return cls


def _wrap(task_name: str, options_name: str, adapter) -> type:
    class Wrapped(Task):
        name = task_name
        Options = _options_class(options_name)
        takes_data_digest = True

        def run(self, model, dataset, cache=None, progress=True, *, seed=0, n_bootstrap=10_000, workdir=None,
                data_digest=None) -> TaskResult:
            context = TaskContext(cache_dir=Path(workdir), seed=seed, n_bootstrap=n_bootstrap, progress=progress,
                                  options={options_name: self.options.to_dict()}, data_sha256=data_digest)
            out = adapter(model, dataset, context)
            return TaskResult(task=task_name, metrics={k: Metric.from_dict(v) for k, v in out["metrics"].items()},
                              details=out.get("details", {}), figures=out.get("figures", {}))

    Wrapped.__name__ = f"Legacy_{task_name}"
    return Wrapped


ProbePlanesTask = _wrap("probe-planes", "probe-planes", _probe_planes)
ProbeBrainTask = _wrap("probe-brain", "probe-brain", _probe_brain)
FewShotTask = _wrap("fewshot-planes", "fewshot-planes", _fewshot_planes)
ClipsTask = _wrap("clips", "clips", _clips)
SegmentTask = _wrap("segment-hc", "segment-hc", _segment_hc)
BiometryTask = _wrap("biometry-hc", "segment-hc", _biometry_hc)
