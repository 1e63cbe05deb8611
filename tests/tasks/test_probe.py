"""Linear and few-shot probes: patient-level splits without leaks, heads that learn, CIs, failure modes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fetalclip.data.splits import IndexSplits as Splits
from fetalclip.data.splits import assert_patient_disjoint
from fetalclip.data.splits import index_splits as make_splits
from fetalclip.errors import FetalCLIPError
from fetalclip.metrics import bootstrap_ci, macro_f1, mean_macro_f1_ci
from fetalclip.tasks.probe import ProbeData, ProbeRecipe, fewshot_curve, linear_probe, train_linear_heads


def run_classification(data, test=None, *, seed=0, n_bootstrap=10_000, **recipe):
    """The report of ``linear_probe`` with the recipe given as keywords (as these tests were written)."""
    return linear_probe(data, ProbeRecipe(**recipe), test, seed=seed, n_bootstrap=n_bootstrap).report


def synthetic_probe(n_patients=40, per_patient=3, classes=("a", "b", "c"), dim=16, noise=0.6, seed=0):
    """Gaussian class clusters; every patient's images share an offset, so image-level splits would leak."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim)) * 2
    xs, labels, patients = [], [], []
    for p in range(n_patients):
        offset = rng.normal(size=dim) * 0.3
        for _ in range(per_patient):
            c = rng.integers(len(classes))
            xs.append(centres[c] + offset + rng.normal(size=dim) * noise)
            labels.append(classes[c])
            patients.append(f"p{p:03d}")
    return ProbeData(x=np.array(xs, np.float32), labels=labels, patients=patients)


def patients_of(patients, indices):
    return {patients[i] for i in indices}


@pytest.mark.parametrize("folds", [1, 3, 5])
def test_splits_are_patient_disjoint_and_cover_everything(folds):
    data = synthetic_probe(n_patients=30)
    splits = make_splits(data.patients, folds=folds, seed=4)
    for train, val in splits.folds:
        assert not patients_of(data.patients, train) & patients_of(data.patients, val)
        assert not patients_of(data.patients, train) & patients_of(data.patients, splits.test)
        assert not patients_of(data.patients, val) & patients_of(data.patients, splits.test)
        assert sorted(train + val + splits.test) == list(range(len(data.patients)))
    if folds > 1:  # every training patient validates exactly once
        vals = [i for _, val in splits.folds for i in val]
        assert sorted(vals) == sorted(set(range(len(data.patients))) - set(splits.test))
    assert make_splits(data.patients, folds=folds, seed=4).folds == splits.folds  # seeded


def test_records_own_split_is_used_only_when_patient_disjoint():
    patients = ["a", "a", "b", "c", "d", "e", "f", "g"]
    clean = ["train", "train", "test", "train", "train", "train", "test", "train"]
    assert make_splits(patients, folds=2, record_splits=clean).source == "records"
    leaky = ["train", "test", "test", "train", "train", "train", "test", "train"]  # patient a on both sides
    splits = make_splits(patients, folds=2, record_splits=leaky)
    assert splits.source == "seeded" and splits.notes
    with pytest.raises(FetalCLIPError, match="leak"):
        assert_patient_disjoint(patients, Splits(test=[0], folds=[([1, 2], [3])]))


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(FetalCLIPError, match="patient"):
        make_splits(["a", "a", "b"], folds=5)


@pytest.mark.shared_data
def test_fpdb_splits_do_not_leak_patients(fpdb_dir):
    from fetalclip.data.datasets import open_dataset

    dataset = open_dataset(f"fpdb:{fpdb_dir}")
    patients = dataset.column("patient")
    splits = make_splits(patients, folds=5, seed=0, record_splits=dataset.column("split"))
    assert splits.source == "records"  # the official split is patient-disjoint
    assert_patient_disjoint(patients, splits)


def test_linear_heads_learn_and_grid_trains_in_one_pass():
    data = synthetic_probe()
    x, y = data.x, np.array([{"a": 0, "b": 1, "c": 2}[label] for label in data.labels])
    heads = train_linear_heads(x[:90], y[:90], x[90:], y[90:], 3, ProbeRecipe(grid=[(3e-4, 0.01), (3e-2, 0.01)], epochs=30), seed=1)
    assert len(heads) == 2
    assert heads[1].val_loss < heads[0].val_loss  # the larger learning rate gets further in 30 epochs
    assert np.mean(heads[1].predict(x[90:]) == y[90:]) > 0.9
    again = train_linear_heads(x[:90], y[:90], x[90:], y[90:], 3, ProbeRecipe(grid=[(3e-2, 0.01)], epochs=30), seed=1)[0]
    np.testing.assert_allclose(again.weight, heads[1].weight, atol=1e-6)  # one grid point alone = same head


def test_standardize_folds_into_a_plain_linear_head():
    data = synthetic_probe()
    x = data.x * 1e-3 + 5.0  # nearly constant features, as a random encoder gives
    y = np.array([{"a": 0, "b": 1, "c": 2}[label] for label in data.labels])
    head = train_linear_heads(x[:90], y[:90], x[90:], y[90:], 3, ProbeRecipe(grid=[(3e-2, 0.01)], epochs=30, standardize=True))[0]
    assert np.mean(head.predict(x[90:]) == y[90:]) > 0.9


def test_mean_macro_f1_ci_equals_the_reference_bootstrap_for_one_head():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    pred = np.where(rng.random(60) < 0.7, truth, rng.integers(0, 3, 60))
    reference = bootstrap_ci(lambda t, p: macro_f1(t, p, [0, 1, 2]), truth, pred, n=500, seed=42)
    assert mean_macro_f1_ci(truth, pred[None], [0, 1, 2], n=500, seed=42) == pytest.approx(reference, abs=1e-12)
    # Two identical heads: same interval.
    assert mean_macro_f1_ci(truth, np.stack([pred, pred]), [0, 1, 2], n=500) == pytest.approx(reference, abs=1e-12)


def test_classification_is_deterministic_and_reports_everything():
    data = synthetic_probe()
    kwargs = dict(folds=3, runs=2, seed=0, grid=[(3e-3, 0.01), (3e-2, 0.01)], epochs=20, n_bootstrap=200)
    result = run_classification(data, **kwargs)
    assert result["heads"] == 6 and result["macro_f1_mean"] > 0.8
    assert result["macro_f1_ci"][0] <= result["macro_f1_mean"] + 0.05
    assert set(result["per_class"]) == {"a", "b", "c"}
    assert len(result["grid"]) == 2 and result["chosen"]["lr"] in (3e-3, 3e-2)
    confusion = np.array(result["confusion"]["matrix"])  # test predictions of all heads, pooled
    assert result["confusion"]["labels"] == ["a", "b", "c"] and confusion.sum() == 6 * result["n_test"]
    assert np.trace(confusion) / confusion.sum() > 0.8
    assert run_classification(data, **kwargs)["macro_f1_per_head"] == result["macro_f1_per_head"]
    json.dumps(result)


def test_external_test_set_and_augmented_rows():
    data = synthetic_probe(seed=0)
    data.augmented = np.stack([data.x + 0.01, data.x - 0.01])
    test = synthetic_probe(n_patients=10, seed=0)
    result = run_classification(data, test, folds=2, runs=1, grid=[(3e-2, 0.01)], epochs=10, n_bootstrap=100)
    assert result["test_source"] == "external" and result["n_test"] == 30 and result["augmented_copies"] == 2


def test_classification_failure_modes():
    data = synthetic_probe()
    with pytest.raises(FetalCLIPError, match="two classes"):
        run_classification(ProbeData(data.x, ["a"] * len(data.x), data.patients), folds=2, runs=1)
    other = ProbeData(data.x[:6], ["z"] * 6, data.patients[:6])
    with pytest.raises(FetalCLIPError, match="never occur"):
        run_classification(data, other, folds=2, runs=1, epochs=1)


def test_fewshot_curve_rises_and_skips_sizes_that_do_not_fit():
    data = synthetic_probe(n_patients=40, noise=1.2)
    result = fewshot_curve(data, ProbeRecipe(runs=1, epochs=30, lr=3e-2), sizes=(1, 8, 64), support_sets=3)
    assert result["skipped_sizes"] == [64]
    curve = {row["n_patients"]: row["macro_f1_mean"] for row in result["curve"]}
    assert curve[8] > curve[1]
    assert len(result["rows"]) == 2 * 3


def test_fewshot_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from fetalclip.tasks.probe import plot_curve

    assert plot_curve([{"n_patients": 2, "macro_f1_mean": 0.5, "macro_f1_sd": 0.1},
                       {"n_patients": 4, "macro_f1_mean": 0.7, "macro_f1_sd": 0.05}], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.shared_data
def test_probe_cli_end_to_end_on_fpdb_subset(fpdb_dir, tmp_path, capsys):
    """classify + fewshot on 36 real FETAL_PLANES_DB images (a CSV manifest), fetalclip-tiny, twice."""
    from fetalclip.cli import main
    from fetalclip.data.datasets import open_dataset

    dataset = open_dataset(f"fpdb:{fpdb_dir}")
    rows, seen = [], {}
    for record in dataset.records:  # 6 images of each plane, official split kept
        if seen.get(record["label"], 0) < 6:
            seen[record["label"]] = seen.get(record["label"], 0) + 1
            rows.append({"path": record["source"], "label": record["label"], "patient": record["patient"], "split": "train"})
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 6 == 0 else "train"
    # Make the test split patient-disjoint by construction: test patients get their own ids.
    for row in rows:
        if row["split"] == "test":
            row["patient"] = "test-" + row["patient"]
    manifest = tmp_path / "fpdb.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient", "split"])
        writer.writeheader()
        writer.writerows(rows)
    args = ["probe", "classify", "--data", f"csv:{manifest}", "--folds", "2", "--runs", "2", "--epochs", "5",
            "--cache", str(tmp_path / "cache"), "--standardize", "--out", str(tmp_path / "r1.json")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    first = json.loads((tmp_path / "r1.json").read_text())
    assert first["provenance"]["encoded_this_run"] == len(rows) and first["n_test"] == 6
    with pytest.raises(SystemExit):
        main(args[:-1] + [str(tmp_path / "r2.json")])
    second = json.loads((tmp_path / "r2.json").read_text())
    assert second["provenance"]["encoded_this_run"] == 0  # everything came from the cache
    assert second["macro_f1_per_head"] == first["macro_f1_per_head"]  # fixed seed, same numbers
    with pytest.raises(SystemExit):
        main(["probe", "fewshot", "--data", f"csv:{manifest}", "--sizes", "2,4,64", "--support-sets", "2", "--runs", "1",
              "--epochs", "5", "--cache", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "fs")])
    assert (tmp_path / "fs" / "fewshot.csv").read_text().startswith("n_patients,macro_f1_mean")
    assert "skipped N=[64]" in capsys.readouterr().out


def test_probe_cli_errors_are_clean(tmp_path, capsys):
    from fetalclip.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "classify", "--data", f"folder:{tmp_path / 'absent'}", "--cache", "none"])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.shared_data
def test_hc18_splits_keep_every_subject_on_one_side(hc18_dir):
    """HC18 has several images per subject (NNN_HC, NNN_2HC, ...): folds and test must split subjects."""
    from fetalclip.data.datasets import open_dataset

    dataset = open_dataset(f"hc18:{hc18_dir}")
    patients = dataset.column("patient")
    assert len(set(patients)) < len(patients)  # the shared subset does hold repeat subjects
    splits = make_splits(patients, folds=5, seed=0)
    assert_patient_disjoint(patients, splits)
    names = [r["source"].rsplit("/", 1)[-1].split("_")[0] for r in dataset.records]
    test_subjects = {names[i] for i in splits.test}
    assert not test_subjects & {names[i] for i in splits.folds[0][0] + splits.folds[0][1]}
