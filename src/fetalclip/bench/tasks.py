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

Registration points: the zero-shot, probe, segmentation and biometry tasks are implemented in
``fetalclip.tasks.zeroshot``, ``.gestational_age``, ``.probe``, ``.segmentation`` and ``.biometry``. Each has an
adapter below (``_zeroshot_planes`` ... ``_clips``), marked ``REGISTRATION POINT``, which is where that library
code is called and its result converted to the shape above. ``embedding-map`` and ``cams`` are complete.
"""

from __future__ import annotations

import base64
import io
import random
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


# -- helpers shared by task adapters -------------------------------------------------------------------------
def metric(value: float, ci: Sequence[float] | None = None, unit: str = "%", n: int | None = None) -> dict[str, Any]:
    """One metric entry in the shape the report reads."""
    return {
        "value": float(value),
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


def _encode_samples(model, dataset, indices: Sequence[int], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    chunks = []
    for start in tqdm(range(0, len(indices), batch_size), disable=not progress, desc="encode", unit="batch", leave=False):
        batch = [dataset[i]["image"] for i in indices[start : start + batch_size]]
        with torch.inference_mode():
            chunks.append(model.encode_image(batch, normalize=True).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.embed_dim), np.float32)


def embedding_map_task(model, dataset, context: TaskContext) -> TaskOutput:
    """Image embeddings of (up to ``max_images``, stratified) labelled images, projected to 2-D."""
    options = context.options.get("embedding-map", {})
    labels = dataset.column("label")
    indices = stratified_indices(labels, options.get("per_class"), context.seed, options.get("max_images", 1000))
    if len(indices) < 3:
        raise TaskUnavailable(f"{dataset.name}: fewer than 3 labelled images for an embedding map")
    features = _encode_samples(model, dataset, indices, progress=context.progress)
    xy, method = _project_2d(features, context.seed)
    return {
        "metrics": {},
        "details": {"n": len(indices), "method": method},
        "figures": {"embedding_map": {"xy": xy.round(4).tolist(), "labels": [labels[i] for i in indices], "method": method}},
    }


def _cam_prompts(classes: Sequence[str]) -> dict[str, list[str]]:
    # REGISTRATION POINT (issue 5): use the package's zero-shot prompt set for these classes once
    # fetalclip.tasks.zeroshot ships one, e.g. ``{c: zeroshot.default_prompts("plane")[c] for c in classes}``.
    return default_prompt_set(classes)


def cams_task(model, dataset, context: TaskContext) -> TaskOutput:
    """Grad-CAM (or ScoreCAM) maps for a few images per class, targeted at the true class."""
    from ..tasks.explain import class_embeddings, compute_cams

    options = context.options.get("cams", {})
    labels = dataset.column("label")
    classes = sorted({label for label in labels if label is not None and label != "other"})
    if not classes:
        raise TaskUnavailable(f"{dataset.name}: no labelled images for class-activation maps")
    indices = stratified_indices(
        [label if label in classes else None for label in labels], options.get("per_class", 2), context.seed
    )
    prompt_set = options.get("prompts") or _cam_prompts(classes)
    names, vectors = class_embeddings(model, prompt_set)
    images = [dataset[i]["image"] for i in indices]
    results = compute_cams(model, images, names, vectors, [labels[i] for i in indices], method=options.get("method", "gradcam"))
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


# -- adapters to the task libraries: REGISTRATION POINTS ---------------------------------------------------------
def _needs(module: str, issue: int, task: str) -> TaskUnavailable:
    return TaskUnavailable(f"{task}: needs fetalclip.tasks.{module} (issue {issue}), which is not connected yet")


def _zeroshot_planes(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 5, fetalclip.tasks.zeroshot): images of `dataset` whose label is one of
    # abdomen/brain/femur/thorax/cervix (FETAL_PLANES_DB "Other" excluded), classifier over those 5 + the
    # distractors kidney/lips_nose/profile/spine, then metrics.classification_report(...). Return
    # metrics {"macro_f1": metric(100 * report["macro_f1"], 100 * ci, n=...)}, details {"per_class": ...,
    # "confusion": {"labels": report["labels"], "matrix": report["confusion_matrix"]}}.
    raise _needs("zeroshot", 5, "zeroshot-planes")


def _zeroshot_brain(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 5, fetalclip.tasks.zeroshot): the brain images (record["brain_plane"] in
    # trans-thalamic / trans-cerebellum / trans-ventricular), three-class classifier; same return shape as planes.
    raise _needs("zeroshot", 5, "zeroshot-brain")


def _zeroshot_ga(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 5, fetalclip.tasks.gestational_age): score_days(...) then
    # decode_top_k_median(...), then metrics.vpr(pred, hc_mm, n_bootstrap=context.n_bootstrap).
    # Return metrics {"vpr": metric(r["vpr"], r["ci"], n=r["n_evaluated"])}, details {"n_valid": ...},
    # figures {"ga_scatter": {"pred_ga_days": [...], "true_hc_mm": [...]}}.
    raise _needs("gestational_age", 5, "zeroshot-ga")


def _probe_planes(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.probe): linear probe on label "plane" (six classes with
    # Other), patient-level folds x runs, feature cache under context.cache_dir. Return metrics
    # {"macro_f1": metric(mean, ci, n=...), "macro_f1_sd": metric(sd)}, details with per-class F1 and "confusion".
    raise _needs("probe", 6, "probe-planes")


def _probe_brain(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.probe): as probe-planes on label "brain_plane".
    raise _needs("probe", 6, "probe-brain")


def _fewshot_planes(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.probe few-shot): N in (2, 4, ..., 64) patients. Return
    # metrics {"macro_f1": metric(F1 at the largest N)}, details {"fewshot": {"n": [...], "mean": [...],
    # "sd": [...], "metric": "macro_f1"}} (drawn as the few-shot curve).
    raise _needs("probe", 6, "fewshot-planes")


def _segment_hc(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.segmentation): frozen-encoder decoder on HC18 head masks,
    # patient-disjoint split. Return metrics {"dice": metric(100 * pooled dice, ...), "hausdorff_mm": metric(..., unit="mm")}.
    raise _needs("segmentation", 6, "segment-hc")


def _biometry_hc(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.biometry): segment then fit ellipses. Return metrics
    # {"hc_mean_abs_diff_mm": metric(..., unit="mm"), "hc_mean_diff_mm": ..., "dice": ...}.
    raise _needs("biometry", 6, "biometry-hc")


def _clips(model, dataset, context: TaskContext) -> TaskOutput:
    # REGISTRATION POINT (issue 6, fetalclip.tasks.probe clips): clip-level detection. Return metrics
    # {"auroc": metric(100 * auroc, 100 * ci)}.
    raise _needs("probe", 6, "clips")


PUBLISHED_FETALCLIP = "FetalCLIP"
PUBLISHED_CLIP = "CLIP ViT-L/14"


def _published(fetalclip: float, clip: float) -> dict[str, float]:
    return {PUBLISHED_FETALCLIP: fetalclip, PUBLISHED_CLIP: clip}


DATA_KEYS = ("planes", "brain", "ga", "seg", "clips")


def default_registry() -> TaskRegistry:
    """The benchmark's tasks in the published table's column order (figure-only tasks last)."""
    return TaskRegistry(
        [
            TaskSpec("zeroshot-planes", "planes", "ZS planes F1", "macro_f1", _zeroshot_planes,
                     published=_published(97.27, 30.77), description="zero-shot five standard planes, macro F1"),
            TaskSpec("zeroshot-brain", "brain", "ZS brain F1", "macro_f1", _zeroshot_brain,
                     published=_published(70.15, 20.61), description="zero-shot brain sub-planes, macro F1"),
            TaskSpec("zeroshot-ga", "ga", "ZS GA VPR", "vpr", _zeroshot_ga,
                     published=_published(83.42, 11.43), description="zero-shot gestational age, validity prediction rate"),
            TaskSpec("probe-planes", "planes", "LP planes F1", "macro_f1", _probe_planes,
                     published=_published(94.73, 86.74), description="linear probe, six planes, macro F1"),
            TaskSpec("probe-brain", "brain", "LP brain F1", "macro_f1", _probe_brain,
                     published=_published(82.01, 63.42), description="linear probe, brain sub-planes, macro F1"),
            TaskSpec("fewshot-planes", "planes", "FS planes F1", "macro_f1", _fewshot_planes,
                     description="few-shot linear probe, planes, macro F1 at the largest N"),
            TaskSpec("clips", "clips", "CHD AUROC", "auroc", _clips,
                     published=_published(78.72, 67.88), description="clip-level detection (CHD protocol), AUROC"),
            TaskSpec("segment-hc", "seg", "Seg HC Dice", "dice", _segment_hc,
                     published=_published(97.92, 97.70), description="head segmentation, pooled Dice"),
            TaskSpec("biometry-hc", "seg", "HC abs. error", "hc_mean_abs_diff_mm", _biometry_hc,
                     higher_is_better=False, unit="mm", description="head circumference from segmentation, mean |error|"),
            TaskSpec("embedding-map", "planes", "embedding map", None, embedding_map_task,
                     description="2-D map of image embeddings coloured by class (figure only)"),
            TaskSpec("cams", "planes", "CAMs", None, cams_task,
                     description="class-activation maps for a few images per class (figure only)"),
        ]
    )


TASK_NAMES = tuple(default_registry().names())

__all__ = [
    "DATA_KEYS",
    "PUBLISHED_CLIP",
    "PUBLISHED_FETALCLIP",
    "TASK_NAMES",
    "TaskContext",
    "TaskOutput",
    "TaskRegistry",
    "TaskSpec",
    "TaskUnavailable",
    "cams_task",
    "default_prompt_set",
    "default_registry",
    "embedding_map_task",
    "metric",
    "png_base64",
    "stratified_indices",
]
