"""Old home of the probes' patient splits, kept as names only: the one implementation is ``fetalclip.data.splits``.

``make_splits`` here is ``data.splits.index_splits`` (record indices from one patient id per record) and
``Splits`` is ``data.splits.IndexSplits``; new code imports those from ``fetalclip.data.splits`` directly.
"""

from __future__ import annotations

from ..data.splits import HOLDOUT_FOLDS, IndexSplits, assert_patient_disjoint, cross_validation_parts, index_splits, patient_holdout

Splits = IndexSplits
make_splits = index_splits

__all__ = ["HOLDOUT_FOLDS", "Splits", "assert_patient_disjoint", "cross_validation_parts", "make_splits", "patient_holdout"]
