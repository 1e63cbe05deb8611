"""Zero-shot gestational age (GA) from a fetal head image, by scoring one prompt per day.

The protocol is the published one: for every day from 14w0d to 38w6d (175 days) and every template, a prompt
filled with that age and the image's 224-input pixel spacing (2 decimals); the day's score is the mean over
templates of 100 x cosine; the prediction is the median day of the 15 best-scoring days (sort their indices,
take position 7). Validity (VPR) then asks whether the true HC lies in the WHO 2.5-97.5% band at that age.

The published script re-encodes all 875 prompts for every image. Here the text side is computed once per
*distinct spacing string* for the whole image set, and within that the prompts of one template and day,
which differ only in their spacing digits and what follows, share their prefix through
``prefix_text.encode_prompt_grid``. Because the score is linear in the normalised text embedding, the mean over
templates is taken on the embeddings (``[spacings, days, E]``) and each image needs one matrix product.
``score_days_reference`` keeps the faithful one-image-at-a-time computation for verification.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError
from ..growth import HC_RANGE_MM, ga_from_hc
from ..metrics import vpr
from ..models.model import FetalCLIP
from ..models.prefix_text import DEFAULT_MAX_ROWS, encode_prompt_grid
from ..models.preprocess import ImageLike
from .dataset_features import embed_dataset
from .zeroshot import LOGIT_SCALE, encode_images, packaged_prompt_file, read_json_file

FIRST_DAY, LAST_DAY = 98, 272  # 14w0d .. 38w6d
DAYS = range(FIRST_DAY, LAST_DAY + 1)
TOP_K = 15

# Placeholders a template may use; aliases let files written for other scripts run unchanged.
GA_FIELDS = ("weeks", "days", "day", "ga")
SPACING_FIELDS = ("spacing", "pixel_spacing")


# -- templates -------------------------------------------------------------------------------------------------
def load_templates(path: str | os.PathLike | None = None) -> list[str]:
    """GA templates from a JSON file (a list, or an object with a ``templates`` list); default: ours."""
    path = Path(path) if path is not None else packaged_prompt_file("ga.json")
    data = read_json_file(path, "template")
    templates = data.get("templates") if isinstance(data, dict) else data
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise FetalCLIPError(f"{path}: expected a list of template strings (or {{\"templates\": [...]}})")
    for template in templates:
        try:
            check_template(template)
        except ValueError as exc:
            raise FetalCLIPError(f"{path}: {exc}") from None
    return templates


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` names the age and only known placeholders."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(GA_FIELDS) - set(SPACING_FIELDS)
    if unknown:
        raise ValueError(
            f"template {template!r} uses unknown placeholder(s) {sorted(unknown)}; known: {', '.join(GA_FIELDS + SPACING_FIELDS)}"
        )
    if not names & set(GA_FIELDS):
        raise ValueError(f"template {template!r} never mentions the age ({{weeks}}/{{days}} or {{ga}})")


def format_spacing(spacing_224_mm: float) -> str:
    """The spacing as printed in prompts: two decimals."""
    return f"{float(spacing_224_mm):.2f}"


def fill_template(template: str, day: int, spacing_text: str) -> str:
    weeks, days = divmod(int(day), 7)
    return template.format(
        weeks=weeks, days=days, day=days, ga=f"{weeks} weeks and {days} days", spacing=spacing_text, pixel_spacing=spacing_text
    )


def resolve_templates(templates: Sequence[str] | str | os.PathLike | None) -> list[str]:
    """Templates given as a list, one template, a JSON file, or ``None`` (ours), each checked."""
    if templates is None:
        return load_templates()
    if isinstance(templates, os.PathLike) or (
        isinstance(templates, str) and (templates.endswith(".json") or ("{" not in templates and Path(templates).is_file()))
    ):
        return load_templates(templates)
    templates = [templates] if isinstance(templates, str) else list(templates)
    for template in templates:
        check_template(template)
    return templates


# -- scoring ---------------------------------------------------------------------------------------------------
def day_text_features(
    model: FetalCLIP,
    templates: Sequence[str],
    spacing_texts: Sequence[str],
    days: Sequence[int] = DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
    share_prefixes: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """``[S, D, E]``: per spacing string and day, the mean over templates of the normalised prompt embeddings."""
    days = list(days)
    grid = [[fill_template(t, d, s) for s in spacing_texts] for t in templates for d in days]
    features = encode_prompt_grid(model, grid, max_rows=max_rows, share_prefixes=share_prefixes, progress=progress)
    features = F.normalize(features, dim=-1).view(len(templates), len(days), len(spacing_texts), -1).mean(dim=0)
    return features.permute(1, 0, 2).contiguous()


def score_features(
    model: FetalCLIP,
    image_features: torch.Tensor,
    spacings_224: Sequence[float],
    templates: Sequence[str] | str | os.PathLike | None = None,
    days: Sequence[int] = DAYS,
    progress: bool = False,
    **options: Any,
) -> np.ndarray:
    """Day scores ``[N, D]`` from image embeddings ``[N, E]`` and each image's 224-input spacing."""
    templates = resolve_templates(templates)
    if len(image_features) != len(spacings_224):
        raise ValueError(f"{len(image_features)} images but {len(spacings_224)} spacings")
    texts = [format_spacing(s) for s in spacings_224]
    distinct = sorted(set(texts))
    bank = day_text_features(model, templates, distinct, days, progress=progress, **options)  # [S, D, E]
    image_features = F.normalize(image_features.float().cpu(), dim=-1)
    column = {text: i for i, text in enumerate(distinct)}
    which = torch.tensor([column[t] for t in texts], dtype=torch.long)
    scores = torch.empty(len(texts), len(list(days)))
    for s in range(len(distinct)):
        rows = (which == s).nonzero().squeeze(1)
        scores[rows] = LOGIT_SCALE * image_features[rows] @ bank[s].T
    return scores.numpy()


@torch.inference_mode()
def score_days(
    model: FetalCLIP,
    images: torch.Tensor | Sequence[ImageLike],
    spacings_224: Sequence[float],
    templates: Sequence[str] | str | os.PathLike | None = None,
    days: Sequence[int] = DAYS,
    batch_size: int = 32,
    progress: bool = False,
    **options: Any,
) -> np.ndarray:
    """Score map ``[N, len(days)]``: per image and day, the mean over templates of 100 x cosine.

    ``images`` is a preprocessed batch or PIL images/arrays; ``spacings_224`` the mm per pixel of each
    image's 224-pixel model input; ``templates`` a list of templates, a JSON file, or ``None`` for ours.
    """
    features = encode_images(model, images, batch_size)
    return score_features(model, features, spacings_224, templates, days, progress=progress, **options)


@torch.inference_mode()
def score_days_reference(
    model: FetalCLIP,
    image: torch.Tensor | ImageLike,
    spacing_224_mm: float,
    templates: Sequence[str] | str | os.PathLike | None = None,
    days: Sequence[int] = DAYS,
) -> np.ndarray:
    """The published computation for one image, kept for verification: every prompt encoded in full.

    Returns the ``[len(days)]`` score row; slow by design (``len(templates) x len(days)`` prompts per image).
    """
    templates = resolve_templates(templates)
    days = list(days)
    batch = image[None] if isinstance(image, torch.Tensor) else [image]
    image_features = model.encode_image(batch, normalize=True).float()
    text = format_spacing(spacing_224_mm)
    per_template = []
    for template in templates:
        text_features = model.encode_text([fill_template(template, d, text) for d in days], normalize=True).float()
        per_template.append(LOGIT_SCALE * image_features @ text_features.T)
    return torch.cat(per_template).mean(dim=0).cpu().numpy()


def decode_top_k_median(scores: np.ndarray, top_k: int = TOP_K, first_day: int = FIRST_DAY) -> np.ndarray:
    """GA in days per row: the median of the ``top_k`` best-scoring day indices (position ``top_k // 2``).

    Ties rank the earlier day first. The day of index ``i`` is ``first_day + i`` (the prompt grid itself).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if not 1 <= top_k <= scores.shape[1]:
        raise ValueError(f"top_k must be between 1 and {scores.shape[1]}; got {top_k}")
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return first_day + np.sort(best, axis=1)[:, top_k // 2]


# -- datasets --------------------------------------------------------------------------------------------------
@dataclass
class GAPredictions:
    sources: list[str]
    spacing_224: np.ndarray  # [N] mm per pixel of the model input
    hc_mm: np.ndarray  # [N] true HC (NaN when unknown)
    scores: np.ndarray  # [N, D]
    first_day: int = FIRST_DAY
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def predicted_days(self, top_k: int = TOP_K) -> np.ndarray:
        if len(self.scores) == 0:
            return np.zeros(0, dtype=np.int64)
        return decode_top_k_median(self.scores, top_k, self.first_day)


def predict_ga(
    model: FetalCLIP,
    dataset: Any,
    templates: Sequence[str] | str | os.PathLike | None = None,
    days: Sequence[int] = DAYS,
    batch_size: int = 32,
    skip_bad: bool = False,
    progress: bool = False,
    cache: Any = None,
    **options: Any,
) -> GAPredictions:
    """Score maps for every image of ``dataset``; each needs a pixel spacing (HC18 and CSV manifests have one).

    ``cache`` (a ``FeatureCache`` of this model) supplies image embeddings computed once per image.
    """
    templates = resolve_templates(templates)
    days = list(days)
    if days != list(range(days[0], days[0] + len(days))):
        raise ValueError("days must be consecutive (the decoder maps index i to first_day + i)")
    no_spacing = [r["source"] for r in dataset.records if r.get("pixel_spacing_mm") is None]
    if no_spacing and not skip_bad:
        raise FetalCLIPError(
            f"{dataset.name}: {len(no_spacing)} image(s) have no pixel spacing (e.g. {no_spacing[0]}); "
            "the GA prompts need it (add a pixel_spacing_mm column, or --skip-bad)"
        )
    indices = [i for i, r in enumerate(dataset.records) if r.get("pixel_spacing_mm") is not None]
    if not indices:
        # --skip-bad would leave nothing to score: an empty result is a wrong answer, not a skip.
        raise FetalCLIPError(
            f"{dataset.name}: no image has a pixel spacing, so there is nothing to predict GA for "
            "(add a pixel_spacing_mm column)"
        )
    embedded = embed_dataset(model, dataset, indices, batch_size=batch_size, skip_bad=skip_bad, progress=progress,
                             desc="ga images", cache=cache)
    if not embedded.indices:
        first = embedded.skipped[0] if embedded.skipped else ("?", "unknown")
        raise FetalCLIPError(f"{dataset.name}: every image with a spacing was skipped (first: {first[0]}: {first[1]})")
    records = [dataset.records[i] for i in embedded.indices]
    if any(s is None for s in embedded.spacings_224):
        raise FetalCLIPError(f"{model.name}: its preprocessing gives no single pixel spacing (anisotropic resize); GA prompts need one")
    spacings = np.array(embedded.spacings_224, dtype=np.float64)
    scores = score_features(model, embedded.features, spacings, templates, days, progress=progress, **options)
    return GAPredictions(
        sources=[r["source"] for r in records],
        spacing_224=spacings,
        hc_mm=np.array([np.nan if r.get("hc_mm") is None else r["hc_mm"] for r in records], dtype=np.float64),
        scores=scores,
        first_day=days[0],
        skipped=[(s, "no pixel spacing") for s in no_spacing] + embedded.skipped,
    )


def ga_metrics(
    pred_days: np.ndarray,
    hc_mm: np.ndarray,
    hc_range: tuple[float, float] = HC_RANGE_MM,
    n_bootstrap: int = 10_000,
    seed: int = 42,
) -> dict[str, float]:
    """Named GA metrics: VPR (%) with its CI and counts, and the mean absolute difference (days) between the
    prediction and the WHO-median age of the true HC, over images with HC in ``hc_range``."""
    pred_days, hc_mm = np.asarray(pred_days, dtype=np.float64), np.asarray(hc_mm, dtype=np.float64)
    known = np.isfinite(hc_mm)
    result = vpr(pred_days[known], hc_mm[known], hc_range=hc_range, n_bootstrap=max(n_bootstrap, 1), seed=seed)
    in_range = known & (hc_mm >= hc_range[0]) & (hc_mm <= hc_range[1])
    metrics = {
        "zeroshot/ga/vpr": result["vpr"],
        "zeroshot/ga/n_valid": float(result["n_valid"]),
        "zeroshot/ga/n_evaluated": float(result["n_evaluated"]),
        "zeroshot/ga/n": float(len(pred_days)),
        "zeroshot/ga/mae_days_vs_who_median": (
            float(np.mean(np.abs(pred_days[in_range] - ga_from_hc(hc_mm[in_range])))) if in_range.any() else float("nan")
        ),
    }
    if n_bootstrap > 0:
        metrics["zeroshot/ga/vpr_ci_low"], metrics["zeroshot/ga/vpr_ci_high"] = result["ci"]
    return metrics


def evaluate_ga(
    model: FetalCLIP,
    dataset: Any,
    templates: Sequence[str] | str | os.PathLike | None = None,
    top_k: int = TOP_K,
    n_bootstrap: int = 10_000,
    **options: Any,
) -> dict[str, float]:
    """Zero-shot GA as named metrics (``zeroshot/ga/vpr`` in percent, ...); ``options`` go to ``predict_ga``."""
    predictions = predict_ga(model, dataset, templates, **options)
    return ga_metrics(predictions.predicted_days(top_k), predictions.hc_mm, n_bootstrap=n_bootstrap)
