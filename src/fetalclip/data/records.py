"""Lazy datasets: records (every sample field except the pixels) plus a loader that reads one into a sample.

Splits, label counts and manifests work on records alone, so listing 12,000 images costs a table read (and,
where a spacing is known, an image header read for the 224-input spacing), not 12,000 decodes. A record may
point at a multi-frame source (DICOM, video, a folder of frames): indexing reads its ``frame_index`` (first
frame when ``None``), ``iter_record_samples`` expands it into frames. Rows an adapter could not use but need
not stop the run are kept out of ``records`` and counted in ``missing`` and ``duplicates``, so no command drops
or double-counts rows without saying so (see ``problems()``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ImageReadError
from .frames import FrameSelection
from .masks import read_mask
from .readers import RASTER_SUFFIXES, image_header_size, read_frame, read_image, read_samples, source_kind
from .sample import spacing_224

Record = dict[str, Any]
Loader = Callable[[Record], dict[str, Any]]


def _record_fields(record: Record) -> dict[str, Any]:
    return {key: copy.deepcopy(value) for key, value in record.items() if key not in ("source", "image", "mask")}


def load_record_image(record: Record) -> dict[str, Any]:
    """Default loader: read the record's file (its ``frame_index`` for multi-frame sources) with its fields;
    a ``metadata['mask_path']`` becomes the sample's ``mask``."""
    fields = _record_fields(record)
    source = record["source"]
    if Path(source).suffix.lower() in RASTER_SUFFIXES and Path(source).is_file():
        fields.pop("frame_index", None)
        sample = read_image(source, **fields)
    else:
        frame_index = fields.pop("frame_index", None)
        sample = read_frame(source, frame_index, **fields)
    mask_path = sample["metadata"].get("mask_path")
    if mask_path:
        sample["mask"] = read_mask(mask_path, sample["image"].shape[:2])
    return sample


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from a raster image's header, without decoding pixels; ``None`` if unreadable."""
    if Path(path).suffix.lower() not in RASTER_SUFFIXES:
        return None
    try:
        return image_header_size(path)  # the readers' rules: any failure or an over-budget size is "unreadable"
    except ImageReadError:
        return None


def with_spacing_224(record: Record) -> Record:
    """Attach ``pixel_spacing_224_mm`` to a record whose spacing is known (one header read)."""
    if record.get("pixel_spacing_mm") is not None:
        size = image_size(record["source"])
        if size is not None:
            height, width = size
            record["pixel_spacing_224_mm"] = spacing_224(record["pixel_spacing_mm"], width=width, height=height)
    return record


@dataclass
class SampleDataset:
    """Records plus a loader; indexing returns full sample dictionaries (image decoded on demand)."""

    name: str
    records: list[Record]
    loader: Loader = load_record_image
    missing: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) for rows without a file
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) for rows listed again
    # False where each record already is one sample (a shard set's packed frames): ``iter_record_samples`` then
    # never goes back to the record's source file to expand it into frames.
    expand_frames: bool = True

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.loader(self.records[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "SampleDataset":
        return SampleDataset(
            name or self.name, [self.records[i] for i in indices], self.loader, list(self.missing), list(self.duplicates),
            self.expand_frames,
        )

    def problems(self) -> dict[str, Any]:
        """Rows left out when the dataset was opened, for a command's output: count and first example of each."""
        return {
            kind: {"count": len(rows), "first": None if not rows else {"source": rows[0][0], "reason": rows[0][1]}}
            for kind, rows in (("missing", self.missing), ("duplicates", self.duplicates))
        }

    def rows_left_out(self) -> dict[str, Any]:
        """``{name: problems()}``, the shape every command's JSON reports the rows it left out in."""
        return {self.name: self.problems()}

    def describe_problems(self) -> str | None:
        """One line saying which listed rows were left out, ``None`` when none were."""
        parts = []
        for label, rows in (("listed file(s) missing", self.missing), ("duplicate row(s) ignored", self.duplicates)):
            if rows:
                parts.append(f"{len(rows)} {label} (first: {rows[0][0]}, {rows[0][1]})")
        return f"{self.name}: " + "; ".join(parts) if parts else None

    def column(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.records]

    def iter_record_samples(self, index: int, frames: "FrameSelection | str | None" = None) -> Iterator[dict[str, Any]]:
        """Every selected frame of record ``index``: one sample for an image (through this dataset's loader,
        so adapter extras like masks come along), one per frame for a DICOM, video or frame folder whose
        record names no single frame."""
        record = self.records[index]
        if not self.expand_frames or record.get("frame_index") is not None or source_kind(record["source"]) == "raster":
            yield self.loader(record)
            return
        fields = _record_fields(record)
        fields.pop("frame_index", None)
        yield from read_samples(record["source"], frames, **fields)
