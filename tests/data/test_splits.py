"""Patient-level splits: no patient in two parts, deterministic by seed, JSON round trip, official splits."""

import json

import numpy as np
import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.data.splits import Splits, group_id, make_splits
from fetalclip.errors import FetalCLIPError


def _records(n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        for i in range(int(rng.integers(1, 9))):  # patients contribute very different numbers of images
            records.append({"source": f"p{p}_{i}.png", "patient": f"P{p:03d}", "label": "brain"})
    return records


def _assert_disjoint_and_complete(splits, records):
    parts = [set(splits.test)] + [set(f) for f in splits.folds]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            assert not parts[i] & parts[j]
    assert set().union(*parts) == {group_id(r) for r in records}
    for fold in range(splits.k):
        idx = splits.indices(records, fold)
        patients = {name: {group_id(records[i]) for i in idx[name]} for name in idx}
        assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
        assert not patients["val"] & patients["test"]
        assert sorted(idx["train"] + idx["val"] + idx["test"]) == list(range(len(records)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_patient_in_two_parts(seed):
    records = _records()
    splits = make_splits(records, k=5, test_fraction=0.2, seed=seed)
    _assert_disjoint_and_complete(splits, records)
    # Image counts are balanced even though patients differ in size.
    sizes = [len(splits.indices(records, 0)[name]) for name in ("test",)]
    assert abs(sizes[0] - 0.2 * len(records)) <= 8
    fold_sizes = [len(splits.indices(records, f)["val"]) for f in range(5)]
    assert max(fold_sizes) - min(fold_sizes) <= 8


def test_deterministic_by_seed_and_order_independent():
    records = _records()
    a = make_splits(records, seed=3)
    b = make_splits(list(reversed(records)), seed=3)
    c = make_splits(records, seed=4)
    assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()


def _cases_and_controls(n_patients=50, per_patient=2):
    """Two clips per patient, every fifth patient a case (as a small CHD set)."""
    return [{"source": f"p{p}_{i}", "patient": f"P{p:03d}", "label": "chd" if p % 5 == 0 else "normal"}
            for p in range(n_patients) for i in range(per_patient)]


def _case_shares(records, splits):
    cases = {r["patient"] for r in records if r["label"] == "chd"}
    return [len(cases & set(part)) for part in (splits.test, *splits.folds)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_parts_each_get_their_share_of_a_rare_class(seed):
    records = _cases_and_controls()
    splits = make_splits(records, k=4, test_fraction=0.2, seed=seed, stratify="label")
    _assert_disjoint_and_complete(splits, records)
    assert _case_shares(records, splits) == [2, 2, 2, 2, 2] and splits.settings["stratify"] == "label"
    # Patients of unequal size: each part still holds about its share of the cases' images.
    uneven = [{**r, "label": "chd" if int(r["patient"][1:]) % 5 == 0 else "normal"} for r in _records(50, seed)]
    splits = make_splits(uneven, k=4, test_fraction=0.2, seed=seed, stratify="label")
    _assert_disjoint_and_complete(splits, uneven)
    case_images = sum(r["label"] == "chd" for r in uneven)
    for fold in range(4):
        val = splits.indices(uneven, fold)["val"]
        assert abs(sum(uneven[i]["label"] == "chd" for i in val) - 0.8 * case_images / 4) <= 8  # one patient


def test_unstratified_folds_can_miss_a_rare_class():
    records = _cases_and_controls()
    shares = [_case_shares(records, make_splits(records, k=4, seed=s)) for s in range(8)]
    assert any(share != [2, 2, 2, 2, 2] for share in shares)  # what stratification is for
    assert all(_case_shares(records, make_splits(records, k=4, seed=s, stratify="label")) == [2, 2, 2, 2, 2]
               for s in range(8))


def test_save_and_load(tmp_path):
    records = _records()
    splits = make_splits(records, k=3, seed=5)
    path = splits.save(tmp_path / "splits.json")
    loaded = Splits.load(path)
    assert loaded.to_dict() == splits.to_dict() and loaded.k == 3
    assert loaded.indices(records, 1) == splits.indices(records, 1)
    data = json.loads(path.read_text())
    data["folds"][0].append(data["test"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(FetalCLIPError, match="both test and fold0"):
        Splits.load(path)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(FetalCLIPError, match="not a fetalclip split file"):
        Splits.load(tmp_path / "junk.json")


def test_unknown_patients_and_bad_settings():
    records = _records(10)
    splits = make_splits(records, k=2, seed=0)
    with pytest.raises(FetalCLIPError, match="does not know"):
        splits.indices(records + [{"source": "x.png", "patient": "stranger"}])
    with pytest.raises(FetalCLIPError, match="fold 5"):
        splits.indices(records, 5)
    with pytest.raises(FetalCLIPError, match="cannot fill"):
        make_splits(records[:3], k=5)
    with pytest.raises(FetalCLIPError):
        make_splits(records, test_fraction=1.5)


def test_frames_without_patient_stay_together():
    records = [{"source": "loop1.dcm", "patient": None, "frame_index": i} for i in range(6)]
    records += [{"source": f"loop{j}.dcm", "patient": None, "frame_index": 0} for j in range(2, 12)]
    splits = make_splits(records, k=3, test_fraction=0.25, seed=0)
    parts = splits.part_of()
    assert len({parts[group_id(r)] for r in records[:6]}) == 1


def test_official_split_column_on_fpdb(fpdb_dir):
    dataset = open_dataset(f"fpdb:{fpdb_dir}")
    splits = make_splits(dataset.records, k=3, seed=0, use_split_column=True)
    _assert_disjoint_and_complete(splits, dataset.records)
    test_idx = splits.indices(dataset.records)["test"]
    assert {dataset.records[i]["split"] for i in test_idx} == {"test"}
    assert sorted(test_idx) == [i for i, r in enumerate(dataset.records) if r["split"] == "test"]


def test_hc18_subjects_never_straddle(hc18_dir):
    dataset = open_dataset(f"hc18:{hc18_dir}")
    splits = make_splits(dataset.records, k=5, seed=0)
    _assert_disjoint_and_complete(splits, dataset.records)
    # Subjects with several images (NNN_HC, NNN_2HC) exist and are kept whole.
    assert len(dataset) > len(splits.part_of())


def test_official_split_conflict():
    records = [{"source": "a", "patient": "1", "split": "train"}, {"source": "b", "patient": "1", "split": "test"}]
    with pytest.raises(FetalCLIPError, match="official test split and outside"):
        make_splits(records, k=1, use_split_column=True)
