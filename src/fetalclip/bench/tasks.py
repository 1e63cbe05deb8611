"""The benchmark's task registry: task name -> what data it reads, what it reports, and the function computing it.

A task function has one signature, ``fn(model, dataset, context) -> TaskOutput``, so the harness can run any
task for any model (ours or an open_clip baseline) without knowing what it does. The harness owns ordering,
caching of finished results, progress and the report; tasks own the science and live in ``fetalclip.tasks``.

What a task function returns (a plain, JSON-serialisable dict):

    {
      "metrics": {"macro_f1": {"value": 91.2, "ci": [88.0, 94.1], "unit": "%", "n": 412}, ...},
      "details": {...small JSON for results.json: per-class F1, "confusion": {"labels": [...], "matrix": [[...]]},
                  "fewshot": {"n": [2, 4, ...], "mean": [...], "sd": [...], "metric": "macro_f1"}, ...},
      "figures": {...data only the report needs: "ga_scatter": {"pred_ga_days": [...], "true_hc_mm": [...]},
                  "embedding_map": {"xy": [[x, y], ...], "labels": [...], "method": "umap"},
                  "cams": [{"label": ..., "predicted": ..., "image_png": BASE64, "cam": [[...]]}, ...]},
    }

Percentages are reported in percent (0-100), like the published table. The metric named by the task's
``primary`` key is the table cell; the report draws a figure for every figure key it knows.

A task that cannot run (its implementation is not installed, its data lacks a needed field) raises
``TaskUnavailable`` with the reason; the harness reports it as skipped and does not store it, so it runs as soon
as it can.

Adapters: the zero-shot, probe, segmentation and biometry tasks are implemented in ``fetalclip.tasks.zeroshot``,
``.gestational_age``, ``.probe``, ``.probe_clips``, ``.segmentation`` and ``.biometry``; each adapter below
(``_zeroshot_planes`` ... ``_clips``) calls that library code with the task's options (``TASK_OPTIONS``: CPU-sized
defaults; ``PUBLISHED_PROTOCOL_OPTIONS``: the published values) and converts its result to the shape above.
Image features go through one on-disk ``FeatureCache`` per model under ``context.cache_dir``.
"""

from __future__ import annotations

import base64
import io
import math
import random
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import FetalCLIPError

TaskOutput = dict[str, Any]


class TaskUnavailable(FetalCLIPError):
    """A task that cannot run here (implementation missing, data unsuitable); the harness skips it."""


@dataclass
class TaskContext:
    """Everything a task may need besides the model and the data: explicit, so tasks stay library functions."""

    cache_dir: Path  # per-benchmark folder for feature caches (shared by tasks and reruns)
    seed: int = 0
    device: str = "cpu"
    n_bootstrap: int = 10_000
    progress: bool = True
    model_label: str = "model"
    options: dict[str, Any] = field(default_factory=dict)  # task-specific settings (e.g. {"cams": {"per_class": 2}})
    data_sha256: str | None = None  # manifest checksum of the task's dataset (keys what tasks keep, e.g. a decoder)


TaskFn = Callable[[Any, Any, TaskContext], TaskOutput]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data_key: str  # which ``--data KEY=SPEC`` the task reads
    title: str  # table column header
    primary: str | None  # metric key shown in the table (None: figures only, no column)
    fn: TaskFn
    higher_is_better: bool = True
    unit: str = "%"
    published: Mapping[str, float] = field(default_factory=dict)  # reference row label -> published value
    version: int = 1  # bump when the computation changes, so stored results are recomputed
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)  # every option the task reads, with its default
    options_from: str | None = None  # read the options of another task (biometry-hc shares segment-hc's decoder)

    @property
    def options_key(self) -> str:
        return self.options_from or self.name

    def resolve_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The task's defaults overridden by ``given``; an unknown option name is an error naming the known ones."""
        return resolve_options(self.options_key, self.defaults, given)


def resolve_options(task: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults`` overridden by ``given``; names outside ``defaults`` are errors (a task declaring no options
    gets whatever it is given)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown and defaults:
        raise FetalCLIPError(f"task {task}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **given}


class TaskRegistry:
    """An ordered name -> ``TaskSpec`` table (order = the report's column order)."""

    def __init__(self, specs: Sequence[TaskSpec] = ()):
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: TaskSpec) -> None:
        self._specs[spec.name] = spec

    def connect(self, name: str, fn: TaskFn, version: int | None = None) -> None:
        """Replace the function of a registered task (keeping its table layout)."""
        spec = self.get(name)
        self._specs[name] = replace(spec, fn=fn, version=spec.version if version is None else version)

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


# -- task options ---------------------------------------------------------------------------------------------
# What each task reads from ``context.options[task]``, with the benchmark's defaults. The defaults are sized for a
# CPU (a laptop, or a CI runner): the published protocol's settings where they are cheap, fewer runs, support
# sets, epochs and augmented copies where they are not. ``PUBLISHED_PROTOCOL_OPTIONS`` holds the published
# values of everything that differs (``fetalclip benchmark --protocol published``). Options are part of each
# stored result's fingerprint, so changing one recomputes exactly the cells that read it.
HC_RANGE = (100.0, 342.0)  # VPR is computed over images whose reference HC lies here (published protocol)
SEGMENT_OPTIONS: dict[str, Any] = {
    "size": 112, "channels": [128, 64, 32, 16, 16], "epochs": 12, "lr": 2e-3, "weight_decay": 0.01, "batch_size": 8,
    "folds": 1, "runs": 1, "patience": None, "taps": None,
    # The task is the head: every foreground label is head (as biometry measures it), also where a mask labels
    # the structures inside the skull (the phantom's), which HC18's single-label masks do not.
    "merge_labels": True,
}
_PROBE = {"folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01, "augment": 0, "standardize": False}
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "zeroshot-planes": {"prompts": None, "distractors": True, "batch_size": 32},
    "zeroshot-brain": {"prompts": None, "distractors": True, "batch_size": 32},
    "zeroshot-ga": {"templates": None, "top_k": 15, "batch_size": 32},
    "probe-planes": dict(_PROBE),
    "probe-brain": dict(_PROBE),
    "fewshot-planes": {"sizes": [2, 4, 8, 16, 32, 64], "support_sets": 2, "runs": 1, "epochs": 50, "batch_size": 64,
                       "lr": 3e-4, "weight_decay": 0.01, "augment": 0, "standardize": False},
    "clips": {"frames": 16, "folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01,
              "positive": None, "standardize": False},
    "segment-hc": SEGMENT_OPTIONS,
    "biometry-hc": SEGMENT_OPTIONS,  # reads segment-hc's options: one trained decoder serves both
    "embedding-map": {"per_class": None, "max_images": 1000},
    "cams": {"per_class": 2, "method": "gradcam", "prompts": None},
}
PUBLISHED_PROTOCOL_OPTIONS: dict[str, dict[str, Any]] = {
    "probe-planes": {"runs": 5, "augment": 5},
    "probe-brain": {"runs": 5, "augment": 5},
    "fewshot-planes": {"support_sets": 5, "runs": 5, "epochs": 100, "augment": 10},
    "clips": {"runs": 5},
    "segment-hc": {"size": 224, "channels": [416, 256, 128, 64, 32], "epochs": 100, "lr": 3e-4},
    "cams": {"method": "scorecam"},
}
PROTOCOLS = ("cpu", "published")


def protocol_options(protocol: str = "cpu") -> dict[str, dict[str, Any]]:
    """Per-task option overrides of a protocol: ``cpu`` (the defaults) or ``published``."""
    if protocol not in PROTOCOLS:
        raise FetalCLIPError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return {name: dict(values) for name, values in PUBLISHED_PROTOCOL_OPTIONS.items()} if protocol == "published" else {}


def task_options(context: "TaskContext", name: str) -> dict[str, Any]:
    """Options of task ``name``: its defaults overridden by ``context.options[name]`` (unknown names are errors)."""
    return resolve_options(name, TASK_OPTIONS.get(name, {}), context.options.get(name))


_CACHES: "weakref.WeakKeyDictionary[Any, dict[Path, Any]]" = weakref.WeakKeyDictionary()


def feature_cache(model, context: "TaskContext"):
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


# -- helpers shared by task adapters -------------------------------------------------------------------------
def metric(value: float, ci: Sequence[float] | None = None, unit: str = "%", n: int | None = None) -> dict[str, Any]:
    """One metric entry in the shape the report reads; a value that is not finite (nothing to measure) is ``None``."""
    return {
        "value": float(value) if value is not None and math.isfinite(value) else None,
        "ci": [float(ci[0]), float(ci[1])] if ci is not None else None,
        "unit": unit,
        "n": None if n is None else int(n),
    }


def png_base64(image: np.ndarray) -> str:
    """An HxW or HxWx3 uint8 image as base64 PNG text."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def stratified_indices(labels: Sequence[Any], per_class: int | None, seed: int, max_total: int | None = None) -> list[int]:
    """Up to ``per_class`` indices per label (all when ``None``), seeded, then capped at ``max_total``."""
    rng = random.Random(seed)
    by_class: dict[Any, list[int]] = {}
    for index, label in enumerate(labels):
        if label is not None:
            by_class.setdefault(label, []).append(index)
    chosen: list[int] = []
    for label in sorted(by_class, key=str):
        items = list(by_class[label])
        rng.shuffle(items)
        chosen.extend(items if per_class is None else items[:per_class])
    if max_total is not None and len(chosen) > max_total:
        rng.shuffle(chosen)
        chosen = chosen[:max_total]
    return sorted(chosen)


def readable_class(key: str) -> str:
    return {"thorax": "fetal heart", "lips_nose": "fetal lips and nose", "cervix": "maternal cervix"}.get(
        key, key.replace("_", " ") if key.startswith("trans") else f"fetal {key.replace('_', ' ')}"
    )


def default_prompt_set(classes: Sequence[str]) -> dict[str, list[str]]:
    """A small prompt set for CAMs when no zero-shot prompt set is available (see ``_cam_prompts``)."""
    templates = ("ultrasound image of the {}.", "an ultrasound scan showing the {}.", "a standard plane of the {}.")
    return {name: [t.format(readable_class(name)) for t in templates] for name in classes}


# -- tasks implemented here ----------------------------------------------------------------------------------
def _project_2d(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of embeddings: UMAP when installed, else t-SNE; PCA for small sets (< 30 images),
    where neighbourhood methods have too few neighbours to mean anything."""
    n = len(features)
    if n < 3:
        return np.zeros((n, 2), np.float32), "none"
    if n < 30:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(features).astype(np.float32), "pca"
    try:
        import umap  # optional: not a dependency

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        return reducer.fit_transform(features).astype(np.float32), "umap"
    except ImportError:
        pass
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", random_state=seed).fit_transform(features)
    return xy.astype(np.float32), "t-sne"


def embedding_map_task(model, dataset, context: TaskContext) -> TaskOutput:
    """Image embeddings of (up to ``max_images``, stratified) labelled images, projected to 2-D."""
    options = task_options(context, "embedding-map")
    labels = dataset.column("label")
    indices = stratified_indices(labels, options["per_class"], context.seed, options["max_images"])
    if len(indices) < 3:
        raise TaskUnavailable(f"{dataset.name}: fewer than 3 labelled images for an embedding map")
    embeddings = feature_cache(model, context).embeddings(dataset.subset(indices))
    features = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    xy, method = _project_2d(features, context.seed)
    return {
        "metrics": {},
        "details": {"n": len(indices), "method": method},
        "figures": {"embedding_map": {"xy": xy.round(4).tolist(), "labels": [labels[i] for i in indices], "method": method}},
    }


def _cam_prompts(classes: Sequence[str]) -> dict[str, list[str]]:
    """The package's zero-shot plane prompts for these classes (the CAM target is what zero-shot scores);
    classes it has no prompts for (a folder dataset's own names) get ``default_prompt_set``'s."""
    from ..tasks.zeroshot import load_prompts

    packaged = load_prompts(task="planes")
    fallback = default_prompt_set([c for c in classes if c not in packaged])
    return {c: list(packaged[c]) if c in packaged else fallback[c] for c in classes}


def cams_task(model, dataset, context: TaskContext) -> TaskOutput:
    """Grad-CAM (or ScoreCAM) maps for a few images per class, targeted at the true class."""
    from ..tasks.explain import class_embeddings, compute_cams

    options = task_options(context, "cams")
    labels = dataset.column("label")
    classes = sorted({label for label in labels if label is not None and label != "other"})
    if not classes:
        raise TaskUnavailable(f"{dataset.name}: no labelled images for class-activation maps")
    indices = stratified_indices(
        [label if label in classes else None for label in labels], options["per_class"], context.seed
    )
    prompt_set = options["prompts"] or _cam_prompts(classes)
    if not isinstance(prompt_set, Mapping):  # a prompt file, as ``fetalclip explain --prompt-set`` takes
        from ..tasks.zeroshot import load_prompts

        prompt_set = load_prompts(prompt_set, task="planes")
    names, vectors = class_embeddings(model, prompt_set)
    images = [dataset[i]["image"] for i in indices]
    results = compute_cams(model, images, names, vectors, [labels[i] for i in indices], method=options["method"])
    cams = [
        {
            "label": labels[i],
            "predicted": result.predicted,
            "source": Path(dataset.records[i]["source"]).name,
            "image_png": png_base64(result.model_image),
            "cam": np.round(result.cam, 4).tolist(),
        }
        for i, result in zip(indices, results)
    ]
    return {"metrics": {}, "details": {"n": len(cams), "method": results[0].method}, "figures": {"cams": cams}}


# -- adapters to the task libraries ---------------------------------------------------------------------------
# Each adapter calls the library function of its task (``fetalclip.tasks.*``) with the task's options and turns
# the result into the shape above. Image embeddings and token grids come from one ``FeatureCache`` per model
# under ``context.cache_dir``, so tasks sharing images (zero-shot, probes and the embedding map all read the
# planes set) encode each image once, and a recomputed cell (new options, a bumped version) encodes nothing.
def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _zeroshot(model, dataset, context: TaskContext, name: str, task: str) -> TaskOutput:
    from ..tasks.zeroshot import predict, record_target, report

    options = task_options(context, name)
    if not any(record_target(record, task) not in (None, "other") for record in dataset.records):
        field_name = "plane" if task == "planes" else "brain sub-plane"
        raise TaskUnavailable(f"{name}: {dataset.name} has no images with a {field_name} label")
    predictions = predict(model, dataset, task, options["prompts"], distractors=options["distractors"],
                          batch_size=options["batch_size"], progress=context.progress, cache=feature_cache(model, context))
    result = report(predictions, n_bootstrap=context.n_bootstrap)
    ci = result.get("macro_f1_ci")
    metrics = {
        "macro_f1": metric(_percent(result["macro_f1"]), [_percent(v) for v in ci] if ci else None, n=result["n"]),
        "balanced_accuracy": metric(_percent(result["balanced_accuracy"]), n=result["n"]),
        "accuracy": metric(_percent(result["accuracy"]), n=result["n"]),
    }
    metrics.update({name_k: metric(_percent(v), n=result["n"]) for name_k, v in result.get("top_k", {}).items()})
    return {
        "metrics": metrics,
        "details": {
            "per_class": {label: {"f1": _percent(row["f1"]), "recall": _percent(row["recall"]), "support": row["support"]}
                          for label, row in result["per_class"].items()},
            "confusion": {"labels": result["labels"], "matrix": result["confusion_matrix"]},
            "classes_offered": predictions.classnames,
            "excluded": predictions.excluded,
            "prompts": str(options["prompts"]) if options["prompts"] else "packaged",
        },
    }


def _zeroshot_planes(model, dataset, context: TaskContext) -> TaskOutput:
    """Zero-shot planes (``tasks.zeroshot``): images labelled abdomen/brain/femur/thorax/cervix ("Other" left
    out), classifier over those five and the distractors kidney/lips-nose/profile/spine; macro F1 over the five."""
    return _zeroshot(model, dataset, context, "zeroshot-planes", "planes")


def _zeroshot_brain(model, dataset, context: TaskContext) -> TaskOutput:
    """Zero-shot brain sub-planes (``tasks.zeroshot``): trans-thalamic / -cerebellar / -ventricular images."""
    return _zeroshot(model, dataset, context, "zeroshot-brain", "brain")


def _zeroshot_ga(model, dataset, context: TaskContext) -> TaskOutput:
    """Zero-shot gestational age (``tasks.gestational_age``): day scores, median of the top-k days, VPR."""
    from ..metrics import vpr_mask
    from ..tasks.gestational_age import ga_metrics, predict_ga

    options = task_options(context, "zeroshot-ga")
    keep = [i for i, record in enumerate(dataset.records) if record.get("pixel_spacing_mm") is not None]
    if not keep:
        raise TaskUnavailable(f"zeroshot-ga: {dataset.name} has no images with a pixel spacing (the GA prompts need one)")
    predictions = predict_ga(model, dataset.subset(keep), options["templates"], batch_size=options["batch_size"],
                             progress=context.progress, cache=feature_cache(model, context))
    days = predictions.predicted_days(options["top_k"])
    result = ga_metrics(days, predictions.hc_mm, hc_range=HC_RANGE, n_bootstrap=context.n_bootstrap)
    n_evaluated = int(result["zeroshot/ga/n_evaluated"])
    if n_evaluated == 0:
        raise TaskUnavailable(f"zeroshot-ga: {dataset.name} has no images with a reference HC in {HC_RANGE} mm")
    ci = [result["zeroshot/ga/vpr_ci_low"], result["zeroshot/ga/vpr_ci_high"]] if "zeroshot/ga/vpr_ci_low" in result else None
    hc = predictions.hc_mm
    evaluated = np.isfinite(hc) & (hc >= HC_RANGE[0]) & (hc <= HC_RANGE[1])  # the images VPR is computed over
    return {
        "metrics": {
            "vpr": metric(result["zeroshot/ga/vpr"], ci, n=n_evaluated),
            "mae_days_vs_who_median": metric(result["zeroshot/ga/mae_days_vs_who_median"], unit="days", n=n_evaluated),
        },
        "details": {
            "n_images": len(predictions.sources),
            "n_without_spacing": len(dataset) - len(keep),
            "n_evaluated": n_evaluated,
            "n_valid": int(result["zeroshot/ga/n_valid"]),
            "hc_range_mm": list(HC_RANGE),
            "top_k": options["top_k"],
            "within_band": int(vpr_mask(days[evaluated], hc[evaluated]).sum()),
        },
        "figures": {"ga_scatter": {"pred_ga_days": days[evaluated].astype(float).tolist(), "true_hc_mm": hc[evaluated].round(2).tolist()}},
    }


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
    def spec(name, data_key, title, primary, fn, version, **kwargs) -> TaskSpec:
        return TaskSpec(name, data_key, title, primary, fn, version=version, defaults=TASK_OPTIONS[name], **kwargs)

    return TaskRegistry(
        [
            spec("zeroshot-planes", "planes", "ZS planes F1", "macro_f1", _zeroshot_planes, 2,
                 published=_published(97.27, 30.77), description="zero-shot five standard planes, macro F1"),
            spec("zeroshot-brain", "brain", "ZS brain F1", "macro_f1", _zeroshot_brain, 2,
                 published=_published(70.15, 20.61), description="zero-shot brain sub-planes, macro F1"),
            spec("zeroshot-ga", "ga", "ZS GA VPR", "vpr", _zeroshot_ga, 2,
                 published=_published(83.42, 11.43), description="zero-shot gestational age, validity prediction rate"),
            spec("probe-planes", "planes", "LP planes F1", "macro_f1", _probe_planes, 2,
                 published=_published(94.73, 86.74), description="linear probe, six planes, macro F1"),
            spec("probe-brain", "brain", "LP brain F1", "macro_f1", _probe_brain, 2,
                 published=_published(82.01, 63.42), description="linear probe, brain sub-planes, macro F1"),
            spec("fewshot-planes", "planes", "FS planes F1", "macro_f1", _fewshot_planes, 2,
                 description="few-shot linear probe, planes, macro F1 at the largest N"),
            spec("clips", "clips", "CHD AUROC", "auroc", _clips, 3,
                 published=_published(78.72, 67.88), description="clip-level detection (CHD protocol), AUROC"),
            spec("segment-hc", "seg", "Seg HC Dice", "dice", _segment_hc, 3,
                 published=_published(97.92, 97.70), description="head segmentation, pooled Dice"),
            spec("biometry-hc", "seg", "HC abs. error", "hc_mean_abs_diff_mm", _biometry_hc, 3, options_from="segment-hc",
                 higher_is_better=False, unit="mm", description="head circumference from segmentation, mean |error|"),
            spec("embedding-map", "planes", "embedding map", None, embedding_map_task, 2,
                 description="2-D map of image embeddings coloured by class (figure only)"),
            spec("cams", "planes", "CAMs", None, cams_task, 2,
                 description="class-activation maps for a few images per class (figure only)"),
        ]
    )


TASK_NAMES = tuple(default_registry().names())

__all__ = [
    "DATA_KEYS",
    "PUBLISHED_CLIP",
    "PROTOCOLS",
    "PUBLISHED_FETALCLIP",
    "PUBLISHED_PROTOCOL_OPTIONS",
    "TASK_NAMES",
    "TASK_OPTIONS",
    "TaskContext",
    "TaskOutput",
    "TaskRegistry",
    "TaskSpec",
    "TaskUnavailable",
    "cams_task",
    "default_prompt_set",
    "default_registry",
    "embedding_map_task",
    "feature_cache",
    "metric",
    "png_base64",
    "protocol_options",
    "stratified_indices",
    "task_options",
]
