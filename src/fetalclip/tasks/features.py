"""On-disk cache of frozen-encoder features, so a probe never encodes the same image twice.

An entry is keyed by (encoder fingerprint, preprocessing, image content, variant): the fingerprint is a hash of
the vision tower's weights (not its name: two checkpoints of one architecture must not share entries), the
content is a hash of the decoded pixels (the same scan under two names is one entry, an edited file under one
name is two), and the variant names an offline augmentation copy or the intermediate blocks asked for. Each
entry is one small ``.npz`` written atomically, so parallel runs and crashes cannot leave a torn cache, and a
run that is killed keeps every batch it finished.

To skip decoding on a second run, a per-cache index maps (file path, size, mtime, frame) to the content hash;
a changed file misses the index and is hashed again. ``FeatureCache.encoded`` counts the images that went
through the encoder in this process, which is what the tests assert on.

Offline augmentation follows the published probes (colour jitter 0.2 p=0.5, CLAHE p=0.5, shift 0.2 and rotate
+-20 degrees p=1, black border); copy ``i`` of an image is a deterministic function of (content hash, seed, i),
so it is cached like any other variant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.datasets import SampleDataset
from ..errors import FetalCLIPError
from ..io import atomic_path, write_json_atomic
from ..models.checkpoint import hash_weights
from ..models.model import FetalCLIP

INDEX_NAME = "source-index.json"


def model_fingerprint(model: FetalCLIP) -> str:
    """sha256 of the vision tower's weights (names, shapes, dtypes and bytes) plus its preprocessing.

    A backend without the torch tower (an exported ONNX model) carries the fingerprint of the tower it was
    exported from, so calibrations, heads and segmenters bound to those weights open with it too.
    """
    if not hasattr(model, "clip") and isinstance(getattr(model, "fingerprint", None), str):
        return model.fingerprint
    digest = hash_weights(model.clip.visual.state_dict())
    digest.update(json.dumps(model.preprocess.config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def content_hash(image: np.ndarray) -> str:
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def default_taps(n_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced block indices (0-based), ending at the last block: 24 layers -> 5, 11, 17, 23."""
    return sorted({max(0, int(math.floor(n_layers * (i + 1) / count + 0.5)) - 1) for i in range(count)})


# -- offline augmentation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentSpec:
    """Augmented copies per image and the seed that makes them reproducible."""

    copies: int = 5
    seed: int = 0
    jitter: float = 0.2
    shift: float = 0.2
    rotate_deg: float = 20.0

    def variant(self, copy: int) -> dict[str, Any]:
        return {"augment": "v1", "seed": self.seed, "copy": copy, "jitter": self.jitter, "shift": self.shift, "rotate": self.rotate_deg}


def augment_image(image: np.ndarray, spec: AugmentSpec, copy: int, key: str) -> np.ndarray:
    """Copy ``copy`` of ``image`` (uint8 HxW or HxWx3): jitter and CLAHE each with p=0.5, then shift+rotate."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    seed = int.from_bytes(hashlib.sha256(f"{key}|{spec.seed}|{copy}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    pil = Image.fromarray(np.ascontiguousarray(image))
    if rng.random() < 0.5:
        pil = TF.adjust_brightness(pil, float(rng.uniform(1 - spec.jitter, 1 + spec.jitter)))
        pil = TF.adjust_contrast(pil, float(rng.uniform(1 - spec.jitter, 1 + spec.jitter)))
    if rng.random() < 0.5:
        try:
            from skimage.exposure import equalize_adapthist
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise FetalCLIPError("offline augmentation needs scikit-image for CLAHE: pip install 'fetalclip[probe]'") from exc
        equalised = equalize_adapthist(np.asarray(pil), clip_limit=0.01)
        pil = Image.fromarray((np.clip(equalised, 0, 1) * 255).astype(np.uint8))
    width, height = pil.size
    dx = int(round(rng.uniform(-spec.shift, spec.shift) * width))
    dy = int(round(rng.uniform(-spec.shift, spec.shift) * height))
    angle = float(rng.uniform(-spec.rotate_deg, spec.rotate_deg))
    pil = TF.affine(pil, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0], fill=0)
    return np.asarray(pil)


# -- the cache ------------------------------------------------------------------------------------------------
@dataclass
class BlockFeatures:
    """What segmentation needs: tapped blocks ``[N, taps, W, g, g]`` (float16), model images ``[N, S, S, 3]`` uint8."""

    blocks: np.ndarray
    images: np.ndarray
    embeddings: np.ndarray
    taps: list[int]


class FeatureCache:
    """Embeddings and intermediate blocks of a frozen encoder, computed once per (model, image, variant).

    ``root=None`` keeps nothing on disk (every call encodes); pass a folder to reuse features across runs.
    """

    def __init__(
        self,
        model: FetalCLIP,
        root: str | os.PathLike | None,
        batch_size: int = 32,
        progress: bool = False,
        skip_bad: bool = False,
    ):
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.skip_bad = skip_bad
        self.fingerprint = model_fingerprint(model)
        self.root = None if root is None else Path(root) / self.fingerprint[:20]
        self.encoded = 0  # images sent through the encoder by this object
        self.skipped: list[tuple[str, str]] = []
        self._index: dict[str, str] = {}
        self._index_dirty = False
        self._lock = threading.Lock()
        if self.root is not None:
            index_path = self.root / INDEX_NAME
            if index_path.is_file():
                try:
                    self._index = json.loads(index_path.read_text())
                except (OSError, json.JSONDecodeError):
                    self._index = {}  # a damaged index only costs re-hashing
            write_json_atomic(self.root / "model.json", {"fingerprint": self.fingerprint, "model": self.model.name,
                                                          "preprocess": self.model.preprocess.config.to_dict()})

    # -- public --------------------------------------------------------------------------------------------
    def embeddings(self, dataset: SampleDataset, variant: dict[str, Any] | None = None,
                   augment: tuple[AugmentSpec, int] | None = None) -> np.ndarray:
        """Projected (unnormalised) embeddings ``[N, D]`` float32 of every record, in order.

        ``augment=(spec, copy)`` gives the embeddings of augmented copy ``copy`` instead of the originals.
        """
        variant = augment[0].variant(augment[1]) if augment else (variant or {})
        entries = self._entries(dataset, "embed", variant, taps=None, augment=augment)
        return np.stack([entry["embedding"] for entry in entries]).astype(np.float32) if entries else np.zeros((0, self.model.embed_dim), np.float32)

    def blocks(self, dataset: SampleDataset, taps: Sequence[int] | None = None) -> BlockFeatures:
        """Tapped blocks as token grids (``models.layers``), model-input images and embeddings of every record."""
        # A tower without blocks (count None) still goes through image_taps, which names that error.
        taps = self.model.image_taps(taps if taps is not None else default_taps(self.model.image_block_count or 0))
        entries = self._entries(dataset, "blocks-" + "-".join(map(str, taps)), {}, taps=taps, augment=None)
        return BlockFeatures(
            blocks=np.stack([e["blocks"] for e in entries]),
            images=np.stack([e["model_image"] for e in entries]),
            embeddings=np.stack([e["embedding"] for e in entries]).astype(np.float32),
            taps=taps,
        )

    # -- internals ------------------------------------------------------------------------------------------
    def _entry_path(self, kind: str, variant: dict[str, Any], image_hash: str) -> Path | None:
        if self.root is None:
            return None
        variant_key = hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:12] if variant else "orig"
        return self.root / kind / variant_key / image_hash[:2] / f"{image_hash}.npz"

    @staticmethod
    def _source_key(record: dict[str, Any]) -> str | None:
        source = record.get("source")
        if not source or not os.path.isfile(source):
            return None
        stat = os.stat(source)
        return f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}|{record.get('frame_index')}"

    def _entries(self, dataset: SampleDataset, kind: str, variant: dict[str, Any], taps, augment) -> list[dict[str, np.ndarray]]:
        from ..progress import progress_bar

        n = len(dataset)
        entries: list[dict[str, np.ndarray] | None] = [None] * n
        hashes: list[str | None] = [None] * n
        samples: dict[int, dict[str, Any]] = {}
        for i, record in enumerate(dataset.records):
            key = self._source_key(record)
            image_hash = self._index.get(key) if key else None
            if image_hash is not None:
                hashes[i] = image_hash
                entries[i] = self._read(self._entry_path(kind, variant, image_hash))
        misses = [i for i in range(n) if entries[i] is None]
        bad: set[int] = set()
        with progress_bar(total=len(misses), unit="img", desc=f"encode {kind}", disable=not self.progress or not misses) as bar:
            for start in range(0, len(misses), self.batch_size):
                batch, duplicates = [], {}
                for i in misses[start : start + self.batch_size]:
                    try:
                        sample = samples.pop(i, None) or dataset[i]
                    except FetalCLIPError as exc:
                        if not self.skip_bad:
                            raise
                        self.skipped.append((str(dataset.records[i].get("source")), str(exc)))
                        bad.add(i)
                        continue
                    if hashes[i] is None:
                        hashes[i] = content_hash(sample["image"])
                        key = self._source_key(dataset.records[i])
                        if key:
                            self._index[key], self._index_dirty = hashes[i], True
                    cached = self._read(self._entry_path(kind, variant, hashes[i]))
                    if cached is not None:
                        entries[i] = cached
                        continue
                    if hashes[i] in duplicates:  # same pixels earlier in this batch: encode once
                        duplicates[hashes[i]].append(i)
                        continue
                    duplicates[hashes[i]] = []
                    image = sample["image"]
                    if augment is not None:
                        image = augment_image(image, augment[0], augment[1], hashes[i])
                    batch.append((i, image))
                if batch:
                    for (i, _), entry in zip(batch, self._encode([image for _, image in batch], taps)):
                        entries[i] = entry
                        for j in duplicates.get(hashes[i], []):
                            entries[j] = entry
                        self._write(self._entry_path(kind, variant, hashes[i]), entry)
                        if taps is not None:  # the embedding came for free: cache it as well
                            self._write(self._entry_path("embed", {}, hashes[i]), {"embedding": entry["embedding"]})
                bar.update(len(misses[start : start + self.batch_size]))
        self._save_index()
        if bad:
            raise _SkippedRecords(sorted(bad), entries)
        return entries  # type: ignore[return-value]

    def _encode(self, images: list[np.ndarray], taps) -> list[dict[str, np.ndarray]]:
        preprocess = self.model.preprocess
        model_images = [preprocess.to_model_image(image) for image in images]
        # The model's own encoding path (its device and input dtype), fed the model images decoded once here.
        batch = torch.stack([preprocess(image) for image in model_images])
        with torch.inference_mode():
            if taps is None:
                features = self.model.encode_image(batch)
                out = [{"embedding": f.float().cpu().numpy()} for f in features]
            else:
                result = self.model.encode_image_intermediates(batch, taps)
                blocks = result.blocks.to(torch.float16).cpu().numpy()
                embeddings = result.embeddings.float().cpu().numpy()
                out = [
                    {"embedding": e, "blocks": b, "model_image": np.asarray(m, dtype=np.uint8)}
                    for e, b, m in zip(embeddings, blocks, model_images)
                ]
        self.encoded += len(images)
        return out

    @staticmethod
    def _read(path: Path | None) -> dict[str, np.ndarray] | None:
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError):
            return None  # unreadable entries are recomputed and overwritten

    @staticmethod
    def _write(path: Path | None, entry: dict[str, np.ndarray]) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **entry)

    def _save_index(self) -> None:
        if self.root is None or not self._index_dirty:
            return
        with self._lock:
            merged = dict(self._index)
            index_path = self.root / INDEX_NAME
            if index_path.is_file():  # keep entries another process added meanwhile
                try:
                    merged = {**json.loads(index_path.read_text()), **merged}
                except (OSError, json.JSONDecodeError):
                    pass
            write_json_atomic(index_path, merged, indent=0)
            self._index, self._index_dirty = merged, False


class _SkippedRecords(Exception):
    """Internal: some records could not be read (``skip_bad``); carries their indices and the rest."""

    def __init__(self, indices: list[int], entries: list):
        super().__init__(f"{len(indices)} unreadable records")
        self.indices = indices
        self.entries = entries


def drop_unreadable(cache: FeatureCache, dataset: SampleDataset, fetch: Callable[[SampleDataset], Any]) -> tuple[SampleDataset, Any]:
    """Run ``fetch(dataset)``; with ``cache.skip_bad``, drop the records that failed to read and run it again."""
    try:
        return dataset, fetch(dataset)
    except _SkippedRecords as exc:
        keep = [i for i in range(len(dataset)) if i not in set(exc.indices)]
        if not keep:
            raise FetalCLIPError(f"{dataset.name}: no readable images") from None
        subset = dataset.subset(keep)
        return subset, fetch(subset)
