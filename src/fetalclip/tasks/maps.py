"""Figure-only evaluations as task objects: a 2-D map of image embeddings, and class-activation maps.

Neither reports a metric; each returns its figure as data (coordinates and labels; base64 PNG scans with their
CAM grids), which ``bench.figures`` renders for the report and which a notebook can redraw. Which images are
shown is a seeded, stratified choice (``stratified_indices``), so a rerun shows the same ones.
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import FetalCLIPError
from .result import Task, TaskOptions, TaskResult, TaskUnavailable


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


def project_2d(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
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


@dataclass(frozen=True)
class EmbeddingMapOptions(TaskOptions):
    TASK: ClassVar[str] = "embedding-map"

    per_class: int | None = None  # images per class (None: all)
    max_images: int | None = 1000  # cap on the total (t-SNE is quadratic)


class EmbeddingMap(Task):
    """Image embeddings of (up to ``max_images``, stratified) labelled images, projected to 2-D."""

    name = "embedding-map"
    Options = EmbeddingMapOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .dataset_features import embed_dataset

        labels = dataset.column("label")
        indices = stratified_indices(labels, self.options.per_class, seed, self.options.max_images)
        if len(indices) < 3:
            raise TaskUnavailable(f"{dataset.name}: fewer than 3 labelled images for an embedding map")
        if cache is not None:
            embeddings = cache.embeddings(dataset.subset(indices))
        else:
            embeddings = embed_dataset(model, dataset, indices, progress=progress, desc="embedding map").features.numpy()
        features = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
        xy, method = project_2d(features, seed)
        return TaskResult(
            task=self.name,
            details={"n": len(indices), "method": method},
            figures={"embedding_map": {"xy": xy.round(4).tolist(), "labels": [labels[i] for i in indices], "method": method}},
        )


def readable_class(key: str) -> str:
    return {"thorax": "fetal heart", "lips_nose": "fetal lips and nose", "cervix": "maternal cervix"}.get(
        key, key.replace("_", " ") if key.startswith("trans") else f"fetal {key.replace('_', ' ')}"
    )


def default_prompt_set(classes: Sequence[str]) -> dict[str, list[str]]:
    """A small prompt set for CAMs of classes the packaged zero-shot prompts do not know (see ``cam_prompts``)."""
    templates = ("ultrasound image of the {}.", "an ultrasound scan showing the {}.", "a standard plane of the {}.")
    return {name: [t.format(readable_class(name)) for t in templates] for name in classes}


def cam_prompts(classes: Sequence[str]) -> dict[str, list[str]]:
    """The package's zero-shot plane prompts for these classes (the CAM target is what zero-shot scores);
    classes it has no prompts for (a folder dataset's own names) get ``default_prompt_set``'s."""
    from .zeroshot import load_prompts

    packaged = load_prompts(task="planes")
    fallback = default_prompt_set([c for c in classes if c not in packaged])
    return {c: list(packaged[c]) if c in packaged else fallback[c] for c in classes}


@dataclass(frozen=True)
class CAMOptions(TaskOptions):
    TASK: ClassVar[str] = "cams"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"method": "scorecam"}

    per_class: int = 2
    method: str = "gradcam"  # or "scorecam" (the published figures' method; slower)
    prompts: Any = None  # None: the packaged plane prompts; a prompt file; or {class: [prompt, ...]}

    def check(self) -> None:
        if self.method not in ("gradcam", "scorecam"):
            raise FetalCLIPError(f"task {self.TASK}: method must be gradcam or scorecam, got {self.method!r}")


class CAMs(Task):
    """Grad-CAM (or ScoreCAM) maps for a few images per class, targeted at the true class."""

    name = "cams"
    Options = CAMOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .explain import class_embeddings, compute_cams

        labels = dataset.column("label")
        classes = sorted({label for label in labels if label is not None and label != "other"})
        if not classes:
            raise TaskUnavailable(f"{dataset.name}: no labelled images for class-activation maps")
        indices = stratified_indices([label if label in classes else None for label in labels], self.options.per_class, seed)
        prompt_set = self.options.prompts or cam_prompts(classes)
        if not isinstance(prompt_set, Mapping):  # a prompt file, as ``fetalclip explain --prompt-set`` takes
            from .zeroshot import load_prompts

            prompt_set = load_prompts(prompt_set, task="planes")
        names, vectors = class_embeddings(model, prompt_set)
        images = [dataset[i]["image"] for i in indices]
        found = compute_cams(model, images, names, vectors, [labels[i] for i in indices], method=self.options.method)
        cams = [
            {
                "label": labels[i],
                "predicted": item.predicted,
                "source": Path(dataset.records[i]["source"]).name,
                "image_png": png_base64(item.model_image),
                "cam": np.round(item.cam, 4).tolist(),
            }
            for i, item in zip(indices, found)
        ]
        return TaskResult(task=self.name, details={"n": len(cams), "method": found[0].method}, figures={"cams": cams})


__all__ = ["CAMs", "EmbeddingMap", "cam_prompts", "default_prompt_set", "png_base64", "project_2d", "stratified_indices"]
