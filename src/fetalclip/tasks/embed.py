"""Batch image embedding: files in, L2-normalised embeddings out.

Decoding and preprocessing of the next batch run in a small thread pool while the current batch is encoded
(``batching.prefetched_batches``), so the cost stays bounded for any number of files. Bad files either stop the run with their name and reason or,
with ``skip_bad``, are counted and listed.

The image tower runs through ``models.accelerate``: ``mode="exact"`` (default) gives the plain open_clip
embeddings to float rounding (< 1e-5) with fused CPU kernels, ``"int8"`` trades a cosine of >= 0.999 for
speed on CPU deployments, ``"eager"`` is the untouched module. A model of the ONNX backend
(``export.runtime.OnnxModel``) brings its own session instead: its precision was chosen when it was opened
(``int8`` graphs for ``mode="int8"``, fp32 otherwise); the preprocessing is the same for both backends.
Grayscale images take the bit-identical fast preprocessing route of ``models.fast_preprocess``. DICOM files
and videos are embedded by their first frame (clip-level work samples frames explicitly, see ``fetalclip probe
clips``).

Scale-out (``embed_parts``/``join_parts``, used by ``torchrun -m fetalclip embed``): the file list, in the
order given, is cut into fixed chunks of ``chunk_size`` files, and chunk ``c`` belongs to rank ``c % world_size``. Each chunk is
embedded exactly as a single run embeds it (same batches, counted from the chunk's start), held in memory on
its own and written atomically as ``part-NNNNNN.npz``, so memory is constant in the size of the archive, a
restarted rank skips the parts it already wrote, and the parts do not depend on the number of processes:
one process and N processes write the same files, and joining them in chunk order gives the input order.
``run.json`` in the parts folder records what the parts were made from (model fingerprint, mode, chunk size,
the file list's hash); a resume against different settings is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

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

__all__ = ["MODES", "EmbeddingResult", "batch_encoder", "embed_files", "embed_texts", "list_image_files"]


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
    encode = batch_encoder(model, mode) if paths else None
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


def batch_encoder(model, mode: str = "exact"):
    """``(batch, normalize) -> features`` for ``model``: the accelerated tower, or an ONNX model's session."""
    if getattr(model, "backend", "torch") != "onnx":
        return image_encoder(model, mode)
    wanted = "int8" if mode == "int8" else "fp32"
    if model.precision != wanted:
        raise FetalCLIPError(f"mode {mode!r} needs the {wanted} graphs, but the ONNX model was opened with {model.precision}")
    return model.image_encoder()


def embed_texts(model: FetalCLIP, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
    if not texts:
        raise FetalCLIPError("no texts to embed")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunks.append(model.encode_text(list(texts[start : start + batch_size]), normalize=normalize).float().cpu().numpy())
    return np.concatenate(chunks)


# -- scale-out: parts written per chunk, joined in input order ---------------------------------------------------
RUN_FILE, INDEX_FILE = "run.json", "index.json"


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.npz"


def chunks_of(n_files: int, chunk_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """The chunks (ranges of file positions) rank ``rank`` of ``world_size`` embeds: every ``world_size``-th one."""
    if chunk_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad sharding: chunk_size={chunk_size}, rank={rank}, world_size={world_size}")
    starts = range(0, n_files, chunk_size)
    return [range(start, min(start + chunk_size, n_files)) for number, start in enumerate(starts) if number % world_size == rank]


def run_record(model, paths: Sequence[str | os.PathLike], chunk_size: int, batch_size: int, mode: str, normalize: bool) -> dict:
    """What a parts folder's contents depend on; two runs may share parts only when these agree."""
    from .features import model_fingerprint

    listing = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    fingerprint = getattr(model, "fingerprint", None) or model_fingerprint(model)
    return {"model": model.name, "fingerprint": fingerprint, "backend": getattr(model, "backend", "torch"),
            "mode": mode, "normalize": normalize, "chunk_size": chunk_size, "batch_size": batch_size,
            "files": len(paths), "files_sha256": listing}


def claim_parts_folder(folder: Path, record: dict) -> None:
    from ..io import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
            raise FetalCLIPError(f"{path}: parts were made by a different run ({', '.join(changed)} differ); "
                                 "use another parts folder or remove this one")
        return
    write_json_atomic(path, record)  # every rank writes the same content; the rename makes that safe


def embed_parts(
    model, paths: Sequence[str | os.PathLike], folder: str | os.PathLike, *, rank: int = 0, world_size: int = 1,
    chunk_size: int = 1024, batch_size: int = 32, skip_bad: bool = False, normalize: bool = True,
    mode: str = "exact", progress: bool = False, num_threads: int = 2,
) -> list[int]:
    """Embed this rank's chunks into ``folder`` (one ``part-NNNNNN.npz`` each); returns the chunks it computed.

    Parts already present are complete (they are written atomically) and are skipped: that is the resume.
    """
    from ..io import save_npz_atomic

    paths = [Path(p) for p in paths]
    folder = Path(folder)
    claim_parts_folder(folder, run_record(model, paths, chunk_size, batch_size, mode, normalize))

    def write(target: Path, positions: range) -> None:
        result = embed_files(model, paths[positions.start : positions.stop], batch_size=batch_size, skip_bad=skip_bad,
                             normalize=normalize, progress=progress, num_threads=num_threads, mode=mode)
        save_npz_atomic(target, embeddings=result.embeddings, sources=np.array(result.sources, dtype=str),
                        skipped=np.array([p for p, _ in result.skipped], dtype=str),
                        reasons=np.array([r for _, r in result.skipped], dtype=str))

    return write_missing_parts(folder, len(paths), chunk_size, rank, world_size, part_name, write)


def write_missing_parts(folder: Path, count: int, chunk_size: int, rank: int, world_size: int,
                        name: Callable[[int], str], write: Callable[[Path, range], None]) -> list[int]:
    """``write(target, positions)`` for this rank's chunks whose part is not in ``folder`` yet; the chunks written.

    The one resume loop of every parts folder (embed's npz, predict's JSON): a part on disk is complete (each is
    written atomically), so it is skipped.
    """
    computed = []
    for positions in chunks_of(count, chunk_size, rank, world_size):
        chunk = positions.start // chunk_size
        target = folder / name(chunk)
        if not target.is_file():
            write(target, positions)
            computed.append(chunk)
    return computed


def complete_chunks(folder: Path, count_key: str, name: Callable[[int], str], what: str) -> int:
    """The number of chunks of a parts folder whose every part is written (else one error saying how to finish)."""
    if not (folder / RUN_FILE).is_file():
        raise FetalCLIPError(f"{folder}: not a parts folder of {what} ({RUN_FILE} is missing)")
    record = json.loads((folder / RUN_FILE).read_text())
    n_chunks = -(-record[count_key] // record["chunk_size"])
    missing = [name(c) for c in range(n_chunks) if not (folder / name(c)).is_file()]
    if missing:
        raise FetalCLIPError(f"{folder}: {len(missing)} of {n_chunks} parts are not written yet (first: {missing[0]}); "
                             "run the same command again to finish them")
    return n_chunks


def iter_parts(folder: str | os.PathLike) -> Iterable[EmbeddingResult]:
    """The parts of a complete parts folder in input order, one at a time (nothing else is loaded)."""
    folder = Path(folder)
    n_chunks = complete_chunks(folder, "files", part_name, "`fetalclip embed`")
    for chunk in range(n_chunks):
        with np.load(folder / part_name(chunk), allow_pickle=False) as part:
            yield EmbeddingResult(part["embeddings"], part["sources"].tolist(),
                                  list(zip(part["skipped"].tolist(), part["reasons"].tolist())))


def join_parts(folder: str | os.PathLike, dim: int) -> EmbeddingResult:
    """All parts joined in input order (what a single run returns), and ``index.json`` written beside them."""
    from ..io import write_json_atomic

    embeddings, sources, skipped, index = [], [], [], []
    for chunk, part in enumerate(iter_parts(folder)):
        index.append({"file": part_name(chunk), "rows": len(part.sources), "skipped": len(part.skipped)})
        embeddings.append(part.embeddings)
        sources.extend(part.sources)
        skipped.extend(part.skipped)
    write_json_atomic(Path(folder) / INDEX_FILE, {"rows": len(sources), "dim": dim, "parts": index})
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)
    return EmbeddingResult(matrix.astype(np.float32, copy=False), sources, skipped)
