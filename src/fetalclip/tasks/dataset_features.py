"""Normalised image embeddings of a dataset's samples, with the pixel spacing of each model input.

Zero-shot tasks need one pass over the images (embedding) and, for gestational age, the mm per pixel of each
model input. That spacing comes from the model's own preprocessing (``preprocess.with_spacing``): ours pads to
a square (``spacing * max(W, H) / 224``), an open_clip baseline may crop the shortest side instead, and each
must be prompted with the spacing of what it actually sees. Decoding and preprocessing of the next batch
run in threads while the current one is encoded (``batching.prefetched_batches``); unreadable images stop
the run with their name or, with ``skip_bad``, are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import FetalCLIPError
from ..models.model import FetalCLIP
from .batching import prefetched_batches


@dataclass
class DatasetFeatures:
    features: torch.Tensor  # [N, E] float32, L2-normalised, CPU
    indices: list[int]  # dataset index of each row
    spacings_224: list[float | None]  # mm per pixel of each model input (None without a known spacing)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


def _prepare(model: FetalCLIP, dataset: Any, index: int) -> tuple[torch.Tensor, float | None] | FetalCLIPError:
    try:
        sample = dataset[index]
        return model.preprocess.with_spacing(sample["image"], sample.get("pixel_spacing_mm"))
    except FetalCLIPError as exc:
        return exc
    except (ValueError, TypeError, OSError) as exc:
        return FetalCLIPError(f"{dataset.records[index].get('source', index)}: {exc}")


def embed_dataset(
    model: FetalCLIP,
    dataset: Any,
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
    skip_bad: bool = False,
    progress: bool = False,
    desc: str = "images",
    num_threads: int = 2,
) -> DatasetFeatures:
    """Embed ``dataset[i]`` for ``i`` in ``indices`` (default: all), in batches."""
    from tqdm.auto import tqdm

    indices = list(range(len(dataset))) if indices is None else list(indices)
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    spacings: list[float | None] = []
    skipped: list[tuple[str, str]] = []
    with tqdm(total=len(indices), unit="img", desc=desc, disable=not progress) as bar:
        for batch, results in prefetched_batches(indices, lambda i: _prepare(model, dataset, i), batch_size, num_threads):
            tensors = []
            for index, result in zip(batch, results):
                if isinstance(result, FetalCLIPError):
                    if not skip_bad:
                        raise result
                    skipped.append((str(dataset.records[index].get("source", index)), str(result)))
                    continue
                tensor, spacing = result
                tensors.append(tensor)
                kept.append(index)
                spacings.append(spacing)
            if tensors:
                with torch.inference_mode():
                    chunks.append(model.encode_image(torch.stack(tensors), normalize=True).float().cpu())
            bar.update(len(batch))
    features = torch.cat(chunks) if chunks else torch.zeros(0, model.embed_dim)
    return DatasetFeatures(features, kept, spacings, skipped)
