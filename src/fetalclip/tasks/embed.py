"""Batch image embedding: files in, L2-normalised embeddings out.

Decoding and preprocessing of the next batch run in a small thread pool while the current batch is encoded
(``batching.prefetched_batches``), so the cost stays bounded for any number of files. Bad files either stop the run with their name and reason or,
with ``skip_bad``, are counted and listed.

The image tower runs through ``models.accelerate``: ``mode="exact"`` (default) gives the plain open_clip
embeddings to float rounding (< 1e-5) with fused CPU kernels, ``"int8"`` trades a cosine of >= 0.999 for
speed on CPU deployments, ``"eager"`` is the untouched module. Grayscale images take the bit-identical
fast preprocessing route of ``models.fast_preprocess``. DICOM files and videos are embedded by their first
frame (clip-level work samples frames explicitly, see ``fetalclip probe clips``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.dicom import DICOM_SUFFIXES
from ..data.readers import RASTER_SUFFIXES, open_image, read_frame, source_kind
from ..data.video import VIDEO_SUFFIXES
from ..errors import FetalCLIPError, ImageReadError
from ..models.accelerate import MODES, check_mode, image_encoder
from ..models.fast_preprocess import FastPreprocessor
from ..models.model import FetalCLIP
from .batching import prefetched_batches

__all__ = ["MODES", "EmbeddingResult", "embed_files", "embed_texts", "list_image_files"]


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # [N, D] float32
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


EMBEDDABLE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES + VIDEO_SUFFIXES


def list_image_files(inputs: Iterable[str | os.PathLike], suffixes: Sequence[str] = EMBEDDABLE_SUFFIXES) -> list[Path]:
    """Files named directly, plus image files found recursively (sorted) under directories."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes))
        else:
            files.append(path)
    return files


def _load(preprocess: FastPreprocessor, path: Path) -> torch.Tensor | ImageReadError:
    try:
        if source_kind(path) == "raster":
            return preprocess(open_image(path))
        # DICOM, video or a folder of frames: one embedding per file, from its first frame.
        return preprocess(read_frame(path)["image"])
    except ImageReadError as exc:
        return exc
    except (ValueError, TypeError) as exc:
        return ImageReadError(path, str(exc))


def embed_files(
    model: FetalCLIP,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 32,
    skip_bad: bool = False,
    normalize: bool = True,
    progress: bool = False,
    num_threads: int = 2,
    mode: str = "exact",
) -> EmbeddingResult:
    """Embed image files in batches; ``mode`` is ``exact`` (default), ``int8`` or ``eager`` (see module doc)."""
    from ..progress import progress_bar

    check_mode(mode)
    paths = [Path(p) for p in paths]
    encode = image_encoder(model, mode) if paths else None
    preprocess = FastPreprocessor(model.preprocess)
    embeddings: list[np.ndarray] = []
    sources: list[str] = []
    skipped: list[tuple[str, str]] = []
    with progress_bar(total=len(paths), unit="img", disable=not progress, desc="embed") as bar:
        for batch, results in prefetched_batches(paths, lambda path: _load(preprocess, path), batch_size, num_threads):
            tensors = []
            for path, result in zip(batch, results):
                if isinstance(result, ImageReadError):
                    if not skip_bad:
                        raise result
                    skipped.append((str(path), result.reason))
                    continue
                tensors.append(result)
                sources.append(str(path))
            if tensors:
                features = encode(torch.stack(tensors), normalize=normalize)
                embeddings.append(features.float().cpu().numpy())
            bar.update(len(batch))
    dim = model.embed_dim
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)
    return EmbeddingResult(matrix.astype(np.float32, copy=False), sources, skipped)


def embed_texts(model: FetalCLIP, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
    if not texts:
        raise FetalCLIPError("no texts to embed")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunks.append(model.encode_text(list(texts[start : start + batch_size]), normalize=normalize).float().cpu().numpy())
    return np.concatenate(chunks)
