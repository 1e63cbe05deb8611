"""The probes' view of patient-level splits: record indices for test and (train, val) per fold.

The splitting itself is the data layer's (``fetalclip.data.splits``: seeded, patient-level, balanced in
images, official test splits honoured, JSON save/load); this module only adapts it to what a probe loop needs
(index lists) and adds the probes' conventions: ``folds=1`` means one seeded validation hold-out (the first of
five folds), an external test set means no internal test part, and a dataset whose own split puts a patient
on both sides falls back to a seeded split with a note instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..data.splits import Splits as DataSplits
from ..data.splits import make_splits as data_make_splits
from ..errors import FetalCLIPError

HOLDOUT_FOLDS = 5  # folds=1: one fold of five validates (a 20% patient hold-out)


@dataclass
class Splits:
    """Indices into one record list: a test split and ``(train, val)`` pairs over the remaining records."""

    test: list[int]
    folds: list[tuple[list[int], list[int]]]
    source: str = "seeded"  # "records" (the records' own test split) or "external" (no internal test part)
    notes: list[str] = field(default_factory=list)
    patients: DataSplits | None = None  # the data layer's patient-id split (what gets saved)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **(self.patients.to_dict() if self.patients is not None else {})}


def _records(patients: Sequence[Any], record_splits: Sequence[Any] | None = None,
             strata: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"patient": str(p), "source": f"#{i}", "split": None if record_splits is None or record_splits[i] is None else str(record_splits[i]),
         "stratum": None if strata is None else str(strata[i])}
        for i, p in enumerate(patients)
    ]


def make_splits(
    patients: Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    record_splits: Sequence[Any] | None = None,
    with_test: bool = True,
) -> Splits:
    """A patient-disjoint test split plus ``folds`` (train, val) index pairs over the other records."""
    records = _records(patients, record_splits)
    k = folds if folds > 1 else HOLDOUT_FOLDS
    source, notes = "seeded", []
    if not with_test:
        data, source = data_make_splits(records, k=k, test_fraction=0.0, seed=seed), "external"
    elif record_splits is not None and any(str(s) == "test" for s in record_splits):
        try:
            data, source = data_make_splits(records, k=k, seed=seed, use_split_column=True), "records"
        except FetalCLIPError as exc:
            notes.append(f"the records' own split is unusable ({exc}); drew a seeded patient split instead")
            data = data_make_splits(records, k=k, test_fraction=test_fraction, seed=seed)
    else:
        data = data_make_splits(records, k=k, test_fraction=test_fraction, seed=seed)
    pairs = []
    for fold in range(folds if folds > 1 else 1):
        parts = data.indices(records, fold=fold)
        pairs.append((parts["train"], parts["val"]))
    splits = Splits(data.indices(records)["test"], pairs, source, notes, data)
    assert_patient_disjoint(patients, splits)
    return splits


def cross_validation_parts(patients: Sequence[Any], k: int, seed: int, strata: Sequence[Any] | None = None) -> list[list[int]]:
    """``k`` patient-disjoint parts covering every record (each part is held out once); with ``strata`` (a
    class per record) every part gets its share of each class."""
    records = _records(patients, strata=strata)
    data = data_make_splits(records, k=k, test_fraction=0.0, seed=seed, stratify="stratum" if strata is not None else None)
    return [data.indices(records, fold=f)["val"] for f in range(k)]


def patient_holdout(patients: Sequence[Any], indices: Sequence[int], seed: int,
                    strata: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """(train, val) of ``indices``: one of five patient-level folds validates (stratified by ``strata``, a
    class per record of ``patients``, when given)."""
    indices = list(indices)
    records = _records([patients[i] for i in indices], strata=None if strata is None else [strata[i] for i in indices])
    data = data_make_splits(records, k=HOLDOUT_FOLDS, test_fraction=0.0, seed=seed,
                            stratify="stratum" if strata is not None else None)
    parts = data.indices(records, fold=0)
    return [indices[i] for i in parts["train"]], [indices[i] for i in parts["val"]]


def assert_patient_disjoint(patients: Sequence[Any], splits: Splits) -> None:
    """Raise if any patient appears in two of (train, val, test) of any fold."""
    test = {str(patients[i]) for i in splits.test}
    for k, (train, val) in enumerate(splits.folds):
        tr, va = {str(patients[i]) for i in train}, {str(patients[i]) for i in val}
        for a, b, what in ((tr, va, "train/val"), (tr, test, "train/test"), (va, test, "val/test")):
            shared = a & b
            if shared:
                raise FetalCLIPError(f"fold {k}: {len(shared)} patients leak across {what} (e.g. {sorted(shared)[:3]})")
