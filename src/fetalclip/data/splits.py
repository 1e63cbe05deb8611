"""Deterministic patient-level splits: a test part plus k cross-validation folds, saved as JSON.

Images of one patient (or HC18 subject) are near-duplicates, so a split by image leaks; every part here is a
set of *patients*. Records without a patient id fall back to their source file, so the frames of one cine
loop stay together. The split stores patient ids, not record indices, so it survives re-ordering or growth
of the dataset and can be shared as a small JSON file. Assignment is greedy on a seeded shuffle: each
patient goes to the part furthest below its target image count, which keeps parts balanced in images even
when patients contribute very different numbers of them. A dataset's own official split (FETAL_PLANES_DB's
``Train`` column) can define the test part instead.

This is the one split implementation: the probes, segmentation and calibration use it through the index view
at the end (``index_splits``, ``cross_validation_parts``, ``patient_holdout``), which turns a list of patient ids
into record indices and adds the training loops' conventions (``folds=1`` is one seeded 20% hold-out, an
external test set means no internal test part, an official split that leaks falls back to a seeded one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FetalCLIPError
from ..io import write_json_atomic
from .sample import patient_id

FORMAT_VERSION = 1
HOLDOUT_FOLDS = 5  # index_splits(folds=1): one fold of five validates (a 20% patient hold-out)

group_id = patient_id  # the id that must not straddle parts (the project's one patient rule), by its old name here


@dataclass
class Splits:
    """Patient ids per part: ``test`` and ``folds`` (k lists); fold i validates, the other folds train."""

    test: list[str]
    folds: list[list[str]]
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.folds)

    def part_of(self) -> dict[str, str]:
        """patient -> ``test`` or ``fold{i}``."""
        parts = {patient: "test" for patient in self.test}
        for index, fold in enumerate(self.folds):
            parts.update({patient: f"fold{index}" for patient in fold})
        return parts

    def indices(self, records: Sequence[dict[str, Any]], fold: int | None = None) -> dict[str, list[int]]:
        """Record indices of ``test``, and for ``fold`` i also ``train`` (other folds) and ``val`` (fold i);
        with ``fold=None``, ``train`` is every fold. Records of unknown patients are an error."""
        if fold is not None and not 0 <= fold < self.k:
            raise FetalCLIPError(f"fold {fold} requested but the split has {self.k} folds")
        parts = self.part_of()
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        unknown = []
        for index, record in enumerate(records):
            part = parts.get(patient_id(record))
            if part is None:
                unknown.append(patient_id(record))
            elif part == "test":
                out["test"].append(index)
            elif fold is not None and part == f"fold{fold}":
                out["val"].append(index)
            else:
                out["train"].append(index)
        if unknown:
            raise FetalCLIPError(
                f"{len(unknown)} record(s) belong to patients the split does not know (e.g. {unknown[0]!r}); "
                "was it made for another dataset?"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "seed": self.seed, "k": self.k, "settings": self.settings,
                "test": self.test, "folds": self.folds}

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Splits":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FetalCLIPError(f"{path}: cannot read split file ({exc})") from exc
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or "folds" not in data or "test" not in data:
            raise FetalCLIPError(f"{path}: not a fetalclip split file (version {FORMAT_VERSION})")
        splits = cls([str(p) for p in data["test"]], [[str(p) for p in fold] for fold in data["folds"]],
                     int(data.get("seed", 0)), dict(data.get("settings") or {}))
        splits.check()
        return splits

    def check(self) -> None:
        """Every patient in exactly one part."""
        seen: dict[str, str] = {}
        for name, members in [("test", self.test)] + [(f"fold{i}", f) for i, f in enumerate(self.folds)]:
            for patient in members:
                if patient in seen:
                    raise FetalCLIPError(f"patient {patient!r} is in both {seen[patient]} and {name}")
                seen[patient] = name


def _greedy(groups: list[str], sizes: dict[str, int], targets: list[float],
            strata: dict[str, str] | None = None) -> list[list[str]]:
    """Assign groups (in the given order) to the part furthest below its target share.

    With ``strata`` (group -> stratum), each stratum is dealt out on its own by the same rule, so every part
    gets its share of every stratum (ties go to the part furthest below its overall target).
    """
    parts: list[list[str]] = [[] for _ in targets]
    filled = [0.0] * len(targets)
    everything = sum(targets) or 1.0
    layers = [groups] if strata is None else [[g for g in groups if strata[g] == s] for s in sorted(set(strata[g] for g in groups))]
    for members in layers:
        total = float(sum(sizes[g] for g in members))
        goals = targets if strata is None else [t / everything * total for t in targets]
        layer = [0.0] * len(targets)
        for group in members:
            best = max(range(len(targets)), key=lambda i: (goals[i] - layer[i], targets[i] - filled[i], -i))
            parts[best].append(group)
            layer[best] += sizes[group]
            filled[best] += sizes[group]
    return parts


def _patient_strata(records: Sequence[dict[str, Any]], field_name: str) -> dict[str, str]:
    """patient -> the most common value of ``field_name`` among its records (first in sorted order on ties)."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        value = record.get(field_name)
        per = counts.setdefault(patient_id(record), {})
        per[str(value)] = per.get(str(value), 0) + 1
    return {g: sorted(per.items(), key=lambda item: (-item[1], item[0]))[0][0] for g, per in counts.items()}


def make_splits(
    records: Sequence[dict[str, Any]],
    k: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    use_split_column: bool = False,
    stratify: str | None = None,
) -> Splits:
    """Patient-level test part (``test_fraction`` of the images) and ``k`` folds of the rest, by ``seed``.

    ``use_split_column``: the test part is the patients whose records say ``split == "test"`` (an official
    split, e.g. FETAL_PLANES_DB's), and ``test_fraction`` is ignored; a patient on both sides is an error.
    ``stratify``: a record field (e.g. ``label``) whose classes every part gets its share of, each patient
    counted under its most common value. Without it a small set's folds can hold few or no cases of a rare
    class, and out-of-fold scores pooled over folds whose class mix differs rank below chance on their own.
    """
    if k < 1:
        raise FetalCLIPError(f"k must be >= 1 (got {k})")
    if not 0 <= test_fraction < 1:
        raise FetalCLIPError(f"test_fraction must be in [0, 1) (got {test_fraction})")
    if not records:
        raise FetalCLIPError("cannot split an empty dataset")
    sizes: dict[str, int] = {}
    for record in records:
        sizes[patient_id(record)] = sizes.get(patient_id(record), 0) + 1
    order = sorted(sizes)  # a fixed order before shuffling makes the result independent of record order
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    settings: dict[str, Any] = {"test_fraction": test_fraction, "use_split_column": use_split_column,
                                "patients": len(order), "records": len(records)}
    strata = _patient_strata(records, stratify) if stratify else None
    if stratify:
        settings["stratify"] = stratify

    if use_split_column:
        official: dict[str, set[str]] = {}
        for record in records:
            official.setdefault(patient_id(record), set()).add(str(record.get("split") or ""))
        both = [g for g, s in official.items() if "test" in s and len(s) > 1]
        if both:
            raise FetalCLIPError(f"patient {both[0]!r} has records in the official test split and outside it")
        missing = [g for g, s in official.items() if s == {""}]
        if len(missing) == len(official):
            raise FetalCLIPError("use_split_column: no record has a 'split' value")
        test = [g for g in order if "test" in official[g]]
        rest = [g for g in order if "test" not in official[g]]
    else:
        total = float(sum(sizes.values()))
        # Two-part greedy on the shuffled order: test gets its share, the rest goes to the folds.
        test, rest = (_greedy(order, sizes, [test_fraction * total, (1 - test_fraction) * total], strata)
                      if test_fraction > 0 else ([], order))
    rest_total = float(sum(sizes[g] for g in rest))
    if len(rest) < k:
        raise FetalCLIPError(f"{len(rest)} patient(s) outside the test part cannot fill {k} folds")
    folds = _greedy(rest, sizes, [rest_total / k] * k, strata)
    splits = Splits(sorted(test), [sorted(fold) for fold in folds], seed, settings)
    splits.check()
    return splits


# -- the index view: record indices for training loops -------------------------------------------------------
@dataclass
class IndexSplits:
    """Indices into one record list: a test split and ``(train, val)`` pairs over the remaining records."""

    test: list[int]
    folds: list[tuple[list[int], list[int]]]
    source: str = "seeded"  # "records" (the records' own test split) or "external" (no internal test part)
    notes: list[str] = field(default_factory=list)
    patients: Splits | None = None  # the patient-id split behind the indices (what gets saved)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **(self.patients.to_dict() if self.patients is not None else {})}


def _id_records(patients: Sequence[Any], record_splits: Sequence[Any] | None = None,
                strata: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Minimal records for ``make_splits``: one per patient id (in order), with its official split and stratum."""
    return [
        {"patient": str(p), "source": f"#{i}",
         "split": None if record_splits is None or record_splits[i] is None else str(record_splits[i]),
         "stratum": None if strata is None else str(strata[i])}
        for i, p in enumerate(patients)
    ]


def index_splits(
    patients: Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    record_splits: Sequence[Any] | None = None,
    with_test: bool = True,
) -> IndexSplits:
    """A patient-disjoint test split plus ``folds`` (train, val) index pairs over the other records.

    ``patients`` holds one id per record. The test part is the records' own (``record_splits`` saying
    ``test``) when that split is patient-disjoint, else a seeded ``test_fraction`` (with a note); none when
    ``with_test`` is false (an external test set).
    """
    records = _id_records(patients, record_splits)
    k = folds if folds > 1 else HOLDOUT_FOLDS
    source, notes = "seeded", []
    if not with_test:
        split, source = make_splits(records, k=k, test_fraction=0.0, seed=seed), "external"
    elif record_splits is not None and any(str(s) == "test" for s in record_splits):
        try:
            split, source = make_splits(records, k=k, seed=seed, use_split_column=True), "records"
        except FetalCLIPError as exc:
            notes.append(f"the records' own split is unusable ({exc}); drew a seeded patient split instead")
            split = make_splits(records, k=k, test_fraction=test_fraction, seed=seed)
    else:
        split = make_splits(records, k=k, test_fraction=test_fraction, seed=seed)
    pairs = []
    for fold in range(folds if folds > 1 else 1):
        parts = split.indices(records, fold=fold)
        pairs.append((parts["train"], parts["val"]))
    out = IndexSplits(split.indices(records)["test"], pairs, source, notes, split)
    assert_patient_disjoint(patients, out)
    return out


def cross_validation_parts(patients: Sequence[Any], k: int, seed: int, strata: Sequence[Any] | None = None) -> list[list[int]]:
    """``k`` patient-disjoint parts covering every record (each part is held out once); with ``strata`` (a
    class per record) every part gets its share of each class."""
    records = _id_records(patients, strata=strata)
    split = make_splits(records, k=k, test_fraction=0.0, seed=seed, stratify="stratum" if strata is not None else None)
    return [split.indices(records, fold=f)["val"] for f in range(k)]


def patient_holdout(patients: Sequence[Any], indices: Sequence[int], seed: int,
                    strata: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """(train, val) of ``indices``: one of five patient-level folds validates (stratified by ``strata``, a
    class per record of ``patients``, when given)."""
    indices = list(indices)
    records = _id_records([patients[i] for i in indices], strata=None if strata is None else [strata[i] for i in indices])
    split = make_splits(records, k=HOLDOUT_FOLDS, test_fraction=0.0, seed=seed,
                        stratify="stratum" if strata is not None else None)
    parts = split.indices(records, fold=0)
    return [indices[i] for i in parts["train"]], [indices[i] for i in parts["val"]]


def assert_patient_disjoint(patients: Sequence[Any], splits: IndexSplits) -> None:
    """Raise if any patient appears in two of (train, val, test) of any fold."""
    test = {str(patients[i]) for i in splits.test}
    for k, (train, val) in enumerate(splits.folds):
        tr, va = {str(patients[i]) for i in train}, {str(patients[i]) for i in val}
        for a, b, what in ((tr, va, "train/val"), (tr, test, "train/test"), (va, test, "val/test")):
            shared = a & b
            if shared:
                raise FetalCLIPError(f"fold {k}: {len(shared)} patients leak across {what} (e.g. {sorted(shared)[:3]})")
