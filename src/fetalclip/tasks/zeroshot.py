"""Zero-shot classification of ultrasound planes (and brain sub-planes) by prompt similarity.

The protocol is the published one: per class, the mean of the L2-normalised embeddings of its prompts,
re-normalised; logits are 100 x cosine (a fixed scale, not the model's learnt temperature, so scores are
comparable across checkpoints); macro F1 is averaged over the classes that occur as ground truth, also when
distractor classes (kidney, lips/nose, profile, spine) are offered. ``build_classifier`` is a pure function
of the model and the prompts, and every prompt is encoded once per call, never per image.

Prompt sets are JSON objects ``{class: [prompt, ...]}``. Ours ship with the package (``tasks/prompts``);
any file of the same shape works, so the published prompts can be run unchanged. Class names in a file are
mapped to canonical keys (``Fetal thorax`` -> ``thorax``), so they meet the datasets' labels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labels import PLANE_ALIASES, canonical_label
from ..errors import FetalCLIPError
from ..metrics import classification_report
from ..models.model import FetalCLIP
from ..models.preprocess import ImageLike
from .dataset_features import embed_dataset

LOGIT_SCALE = 100.0

# task -> (vocabulary of its labels, packaged prompt file)
TASKS: dict[str, tuple[str, str]] = {"planes": ("plane", "planes.json"), "brain": ("brain_plane", "brain.json")}


# -- prompts ---------------------------------------------------------------------------------------------------
def packaged_prompt_file(name: str) -> Path:
    """Path of a prompt file shipped with the package (``planes.json``, ``brain.json``, ``ga.json``)."""
    return Path(str(resources.files("fetalclip.tasks").joinpath("prompts", name)))


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FetalCLIPError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetalCLIPError(f"{path}: not valid JSON ({exc})") from None


def load_prompts(path: str | os.PathLike | None = None, task: str = "planes") -> dict[str, list[str]]:
    """A prompt set ``{canonical class: [prompt, ...]}`` from ``path`` (default: ours for ``task``)."""
    if task not in TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; use one of {sorted(TASKS)}")
    vocabulary, packaged = TASKS[task]
    path = Path(path) if path is not None else packaged_prompt_file(packaged)
    data = read_json_file(path, "prompt")
    if not isinstance(data, dict) or not data:
        raise FetalCLIPError(f"{path}: expected a JSON object {{class: [prompt, ...]}}")
    prompts: dict[str, list[str]] = {}
    for name, texts in data.items():
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FetalCLIPError(f"{path}: class {name!r} needs a non-empty list of prompt strings")
        key = canonical_label(name, vocabulary, strict=False) or name  # ("Not A Brain" maps to None)
        if key in prompts:
            raise FetalCLIPError(f"{path}: classes {name!r} and another both mean {key!r}; merge their prompts")
        prompts[key] = list(texts)
    return prompts


def _prompts_per_class(classnames: Sequence[str], templates_or_prompts: Mapping[str, Sequence[str]] | Sequence[str]) -> list[list[str]]:
    if isinstance(templates_or_prompts, Mapping):
        missing = [c for c in classnames if c not in templates_or_prompts]
        if missing:
            raise ValueError(f"no prompts for classes {missing}")
        return [list(templates_or_prompts[c]) for c in classnames]
    templates = list(templates_or_prompts)
    if not templates:
        raise ValueError("no templates given")
    # Templates take the class name through "{}" or "{c}" (open_clip's two styles).
    return [[t.format(c, c=c) for t in templates] for c in classnames]


# -- classifier ------------------------------------------------------------------------------------------------
@torch.inference_mode()
def build_classifier(
    model: FetalCLIP,
    classnames: Sequence[str],
    templates_or_prompts: Mapping[str, Sequence[str]] | Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings ``[C, E]``: per class, the re-normalised mean of its normalised prompt embeddings.

    ``templates_or_prompts`` is either ``{class: [prompt, ...]}`` or a list of templates with ``{}``/``{c}``
    standing for the class name. All prompts are encoded together, once.
    """
    per_class = _prompts_per_class(classnames, templates_or_prompts)
    flat = [text for texts in per_class for text in texts]
    features = torch.cat(
        [model.encode_text(flat[i : i + batch_size], normalize=True).float() for i in range(0, len(flat), batch_size)]
    )
    rows, start = [], 0
    for texts in per_class:
        rows.append(F.normalize(features[start : start + len(texts)].mean(dim=0), dim=-1))
        start += len(texts)
    return torch.stack(rows).cpu()


def logits_from_features(image_features: torch.Tensor, classifier: torch.Tensor) -> np.ndarray:
    """100 x cosine between normalised image features ``[N, E]`` and class embeddings ``[C, E]``."""
    image_features = F.normalize(image_features.float(), dim=-1)
    return (LOGIT_SCALE * image_features @ classifier.to(image_features.device).float().T).cpu().numpy()


@torch.inference_mode()
def encode_images(model: FetalCLIP, images: torch.Tensor | Sequence[ImageLike], batch_size: int = 64) -> torch.Tensor:
    """Normalised image embeddings ``[N, E]`` (float32, CPU) of a preprocessed batch or PIL images/arrays."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        chunks.append(model.encode_image(batch if isinstance(batch, torch.Tensor) else list(batch), normalize=True).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, model.embed_dim)


@torch.inference_mode()
def classify(
    model: FetalCLIP,
    images: torch.Tensor | Sequence[ImageLike],
    classifier: torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits ``[N, C]`` (100 x cosine) of images (a preprocessed batch or PIL images/arrays)."""
    if len(images) == 0:
        return np.zeros((0, classifier.shape[0]), dtype=np.float32)
    return logits_from_features(encode_images(model, images, batch_size), classifier)


# -- datasets --------------------------------------------------------------------------------------------------
def record_target(record: Mapping[str, Any], task: str) -> str | None:
    """The ground truth of a dataset record for ``task`` (``None`` when it has none)."""
    if task == "planes":
        return record.get("label")
    if task == "brain":
        if record.get("brain_plane") is not None:
            return record["brain_plane"]
        label = record.get("label")
        # A manifest may carry the sub-plane as its only label ("Trans-thalamic").
        if label is not None and label not in PLANE_ALIASES:
            return canonical_label(label, "brain_plane", strict=False)
        return None
    raise ValueError(f"unknown zero-shot task {task!r}; use one of {sorted(TASKS)}")


@dataclass
class ZeroShotPredictions:
    task: str
    classnames: list[str]  # the classes offered, in logit-column order
    sources: list[str]
    y_true: list[str]
    logits: np.ndarray  # [N, C]
    excluded: int = 0  # records without a target of this task (e.g. FETAL_PLANES_DB "Other")
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def y_pred(self) -> list[str]:
        return [self.classnames[i] for i in self.logits.argmax(axis=1)] if len(self.logits) else []


def predict(
    model: FetalCLIP,
    dataset: Any,
    task: str = "planes",
    prompts: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
    distractors: bool = True,
    batch_size: int = 32,
    skip_bad: bool = False,
    progress: bool = False,
    cache: Any = None,
) -> ZeroShotPredictions:
    """Zero-shot predictions for every record of ``dataset`` that has a ground truth for ``task``.

    Records whose target is missing or ``other`` (when the prompts have no ``other`` class) are left out,
    as the published evaluation left out FETAL_PLANES_DB's "Other". With ``distractors=False`` only the
    classes that occur as ground truth are offered. A target without prompts is an error naming it.
    ``cache`` (a ``FeatureCache`` of this model) supplies image embeddings computed once per image.
    """
    if not isinstance(prompts, Mapping):
        prompts = load_prompts(prompts, task)
    targets = [record_target(record, task) for record in dataset.records]
    keep = [i for i, t in enumerate(targets) if t is not None and (t != "other" or "other" in prompts)]
    unknown = sorted({targets[i] for i in keep if targets[i] not in prompts})
    if unknown:
        example = next(dataset.records[i]["source"] for i in keep if targets[i] == unknown[0])
        raise FetalCLIPError(
            f"{dataset.name}: label(s) {', '.join(map(repr, unknown))} (e.g. {example}) have no prompts; "
            f"known labels: {', '.join(prompts)}"
        )
    present = {targets[i] for i in keep}
    classnames = [c for c in prompts if distractors or c in present]
    if not classnames:
        raise FetalCLIPError(f"{dataset.name}: no images with a {task} label to evaluate")
    classifier = build_classifier(model, classnames, prompts)
    embedded = embed_dataset(model, dataset, keep, batch_size=batch_size, skip_bad=skip_bad, progress=progress, desc=task, cache=cache)
    return ZeroShotPredictions(
        task=task,
        classnames=classnames,
        sources=[dataset.records[i]["source"] for i in embedded.indices],
        y_true=[targets[i] for i in embedded.indices],
        logits=logits_from_features(embedded.features, classifier),
        excluded=len(dataset) - len(keep),
        skipped=embedded.skipped,
    )


def report(predictions: ZeroShotPredictions, n_bootstrap: int = 10_000, seed: int = 42) -> dict[str, Any]:
    """``classification_report`` of predictions (macro F1 over the classes with ground truth, with CI)."""
    if not predictions.y_true:
        raise FetalCLIPError(f"zero-shot {predictions.task}: no images were evaluated")
    return classification_report(
        predictions.y_true,
        predictions.y_pred,
        labels=predictions.classnames,
        scores=predictions.logits,
        ci=n_bootstrap > 0,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def named_metrics(task: str, result: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``zeroshot/<task>/...`` metrics in percent (the published unit) from a classification report."""
    prefix = f"zeroshot/{task}"
    metrics = {
        f"{prefix}/f1": 100.0 * result["macro_f1"],
        f"{prefix}/balanced_accuracy": 100.0 * result["balanced_accuracy"],
        f"{prefix}/accuracy": 100.0 * result["accuracy"],
        f"{prefix}/n": float(result["n"]),
    }
    if "macro_f1_ci" in result:
        metrics[f"{prefix}/f1_ci_low"], metrics[f"{prefix}/f1_ci_high"] = (100.0 * v for v in result["macro_f1_ci"])
    for name, value in result.get("top_k", {}).items():
        metrics[f"{prefix}/{name}"] = 100.0 * value
    for label, scores in result["per_class"].items():
        metrics[f"{prefix}/f1/{label}"] = 100.0 * scores["f1"]
    return metrics


def evaluate_planes(
    model: FetalCLIP,
    dataset: Any,
    prompts: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
    distractors: bool = True,
    task: str = "planes",
    n_bootstrap: int = 10_000,
    **options: Any,
) -> dict[str, float]:
    """Zero-shot plane classification as named metrics (``zeroshot/planes/f1`` ...), in percent.

    ``options`` go to ``predict`` (``batch_size``, ``skip_bad``, ``progress``, ``cache``); ``n_bootstrap=0`` skips the CI.
    """
    predictions = predict(model, dataset, task, prompts, distractors, **options)
    return named_metrics(task, report(predictions, n_bootstrap=n_bootstrap))


def evaluate_brain(
    model: FetalCLIP,
    dataset: Any,
    prompts: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
    n_bootstrap: int = 10_000,
    **options: Any,
) -> dict[str, float]:
    """Zero-shot brain sub-plane classification (``zeroshot/brain/f1`` ...), in percent."""
    return evaluate_planes(model, dataset, prompts, distractors=True, task="brain", n_bootstrap=n_bootstrap, **options)
