"""Dataset specs (``hc18:DIR``, ``fpdb:DIR``, ``csv:FILE``, ``folder:DIR``, ``sim:N``) and lazy datasets.

A dataset is a list of *records* (every sample field except the pixels) plus a loader that reads one record
into a full sample dictionary (see ``sample.py``). Splits, label counts and manifests work on records alone,
so listing 12,000 images costs a CSV read (and, where a spacing is known, an image header read for the
224-input spacing), not 12,000 decodes. A record may point at a multi-frame source (DICOM, video, a folder
of frames): indexing reads its ``frame_index`` (first frame when ``None``), ``iter_record_samples`` expands
it into frames. Adapters register under a scheme name; ``sim`` is registered by ``fetalclip.sim`` and
imported only when asked for, keeping the data layer free of the phantom's dependencies.
"""

from __future__ import annotations

import copy
import csv
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image

from ..errors import FetalCLIPError
from .frames import FrameSelection
from .labels import canonical_label
from .masks import fill_outline, read_mask
from .readers import RASTER_SUFFIXES, read_frame, read_image, read_samples, source_kind
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
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError):
        return None


def _with_spacing_224(record: Record) -> Record:
    """Attach ``pixel_spacing_224_mm`` to a record whose spacing is known (one header read)."""
    if record.get("pixel_spacing_mm") is not None:
        size = image_size(record["source"])
        if size is not None:
            record["pixel_spacing_224_mm"] = spacing_224(record["pixel_spacing_mm"], *size)
    return record


@dataclass
class SampleDataset:
    """Records plus a loader; indexing returns full sample dictionaries (image decoded on demand)."""

    name: str
    records: list[Record]
    loader: Loader = load_record_image
    missing: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) for rows without a file

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.loader(self.records[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "SampleDataset":
        return SampleDataset(name or self.name, [self.records[i] for i in indices], self.loader, list(self.missing))

    def column(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.records]

    def iter_record_samples(self, index: int, frames: "FrameSelection | str | None" = None) -> Iterator[dict[str, Any]]:
        """Every selected frame of record ``index``: one sample for an image (through this dataset's loader,
        so adapter extras like masks come along), one per frame for a DICOM, video or frame folder whose
        record names no single frame."""
        record = self.records[index]
        if record.get("frame_index") is not None or source_kind(record["source"]) == "raster":
            yield self.loader(record)
            return
        fields = _record_fields(record)
        fields.pop("frame_index", None)
        yield from read_samples(record["source"], frames, **fields)


_ADAPTERS: dict[str, Callable[[str], SampleDataset]] = {}
_LAZY_ADAPTERS = {"sim": "fetalclip.sim"}  # scheme -> module that registers it on import


def register_adapter(scheme: str, factory: Callable[[str], SampleDataset]) -> None:
    _ADAPTERS[scheme] = factory


def parse_spec(spec: str) -> tuple[str, str]:
    scheme, sep, argument = spec.partition(":")
    if not sep or not argument:
        raise FetalCLIPError(f"dataset spec {spec!r}: expected SCHEME:ARG with scheme one of {', '.join(known_schemes())}")
    return scheme, argument


def known_schemes() -> list[str]:
    return sorted(set(_ADAPTERS) | set(_LAZY_ADAPTERS))


def open_dataset(spec: str) -> SampleDataset:
    """Open a dataset from its command-line spec."""
    scheme, argument = parse_spec(spec)
    if scheme not in _ADAPTERS and scheme in _LAZY_ADAPTERS:
        importlib.import_module(_LAZY_ADAPTERS[scheme])
    if scheme not in _ADAPTERS:
        raise FetalCLIPError(f"dataset spec {spec!r}: unknown scheme {scheme!r}; known: {', '.join(known_schemes())}")
    return _ADAPTERS[scheme](argument)


def _existing_dir(path: str, spec: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FetalCLIPError(f"{spec}: {folder} is not a folder")
    return folder


def _float_or_none(value: str | None) -> float | None:
    value = (value or "").strip()
    return float(value) if value else None


# -- HC18 ----------------------------------------------------------------------------------------------------
HC18_CSV = "training_set_pixel_size_and_HC.csv"


def hc18_subject(filename: str) -> str:
    """``012_2HC.png`` -> ``012``: several images can share a subject, so splits go by this id."""
    return Path(filename).name.split("_", 1)[0]


def load_hc18_record(record: Record) -> dict[str, Any]:
    """HC18 image plus ``mask`` (uint8, 1 = head) filled from its ellipse-outline annotation."""
    sample = load_record_image(record)
    annotation = record["metadata"].get("annotation")
    if annotation:
        outline = read_mask(annotation, sample["image"].shape[:2])
        sample["mask"] = fill_outline(outline)
    return sample


def open_hc18(path: str) -> SampleDataset:
    root = _existing_dir(path, f"hc18:{path}")
    table = root / HC18_CSV
    if not table.is_file():
        raise FetalCLIPError(f"hc18:{path}: {HC18_CSV} not found in {root}")
    records, missing = [], []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = row["filename"].strip()
            image = root / "training_set" / name
            annotation = image.with_name(image.stem + "_Annotation.png")
            if not image.is_file():
                missing.append((str(image), "image file absent"))
                continue
            records.append(
                _with_spacing_224(
                    {
                        "source": str(image),
                        "frame_index": None,
                        "pixel_spacing_mm": _float_or_none(row["pixel size(mm)"]),
                        "label": "brain",
                        "patient": hc18_subject(name),
                        "hc_mm": _float_or_none(row["head circumference (mm)"]),
                        "metadata": {"dataset": "hc18", "annotation": str(annotation) if annotation.is_file() else None},
                    }
                )
            )
    return SampleDataset(f"hc18:{path}", records, loader=load_hc18_record, missing=missing)


# -- FETAL_PLANES_DB -------------------------------------------------------------------------------------------
FPDB_CSV = "FETAL_PLANES_DB_data.csv"


def open_fpdb(path: str) -> SampleDataset:
    root = _existing_dir(path, f"fpdb:{path}")
    table = root / FPDB_CSV
    if not table.is_file():
        raise FetalCLIPError(f"fpdb:{path}: {FPDB_CSV} not found in {root}")
    images = root / "Images"
    records, missing = [], []
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        # The published CSV has a trailing space in its last header ("Train ") and in its values.
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        for line, row in enumerate(reader, start=2):
            row = {key: (value or "").strip() for key, value in row.items() if key}
            image = images / f"{row['Image_name']}.png"
            if not image.is_file():
                missing.append((str(image), f"listed on line {line} of {FPDB_CSV} but absent"))
                continue
            records.append(
                {
                    "source": str(image),
                    "frame_index": None,
                    "pixel_spacing_mm": None,
                    "label": canonical_label(row["Plane"], "plane"),
                    "brain_plane": canonical_label(row["Brain_plane"], "brain_plane"),
                    "patient": row["Patient_num"],
                    "split": "train" if row.get("Train") == "1" else "test",
                    "metadata": {"dataset": "fpdb", "operator": row.get("Operator"), "us_machine": row.get("US_Machine")},
                }
            )
    return SampleDataset(f"fpdb:{path}", records, missing=missing)


# -- generic CSV manifest --------------------------------------------------------------------------------------
CSV_OPTIONAL_FLOATS = ("pixel_spacing_mm", "ga_days", "hc_mm")


def open_csv(path: str) -> SampleDataset:
    table = Path(path).expanduser()
    if not table.is_file():
        raise FetalCLIPError(f"csv:{path}: no such file")
    base = table.parent
    records, missing = [], []
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        if "path" not in columns:
            raise FetalCLIPError(f"csv:{path}: needs a 'path' column (has: {', '.join(columns) or 'none'})")
        reader.fieldnames = columns
        for line, row in enumerate(reader, start=2):
            row = {key: (value or "").strip() for key, value in row.items() if key}
            image = Path(row["path"])
            image = image if image.is_absolute() else base / image
            if not image.exists():
                missing.append((str(image), f"listed on line {line} of {table.name} but absent"))
                continue
            try:
                floats = {key: _float_or_none(row.get(key)) for key in CSV_OPTIONAL_FLOATS}
            except ValueError as exc:
                raise FetalCLIPError(f"{table}: line {line}: {exc}") from exc
            label = row.get("label") or None
            record: Record = {
                "source": str(image),
                "frame_index": None,
                "pixel_spacing_mm": floats.pop("pixel_spacing_mm"),
                "label": canonical_label(label, "plane", strict=False) if label else None,
                # Without a patient column every image is its own patient (splits stay valid, if optimistic).
                "patient": row.get("patient") or str(image),
                "metadata": {"dataset": "csv", "manifest": str(table)},
            }
            record.update({key: value for key, value in floats.items() if value is not None})
            if row.get("brain_plane"):
                record["brain_plane"] = canonical_label(row["brain_plane"], "brain_plane", strict=False)
            if row.get("view"):
                record["view"] = row["view"]
            if row.get("finding"):
                record["finding"] = row["finding"]
            if row.get("frame_index"):
                try:
                    record["frame_index"] = int(row["frame_index"])
                except ValueError as exc:
                    raise FetalCLIPError(f"{table}: line {line}: frame_index {row['frame_index']!r} is not an integer") from exc
            if row.get("caption"):
                record["caption"] = row["caption"]
            if row.get("split"):
                record["split"] = row["split"]
            if row.get("mask"):
                mask = Path(row["mask"])
                record["metadata"]["mask_path"] = str(mask if mask.is_absolute() else base / mask)
            records.append(_with_spacing_224(record))
    return SampleDataset(f"csv:{path}", records, missing=missing)


# -- one sub-folder per class ----------------------------------------------------------------------------------
def open_folder(path: str) -> SampleDataset:
    root = _existing_dir(path, f"folder:{path}")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_label(class_dir.name, "plane", strict=False)
        for image in sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES):
            records.append(
                {
                    "source": str(image),
                    "frame_index": None,
                    "pixel_spacing_mm": None,
                    "label": label,
                    "patient": str(image),
                    "metadata": {"dataset": "folder", "class_folder": class_dir.name},
                }
            )
    if not records:
        raise FetalCLIPError(f"folder:{path}: no images found in class sub-folders of {root}")
    return SampleDataset(f"folder:{path}", records)


register_adapter("hc18", open_hc18)
register_adapter("fpdb", open_fpdb)
register_adapter("csv", open_csv)
register_adapter("folder", open_folder)


def dataset_root(spec: str) -> Path:
    """The folder a file-based spec points into (for relative outputs and provenance)."""
    scheme, argument = parse_spec(spec)
    path = Path(argument)
    return path.parent if scheme == "csv" else path


__all__ = [
    "SampleDataset",
    "dataset_root",
    "hc18_subject",
    "known_schemes",
    "image_size",
    "load_hc18_record",
    "load_record_image",
    "open_dataset",
    "parse_spec",
    "register_adapter",
]

