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

Every file is opened and every member read under the data layer's shard rules (``fetalclip.data.shards``:
regular files only, plain tar, bounded members and manifest, names that stay inside the folder), the very
functions ``fetalclip data check`` uses, so what the checker passes is what training reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import SampleDataset
from ..data.sample import InvalidValueError, positive_finite
from ..data.shards import (
    MANIFEST, ShardError, decode_image_member, open_regular_file, open_shard_tar, read_manifest_json, read_member,
    shard_file, shard_samples,
)
from ..errors import FetalCLIPError

SHARD_GLOB = "shard-*.tar"
_SAMPLE_FIELDS = ("label", "brain_plane", "patient", "pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "hc_mm", "frame_index", "split")


def is_shard_folder(path: str | os.PathLike) -> bool:
    # lexists: a manifest.json that is a link or a device still makes this a shard folder, whose reader then
    # refuses it by name, rather than a folder silently read without its manifest.
    path = Path(path)
    return path.is_dir() and (os.path.lexists(path / MANIFEST) or any(path.glob(SHARD_GLOB)))


def _manifest_shards(folder: Path) -> list[tuple[Path, int | None]]:
    manifest = folder / MANIFEST
    if not os.path.lexists(manifest):
        return [(path, None) for path in sorted(folder.glob(SHARD_GLOB))]
    data = read_manifest_json(manifest)
    entries = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise FetalCLIPError(f"{manifest}: expected a 'shards' list")
    shards = []
    for entry in entries:
        if isinstance(entry, str):
            name, count = entry, None
        elif isinstance(entry, dict):
            name = entry.get("name") or entry.get("path") or entry.get("file") or entry.get("url")
            count = entry.get("count", entry.get("samples", entry.get("num_samples")))
        else:
            raise FetalCLIPError(f"{manifest}: shard entry is neither a name nor an object: {entry!r}")
        if not name:
            raise FetalCLIPError(f"{manifest}: shard entry without a name: {entry!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise FetalCLIPError(f"{manifest}: shard entry {name!r} has a sample count that is not a whole number: {count!r}")
        shards.append((shard_file(folder, name), count))
    return shards


def index_shard(path: Path) -> list[dict[str, Any]]:
    """One record per sample key: member offsets plus the metadata of its ``.json``."""
    records = []
    with open_shard_tar(path) as tar:
        for key, members in shard_samples(tar, path):
            if "png" not in members:
                raise FetalCLIPError(f"{path}: sample {key!r} has no .png member")
            meta = _member_json(tar, members["json"], path) if "json" in members else {}
            spans = {extension: (info.offset_data, info.size) for extension, info in members.items()}
            records.append(_record(path, key, spans, meta))
    return records


def _member_json(tar, info, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(read_member(tar, info, path))
    except (ValueError, RecursionError) as exc:
        raise ShardError(path, f"member {info.name!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ShardError(path, f"member {info.name!r} is not a JSON object")
    return meta


def _measure(path: Path, key: str, meta: dict[str, Any], name: str) -> float | None:
    """A physical quantity of the sample's JSON, refused (naming shard and member) unless positive and finite."""
    try:
        return positive_finite(meta.get(name), name)
    except InvalidValueError as exc:
        raise ShardError(path, f"member '{key}.json': {exc}") from None


def _record(path: Path, key: str, members: dict[str, tuple[int, int]], meta: dict[str, Any]) -> dict[str, Any]:
    for name in ("pixel_spacing_224_mm", "ga_days", "hc_mm"):
        _measure(path, key, meta, name)
    record = {
        "source": meta.get("source") or f"{path}:{key}",
        "frame_index": meta.get("frame_index"),
        "pixel_spacing_mm": _measure(path, key, meta, "pixel_spacing_mm"),
        "label": meta.get("label"),
        "patient": None if meta.get("patient") is None else str(meta["patient"]),
        "metadata": {"dataset": meta.get("dataset"), "shard": str(path), "key": key},
        "_shard": str(path),
        "_members": members,
    }
    for name in _SAMPLE_FIELDS:
        if meta.get(name) is not None and name not in ("frame_index", "pixel_spacing_mm", "label", "patient"):
            record[name] = meta[name]
    return record


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """Pixels of an image member (``ImageReadError`` naming shard and member when it does not decode)."""
    image = decode_image_member(data, where)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    return np.asarray(image).copy()


def _read_member(path: str, span: tuple[int, int]) -> bytes:
    offset, size = span  # bounded when the shard was indexed
    with open_regular_file(path) as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise ShardError(path, f"member at byte {offset} is cut short (the shard changed after it was indexed)")
    return data


def load_shard_record(record: dict[str, Any]) -> dict[str, Any]:
    """A full sample dictionary (image decoded, caption from ``.txt``) for an indexed shard record."""
    members, shard = record["_members"], record["_shard"]
    where = f"{shard}:{record['metadata']['key']}"  # the member names below are where + ".png" etc.
    sample = {key: value for key, value in record.items() if not key.startswith("_")}
    sample["metadata"] = dict(record["metadata"])
    sample["image"] = _decode_png(_read_member(shard, members["png"]), where + ".png")
    if "txt" in members:
        try:
            sample["caption"] = _read_member(shard, members["txt"]).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ShardError(where + ".txt", f"caption is not UTF-8 text ({exc.reason})") from None
    if "mask.png" in members:
        sample["mask"] = _decode_png(_read_member(shard, members["mask.png"]), where + ".mask.png")
    return sample


def open_shard_folder(folder: str | os.PathLike) -> SampleDataset:
    folder = Path(folder)
    shards = _manifest_shards(folder)
    if not shards:
        raise FetalCLIPError(f"{folder}: no {SHARD_GLOB} files and no {MANIFEST}")
    records: list[dict[str, Any]] = []
    for path, count in shards:
        if not os.path.lexists(path):
            raise FetalCLIPError(f"{folder / MANIFEST}: lists {path.name}, which is missing")
        shard_records = index_shard(path)
        if count is not None and count != len(shard_records):
            raise FetalCLIPError(f"{path}: manifest says {count} samples, the shard holds {len(shard_records)}")
        records.extend(shard_records)
    return SampleDataset(f"shards:{folder}", records, loader=load_shard_record)
