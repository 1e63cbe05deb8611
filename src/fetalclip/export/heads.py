"""The zero-shot heads a deployed predictor needs besides the image graph, computed once at export.

Everything text-side in the zero-shot protocols depends on the prompts alone, never on the image: the plane and
brain class-embedding matrices (``tasks.zeroshot.build_classifier`` on the packaged prompts) and, for
gestational age, the per-day bank of mean template embeddings for each pixel-spacing string
(``tasks.gestational_age.day_text_features``). They are computed here with the PyTorch model, by the very
functions the tasks use, and stored in ``heads.npz``, so scoring an image needs the image graph and one matrix
product. The GA bank is per 224-input spacing printed to two decimals; the export covers a grid of spacings
(``DEFAULT_GA_SPACINGS``: 0.10-1.50 mm, which holds HC18's 0.05-0.39 mm originals at 800 px wide). A spacing
outside the grid is computed on demand from the text graph by ``ga_day_features``, with the same formula.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io import save_npz_atomic
from .manifest import ExportError

DEFAULT_GA_SPACINGS = tuple(round(0.10 + 0.01 * i, 2) for i in range(141))  # 0.10 .. 1.50 mm


def parse_spacings(text: str) -> list[float]:
    """``"0.10:1.50:0.01"`` (start:stop:step, stop included), ``"0.3,0.45"``, or ``""`` (none)."""
    text = text.strip()
    if not text:
        return []
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + step * i, 4) for i in range(count)]
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ExportError(f"--ga-spacings {text!r}: give start:stop:step (e.g. 0.10:1.50:0.01) or a comma list of mm") from None


def compute_heads(model, ga_spacings: Sequence[float] = DEFAULT_GA_SPACINGS) -> dict[str, np.ndarray]:
    """The arrays of ``heads.npz`` from a PyTorch ``FetalCLIP``."""
    from ..tasks.gestational_age import DAYS, day_text_features, format_spacing, load_templates
    from ..tasks.zeroshot import build_classifier, load_prompts

    heads: dict[str, np.ndarray] = {}
    for task in ("planes", "brain"):
        prompts = load_prompts(task=task)
        classes = list(prompts)
        heads[f"{task}_classes"] = np.array(classes, dtype=str)
        heads[f"{task}_classifier"] = build_classifier(model, classes, prompts).float().numpy()
    templates = load_templates()
    spacing_texts = sorted({format_spacing(s) for s in ga_spacings})
    heads["ga_templates"] = np.array(templates, dtype=str)
    heads["ga_days"] = np.array(list(DAYS), dtype=np.int64)
    heads["ga_spacings"] = np.array(spacing_texts, dtype=str)
    if spacing_texts:
        with torch.inference_mode():
            heads["ga_bank"] = day_text_features(model, templates, spacing_texts).float().numpy()
    else:
        heads["ga_bank"] = np.zeros((0, len(DAYS), model.embed_dim), np.float32)
    return heads


def save_heads(path: str | os.PathLike, heads: dict[str, np.ndarray]) -> Path:
    return save_npz_atomic(path, **heads)


def load_heads(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: zero-shot heads are missing (export again)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def ga_day_features(model, spacing_texts: Sequence[str]) -> torch.Tensor:
    """``[S, D, E]`` for an ``OnnxModel``: the exported bank where it has the spacing, else from the text graph.

    The on-demand rows follow ``day_text_features`` exactly: per template and day one prompt, normalised
    embeddings, mean over templates (not re-normalised, as there).
    """
    from ..tasks.gestational_age import fill_template

    heads = model.heads()
    templates, days = [str(t) for t in heads["ga_templates"]], [int(d) for d in heads["ga_days"]]
    stored = {str(text): i for i, text in enumerate(heads["ga_spacings"])}
    rows = []
    for text in spacing_texts:
        if text in stored:
            rows.append(torch.from_numpy(heads["ga_bank"][stored[text]]))
            continue
        prompts = [fill_template(t, d, text) for t in templates for d in days]
        features = torch.cat([model.encode_text(prompts[i : i + 256], normalize=True) for i in range(0, len(prompts), 256)])
        rows.append(F.normalize(features, dim=-1).view(len(templates), len(days), -1).mean(dim=0))
    return torch.stack(rows) if rows else torch.zeros(0, len(days), model.embed_dim)
