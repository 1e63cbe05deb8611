"""Shard folders as random-access sample datasets: the ``shards:DIR`` dataset adapter.

Every command opens data through ``open_dataset``, so zero-shot, probes, the benchmark and training all read
a shard folder as they read ``csv:FILE``: a ``SampleDataset`` whose records carry the sample fields of each
``.json`` member (source, label, brain_plane, view, patient, split, frame_index, pixel spacing, ga_days,
hc_mm, finding, metadata) and the ``.txt`` caption, and whose loader decodes the image and mask on demand.

Design choice: random access, not streaming. Training's order must depend only on the seed and the step (not
on the number of processes or loader workers) for exact resumption, and evaluations index samples by split.
A tar file on a filesystem allows that: one pass over the tar headers gives each member's byte offset, after
which a sample is two ``seek``/``read`` calls. The index keeps records and offsets only, never pixels, as the
other adapters keep records and read images when indexed. Members group by webdataset's own rule, so anything
its writer produces reads the same here; object stores that only stream are not supported by this path.

Every file is opened and every member read under the shard rules (``rules``), the very functions ``fetalclip
data check`` uses, so what the checker passes is what every command reads.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ...errors import FetalCLIPError
from ..records import SampleDataset
from ..sample import OPTIONAL_KEYS, InvalidValueError, positive_finite, spacing_224
from .manifest import MANIFEST, SHARD_GLOB, folder_shards, is_shard_folder
from .rules import ShardError, decode_pixels, decode_text, open_regular_file, open_shard_tar, parse_json_object, read_member, shard_samples

# Optional sample fields a record takes from the JSON when present (caption comes from ``.txt``).
_OPTIONAL_FIELDS = tuple(key for key in OPTIONAL_KEYS if key not in ("caption", "mask"))
_MEASURES = ("pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "hc_mm")


def index_shard(path: Path) -> list[dict[str, Any]]:
    """One record per sample key: member offsets, the fields of its ``.json`` and its ``.txt`` caption."""
    records = []
    with open_shard_tar(path) as tar:
        for key, members in shard_samples(tar, path):
            if "png" not in members:
                raise ShardError(path, f"sample {key!r} has no .png member")
            where = f"{path}:{key}"
            meta = parse_json_object(read_member(tar, members["json"], path), f"{where}.json") if "json" in members else {}
            caption = decode_text(read_member(tar, members["txt"], path), f"{where}.txt").strip() if "txt" in members else None
            spans = {extension: (info.offset_data, info.size) for extension, info in members.items()}
            records.append(_record(path, key, spans, meta, caption))
    return records


def _measure(path: Path, key: str, meta: dict[str, Any], name: str) -> float | None:
    """A physical quantity of the sample's JSON, refused (naming shard and member) unless positive and finite."""
    try:
        return positive_finite(meta.get(name), name)
    except InvalidValueError as exc:
        raise ShardError(path, f"member '{key}.json': {exc}") from None


def _record(path: Path, key: str, members: dict[str, tuple[int, int]], meta: dict[str, Any],
            caption: str | None) -> dict[str, Any]:
    measured = {name: _measure(path, key, meta, name) for name in _MEASURES}
    packed_metadata = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
    record = {
        "source": meta.get("source") or f"{path}:{key}",
        "frame_index": meta.get("frame_index"),
        "pixel_spacing_mm": measured["pixel_spacing_mm"],
        "pixel_spacing_224_mm": measured["pixel_spacing_224_mm"],
        "label": meta.get("label"),
        "patient": None if meta.get("patient") is None else str(meta["patient"]),
        "metadata": {**packed_metadata, "dataset": meta.get("dataset"), "shard": str(path), "key": key},
    }
    # Optional fields as the source had them (``None`` included); physical quantities were checked above and
    # stay as the JSON gave them (an integer day stays one).
    record.update({name: meta[name] for name in _OPTIONAL_FIELDS if name in meta})
    if caption:
        record["caption"] = caption
    record["_shard"], record["_members"] = str(path), members
    return record


def _read_span(path: str, span: tuple[int, int]) -> bytes:
    offset, size = span  # bounded when the shard was indexed
    with open_regular_file(path) as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise ShardError(path, f"member at byte {offset} is cut short (the shard changed after it was indexed)")
    return data


def load_shard_record(record: dict[str, Any]) -> dict[str, Any]:
    """A full sample dictionary (image and mask decoded) for an indexed shard record."""
    members, shard = record["_members"], record["_shard"]
    where = f"{shard}:{record['metadata']['key']}"  # the member names below are where + ".png" etc.
    sample = {key: value for key, value in record.items() if not key.startswith("_")}
    sample["metadata"] = copy.deepcopy(record["metadata"])
    sample["image"] = decode_pixels(_read_span(shard, members["png"]), where + ".png")
    if sample["pixel_spacing_224_mm"] is None and sample["pixel_spacing_mm"] is not None:
        height, width = sample["image"].shape[:2]
        sample["pixel_spacing_224_mm"] = spacing_224(sample["pixel_spacing_mm"], width=width, height=height)
    if "mask.png" in members:
        sample["mask"] = decode_pixels(_read_span(shard, members["mask.png"]), where + ".mask.png")
    return sample


def open_shard_folder(folder: str | os.PathLike) -> SampleDataset:
    """Every sample of a shard folder (any writer's manifest, or none), indexed; images read when asked for."""
    folder = Path(folder)
    shards = folder_shards(folder)
    if not shards:
        raise FetalCLIPError(f"{folder}: no {SHARD_GLOB} files and no {MANIFEST}")
    records: list[dict[str, Any]] = []
    for entry in shards:
        if not os.path.lexists(entry.path):
            raise FetalCLIPError(f"{folder / MANIFEST}: lists {entry.path.name}, which is missing")
        shard_records = index_shard(entry.path)
        if entry.samples is not None and entry.samples != len(shard_records):
            raise FetalCLIPError(f"{entry.path}: manifest says {entry.samples} samples, the shard holds {len(shard_records)}")
        records.extend(shard_records)
    # A record is one packed sample (a frame already chosen): never expanded into its source file's frames.
    return SampleDataset(f"shards:{folder}", records, loader=load_shard_record, expand_frames=False)


def open_shards(argument: str) -> SampleDataset:
    """The ``shards:DIR`` adapter."""
    folder = Path(argument).expanduser()
    if not folder.is_dir():
        raise FetalCLIPError(f"shards:{argument}: {folder} is not a folder")
    if not is_shard_folder(folder):
        raise FetalCLIPError(f"{folder}: not a shard folder (no {SHARD_GLOB}, no {MANIFEST})")
    return open_shard_folder(folder)
