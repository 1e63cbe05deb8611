"""The table-reading dataset adapters: ``hc18:DIR``, ``fpdb:DIR``, ``csv:FILE`` and ``folder:DIR``.

Manifests are untrusted text. Every table is read through ``_table_rows`` (UTF-8, required columns checked,
one error naming the file for a bad encoding or a broken CSV) and every number through ``_number`` (positive
and finite, or an error naming file, line and column). Rows that cannot be used but need not stop the run (a
listed file that is absent, the same image listed twice) are kept out of ``records`` and counted in the
dataset's ``missing`` and ``duplicates``; ``open_dataset`` logs them and ``problems()`` gives them to a
command's JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import FetalCLIPError
from .labels import canonical_label
from .masks import fill_outline, read_mask
from .readers import RASTER_SUFFIXES
from .records import Loader, Record, SampleDataset, load_record_image, with_spacing_224
from .sample import positive_finite


def _existing_dir(path: str, spec: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FetalCLIPError(f"{spec}: {folder} is not a folder")
    return folder


def _table_rows(table: Path, required: Sequence[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV table: names and values stripped, absent values ``""``.

    A file that is not UTF-8, is not a CSV or lacks a ``required`` column is one ``FetalCLIPError`` naming it.
    Line numbers count rows, the header being line 1 (a quoted cell spanning several lines is still one row).
    """
    try:
        with table.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = [(name or "").strip() for name in reader.fieldnames or []]
            absent = [name for name in required if name not in columns]
            if absent:
                raise FetalCLIPError(
                    f"{table}: needs column(s) {', '.join(repr(n) for n in absent)} (has: {', '.join(columns) or 'none'})"
                )
            reader.fieldnames = columns
            for line, row in enumerate(reader, start=2):
                # Extra values land under the key None (as a list): not a column, so dropped.
                yield line, {key: (value or "").strip() for key, value in row.items() if key and not isinstance(value, list)}
    except UnicodeDecodeError as exc:
        raise FetalCLIPError(f"{table}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except csv.Error as exc:
        raise FetalCLIPError(f"{table}: not a readable CSV table ({exc})") from None
    except OSError as exc:
        raise FetalCLIPError(f"{table}: cannot read it ({exc.strerror or exc})") from None


def _number(row: dict[str, str], column: str, table: Path, line: int) -> float | None:
    """A positive, finite number from ``row[column]`` (``None`` when blank); anything else names file, line, column."""
    try:
        return positive_finite(row.get(column), column)
    except ValueError as exc:
        raise FetalCLIPError(f"{table}: line {line}: {exc}") from None


def _labelled(text: str, vocabulary: str, table: Path, line: int, strict: bool = True) -> str | None:
    try:
        return canonical_label(text, vocabulary, strict=strict)
    except FetalCLIPError as exc:
        raise FetalCLIPError(f"{table}: line {line}: {exc}") from None


class _RowCollector:
    """Records of one table, with rows whose file is absent and repeated rows set aside (and said why)."""

    def __init__(self, table: Path):
        self.table = table
        self.records: list[Record] = []
        self.missing: list[tuple[str, str]] = []
        self.duplicates: list[tuple[str, str]] = []
        self._first_line: dict[str, int] = {}

    def absent(self, image: Path, line: int) -> None:
        self.missing.append((str(image), f"listed on line {line} of {self.table.name} but absent"))

    def add(self, record: Record, line: int) -> None:
        # A repeated row would be embedded, trained on and scored twice. Only rows that say exactly the same
        # thing are repeats: one image listed again with another mask or frame is a second, different sample.
        key = json.dumps(record, sort_keys=True, default=str)
        if key in self._first_line:
            self.duplicates.append(
                (record["source"], f"line {line} of {self.table.name} repeats line {self._first_line[key]}")
            )
            return
        self._first_line[key] = line
        self.records.append(record)

    def dataset(self, name: str, loader: Loader = load_record_image) -> SampleDataset:
        return SampleDataset(name, self.records, loader, self.missing, self.duplicates)


def _listed_path(text: str, base: Path, table: Path, line: int, column: str) -> Path:
    """A file named in a table (relative to the table's folder); blank or unusable names are an error."""
    if not text:
        raise FetalCLIPError(f"{table}: line {line}: {column} is empty")
    if "\x00" in text:
        raise FetalCLIPError(f"{table}: line {line}: {column} {text!r} is not a usable file name")
    path = Path(text)
    return path if path.is_absolute() else base / path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the filesystem is as absent as a missing file
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


# -- HC18 ----------------------------------------------------------------------------------------------------
HC18_CSV = "training_set_pixel_size_and_HC.csv"
HC18_COLUMNS = ("filename", "pixel size(mm)", "head circumference (mm)")


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
    rows = _RowCollector(table)
    for line, row in _table_rows(table, HC18_COLUMNS):
        name = _plain_file_name(row, "filename", "training_set/", table, line)
        image = root / "training_set" / name
        annotation = image.with_name(image.stem + "_Annotation.png")
        spacing = _number(row, "pixel size(mm)", table, line)
        hc_mm = _number(row, "head circumference (mm)", table, line)
        if not _is_file(image):
            rows.absent(image, line)
            continue
        record = {
            "source": str(image),
            "frame_index": None,
            "pixel_spacing_mm": spacing,
            "label": "brain",
            "patient": hc18_subject(name),
            "hc_mm": hc_mm,
            "metadata": {"dataset": "hc18", "annotation": str(annotation) if annotation.is_file() else None},
        }
        rows.add(with_spacing_224(record), line)
    return rows.dataset(f"hc18:{path}", loader=load_hc18_record)


def _plain_file_name(row: dict[str, str], column: str, folder: str, table: Path, line: int) -> str:
    """The row's file name, refused unless it names a file directly inside the dataset's ``folder``."""
    name = row[column]
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise FetalCLIPError(f"{table}: line {line}: {column} {name!r} is not a file name in {folder}")
    return name


# -- FETAL_PLANES_DB -------------------------------------------------------------------------------------------
FPDB_CSV = "FETAL_PLANES_DB_data.csv"
FPDB_COLUMNS = ("Image_name", "Patient_num", "Plane", "Brain_plane")


def open_fpdb(path: str) -> SampleDataset:
    root = _existing_dir(path, f"fpdb:{path}")
    table = root / FPDB_CSV
    if not table.is_file():
        raise FetalCLIPError(f"fpdb:{path}: {FPDB_CSV} not found in {root}")
    images = root / "Images"
    rows = _RowCollector(table)
    # The published CSV has a trailing space in its last header ("Train ") and in its values: both stripped.
    for line, row in _table_rows(table, FPDB_COLUMNS, delimiter=";"):
        name = _plain_file_name(row, "Image_name", "Images/", table, line)
        image = images / f"{name}.png"
        label = _labelled(row["Plane"], "plane", table, line)
        brain_plane = _labelled(row["Brain_plane"], "brain_plane", table, line)
        if not _is_file(image):
            rows.absent(image, line)
            continue
        record = {
            "source": str(image),
            "frame_index": None,
            "pixel_spacing_mm": None,
            "label": label,
            "brain_plane": brain_plane,
            "patient": row["Patient_num"],
            "split": "train" if row.get("Train") == "1" else "test",
            "metadata": {"dataset": "fpdb", "operator": row.get("Operator"), "us_machine": row.get("US_Machine")},
        }
        rows.add(record, line)
    return rows.dataset(f"fpdb:{path}")


# -- generic CSV manifest --------------------------------------------------------------------------------------
CSV_OPTIONAL_FLOATS = ("pixel_spacing_mm", "ga_days", "hc_mm")


def open_csv(path: str) -> SampleDataset:
    table = Path(path).expanduser()
    if not _is_file(table):
        raise FetalCLIPError(f"csv:{path}: no such file")
    base = table.parent
    rows = _RowCollector(table)
    for line, row in _table_rows(table, ("path",)):
        image = _listed_path(row["path"], base, table, line, "path")
        floats = {key: _number(row, key, table, line) for key in CSV_OPTIONAL_FLOATS}
        frame_index = _frame_index(row.get("frame_index"), table, line)
        if not _exists(image):
            rows.absent(image, line)
            continue
        label = row.get("label") or None
        record: Record = {
            "source": str(image),
            "frame_index": frame_index,
            "pixel_spacing_mm": floats.pop("pixel_spacing_mm"),
            "label": canonical_label(label, "plane", strict=False) if label else None,
            # Without a patient column every image is its own patient (splits stay valid, if optimistic).
            "patient": row.get("patient") or str(image),
            "metadata": {"dataset": "csv", "manifest": str(table)},
        }
        record.update({key: value for key, value in floats.items() if value is not None})
        if row.get("brain_plane"):
            record["brain_plane"] = canonical_label(row["brain_plane"], "brain_plane", strict=False)
        for text_field in ("view", "finding", "caption", "split"):
            if row.get(text_field):
                record[text_field] = row[text_field]
        if row.get("mask"):
            record["metadata"]["mask_path"] = str(_listed_path(row["mask"], base, table, line, "mask"))
        rows.add(with_spacing_224(record), line)
    return rows.dataset(f"csv:{path}")


def _frame_index(text: str | None, table: Path, line: int) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit():  # int() would also take "+3", "1_0" and non-ASCII digits
        raise FetalCLIPError(f"{table}: line {line}: frame_index {text!r} is not a non-negative integer")
    return int(text)


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
