"""FALLBACK patient-level splits for the probes, until ``fetalclip.data.splits`` lands on main.

Swap these for the data layer's functions at merge (the probes only need: a patient-disjoint test split, k
patient-disjoint folds over the rest, and a leak check). Every split here is made over *patients*, never over
images, with a seeded ``numpy.random.default_rng``, so a fixed seed gives the same split on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import FetalCLIPError


@dataclass
class Splits:
    """Indices into one record list: a test split and ``(train, val)`` pairs over the remaining records."""

    test: list[int]
    folds: list[tuple[list[int], list[int]]]
    source: str = "seeded"  # "records" when the test split came from the records' own ``split`` field
    notes: list[str] = field(default_factory=list)

    def to_dict(self, patients: Sequence[Any]) -> dict[str, Any]:
        return {
            "source": self.source,
            "test_patients": sorted({str(patients[i]) for i in self.test}),
            "folds": [
                {"train_patients": sorted({str(patients[i]) for i in tr}), "val_patients": sorted({str(patients[i]) for i in va})}
                for tr, va in self.folds
            ],
        }


def _groups(patients: Sequence[Any], indices: Sequence[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(str(patients[i]), []).append(i)
    return groups


def patient_partition(patients: Sequence[Any], indices: Sequence[int], parts: int, seed: int) -> list[list[int]]:
    """Split ``indices`` into ``parts`` patient-disjoint groups of near-equal patient counts (seeded)."""
    groups = _groups(patients, indices)
    names = sorted(groups)
    if len(names) < parts:
        raise FetalCLIPError(f"cannot make {parts} patient-disjoint parts from {len(names)} patients")
    order = np.random.default_rng(seed).permutation(len(names))
    out: list[list[int]] = [[] for _ in range(parts)]
    for rank, position in enumerate(order):
        out[rank % parts].extend(groups[names[position]])
    return [sorted(part) for part in out]


def patient_holdout(patients: Sequence[Any], indices: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(rest, held out): about ``fraction`` of the patients held out, at least one patient on each side."""
    groups = _groups(patients, indices)
    names = sorted(groups)
    if len(names) < 2:
        raise FetalCLIPError(f"cannot hold out patients from {len(names)} patient(s)")
    count = min(len(names) - 1, max(1, int(round(fraction * len(names)))))
    order = np.random.default_rng(seed).permutation(len(names))
    held = {names[p] for p in order[:count]}
    rest = sorted(i for name in names if name not in held for i in groups[name])
    out = sorted(i for name in held for i in groups[name])
    return rest, out


def make_splits(
    patients: Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    record_splits: Sequence[Any] | None = None,
    with_test: bool = True,
    val_fraction: float = 0.2,
) -> Splits:
    """A patient-disjoint test split plus ``folds`` (train, val) pairs over the other patients.

    ``record_splits`` (each record's ``split`` field) supplies the test split when it has ``test`` entries and
    is patient-disjoint (the official FETAL_PLANES_DB split is); otherwise the test patients are drawn with
    ``seed``. ``folds=1`` means one seeded validation hold-out of ``val_fraction`` instead of k-fold rotation.
    ``with_test=False`` (an external test set) keeps every record for training and validation.
    """
    all_indices = list(range(len(patients)))
    source, notes = "seeded", []
    if not with_test:
        trainval, test = all_indices, []
        source = "external"
    elif record_splits is not None and any(str(s) == "test" for s in record_splits):
        test = [i for i in all_indices if str(record_splits[i]) == "test"]
        trainval = [i for i in all_indices if str(record_splits[i]) != "test"]
        leaked = {str(patients[i]) for i in test} & {str(patients[i]) for i in trainval}
        if leaked:
            notes.append(f"records' own split shares {len(leaked)} patients between test and train; drew a seeded patient split instead")
            trainval, test = patient_holdout(patients, all_indices, test_fraction, seed)
        else:
            source = "records"
    else:
        trainval, test = patient_holdout(patients, all_indices, test_fraction, seed)
    if folds <= 1:
        train, val = patient_holdout(patients, trainval, val_fraction, seed + 1)
        pairs = [(train, val)]
    else:
        parts = patient_partition(patients, trainval, folds, seed + 1)
        pairs = [(sorted(i for j, p in enumerate(parts) if j != k for i in p), parts[k]) for k in range(folds)]
    splits = Splits(test=sorted(test), folds=pairs, source=source, notes=notes)
    assert_patient_disjoint(patients, splits)
    return splits


def assert_patient_disjoint(patients: Sequence[Any], splits: Splits) -> None:
    """Raise if any patient appears in two of (train, val, test) of any fold."""
    test = {str(patients[i]) for i in splits.test}
    for k, (train, val) in enumerate(splits.folds):
        tr, va = {str(patients[i]) for i in train}, {str(patients[i]) for i in val}
        for a, b, what in ((tr, va, "train/val"), (tr, test, "train/test"), (va, test, "val/test")):
            shared = a & b
            if shared:
                raise FetalCLIPError(f"fold {k}: {len(shared)} patients leak across {what} (e.g. {sorted(shared)[:3]})")
