"""Shard folders (the data layer's WebDataset format) opened as random-access sample datasets.

Format contract: a folder of ``shard-NNNNNN.tar`` files plus ``manifest.json``; each sample is ``{key}.png``
(the image as stored), ``{key}.txt`` (its caption), ``{key}.json`` (metadata: source, label, brain_plane,
patient, pixel spacing, ga_days, hc_mm, dataset, ...) and optionally ``{key}.mask.png``.

Design choice: training needs random access, because the order of a run must depend only on the seed and the
step (not on the number of processes or loader workers) for exact resumption and for a 2-process run to see
the same global batches as a 1-process run. A tar file on a filesystem allows that: one pass over the tar
headers gives each member's byte offset, after which a sample is two ``seek``/``read`` calls. Member names
are split into key and extension by webdataset's own rule (``base_plus_ext``), so anything the webdataset
writer produces is grouped the same way here. Object stores that only stream are not supported by this path.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import SampleDataset
from ..errors import FetalCLIPError

MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.tar"
_SAMPLE_FIELDS = ("label", "brain_plane", "patient", "pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "hc_mm", "frame_index", "split")


def is_shard_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).is_file() or any(path.glob(SHARD_GLOB)))


def _manifest_shards(folder: Path) -> list[tuple[Path, int | None]]:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return [(path, None) for path in sorted(folder.glob(SHARD_GLOB))]
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetalCLIPError(f"{manifest}: not valid JSON ({exc})") from exc
    entries = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise FetalCLIPError(f"{manifest}: expected a 'shards' list")
    shards = []
    for entry in entries:
        if isinstance(entry, str):
            name, count = entry, None
        else:
            name = entry.get("name") or entry.get("path") or entry.get("file") or entry.get("url")
            count = entry.get("count", entry.get("samples", entry.get("num_samples")))
        if not name:
            raise FetalCLIPError(f"{manifest}: shard entry without a name: {entry!r}")
        shards.append((folder / Path(name).name, None if count is None else int(count)))
    return shards


def _split_name(name: str) -> tuple[str, str] | None:
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return None if key is None else (key, ext)


def index_shard(path: Path) -> list[dict[str, Any]]:
    """One record per sample key: member offsets plus the metadata of its ``.json``."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            metadata: dict[str, dict[str, Any]] = {}
            for member in tar:
                if not member.isfile():
                    continue
                split = _split_name(member.name)
                if split is None:
                    continue
                key, ext = split
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext] = (member.offset_data, member.size)
                if ext == "json":
                    metadata[key] = json.loads(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetalCLIPError(f"{path}: cannot read shard ({exc})") from exc
    records = []
    for key in order:
        members = groups[key]
        if "png" not in members:
            raise FetalCLIPError(f"{path}: sample {key!r} has no .png member")
        meta = metadata.get(key, {})
        record = {
            "source": meta.get("source") or f"{path}:{key}",
            "frame_index": meta.get("frame_index"),
            "pixel_spacing_mm": meta.get("pixel_spacing_mm"),
            "label": meta.get("label"),
            "patient": None if meta.get("patient") is None else str(meta["patient"]),
            "metadata": {"dataset": meta.get("dataset"), "shard": str(path), "key": key},
            "_shard": str(path),
            "_members": members,
        }
        for name in _SAMPLE_FIELDS:
            if meta.get(name) is not None and name not in ("frame_index", "pixel_spacing_mm", "label", "patient"):
                record[name] = meta[name]
        records.append(record)
    return records


def _decode_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
            return np.asarray(image).copy()
    except OSError as exc:
        raise FetalCLIPError(f"{where}: cannot decode image ({exc})") from exc


def _read_member(path: str, span: tuple[int, int]) -> bytes:
    offset, size = span
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def load_shard_record(record: dict[str, Any]) -> dict[str, Any]:
    """A full sample dictionary (image decoded, caption from ``.txt``) for an indexed shard record."""
    members, shard = record["_members"], record["_shard"]
    where = f"{shard}:{record['metadata']['key']}"
    sample = {key: value for key, value in record.items() if not key.startswith("_")}
    sample["metadata"] = dict(record["metadata"])
    sample["image"] = _decode_png(_read_member(shard, members["png"]), where)
    if "txt" in members:
        sample["caption"] = _read_member(shard, members["txt"]).decode("utf-8").strip()
    if "mask.png" in members:
        sample["mask"] = _decode_png(_read_member(shard, members["mask.png"]), where + ".mask")
    return sample


def open_shard_folder(folder: str | os.PathLike) -> SampleDataset:
    folder = Path(folder)
    shards = _manifest_shards(folder)
    if not shards:
        raise FetalCLIPError(f"{folder}: no {SHARD_GLOB} files and no {MANIFEST}")
    records: list[dict[str, Any]] = []
    for path, count in shards:
        if not path.is_file():
            raise FetalCLIPError(f"{folder / MANIFEST}: lists {path.name}, which is missing")
        shard_records = index_shard(path)
        if count is not None and count != len(shard_records):
            raise FetalCLIPError(f"{path}: manifest says {count} samples, the shard holds {len(shard_records)}")
        records.extend(shard_records)
    return SampleDataset(f"shards:{folder}", records, loader=load_shard_record)
