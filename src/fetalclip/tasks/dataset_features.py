"""Normalised image embeddings of a dataset's samples, with the pixel spacing of each model input.

Zero-shot tasks need one pass over the images (embedding) and, for gestational age, the mm per pixel of each
model input. That spacing comes from the model's own preprocessing (``preprocess.with_spacing``): ours pads to
a square (``spacing * max(W, H) / 224``), an open_clip baseline may crop the shortest side instead, and each
must be prompted with the spacing of what it actually sees. Decoding and preprocessing of the next batch
run in threads while the current one is encoded (``batching.prefetched_batches``); unreadable images stop
the run with their name or, with ``skip_bad``, are listed.

With a ``FeatureCache`` (``cache=``) the embeddings come from that on-disk cache instead, so evaluations that
share images (zero-shot, probes, embedding maps, reruns of a benchmark) encode each image once per model; the
cache's projected embeddings are normalised here, which is exactly what ``encode_image(normalize=True)`` gives.
Spacings then still come from the model's preprocessing of each decoded image, and only where a record has one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
    cache: Any = None,
) -> DatasetFeatures:
    """Embed ``dataset[i]`` for ``i`` in ``indices`` (default: all), in batches (or through ``cache``)."""
    from ..progress import progress_bar

    indices = list(range(len(dataset))) if indices is None else list(indices)
    if cache is not None:
        return _from_cache(model, cache, dataset, indices, skip_bad, num_threads)
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    spacings: list[float | None] = []
    skipped: list[tuple[str, str]] = []
    with progress_bar(total=len(indices), unit="img", desc=desc, disable=not progress) as bar:
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


def _spacing(model: FetalCLIP, dataset: Any, index: int) -> float | None:
    spacing = dataset.records[index].get("pixel_spacing_mm")
    if spacing is None:
        return None
    return model.preprocess.with_spacing(dataset[index]["image"], spacing)[1]


def _from_cache(model: FetalCLIP, cache: Any, dataset: Any, indices: list[int], skip_bad: bool, num_threads: int) -> DatasetFeatures:
    from .features import drop_unreadable

    if cache.model is not model:
        raise ValueError("the feature cache belongs to another model")
    subset = dataset.subset(indices)
    previous = cache.skip_bad
    cache.skip_bad = previous or skip_bad
    try:
        kept, embeddings = drop_unreadable(cache, subset, cache.embeddings)
    finally:
        cache.skip_bad = previous
    position = {id(record): index for record, index in zip(subset.records, indices)}
    kept_indices = [position[id(record)] for record in kept.records]
    dropped = set(indices) - set(kept_indices)
    skipped = [(str(dataset.records[i].get("source", i)), "unreadable") for i in indices if i in dropped]
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        spacings = list(pool.map(lambda i: _spacing(model, dataset, i), kept_indices))
    features = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
    return DatasetFeatures(features, kept_indices, spacings, skipped)
