"""Leave-one-machine-out transfer on FETAL_PLANES_DB: each machine held out in turn, patients never crossing."""

from __future__ import annotations

import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.result import TaskUnavailable
from fetalclip.tasks.transfer_tasks import TransferPlanes, domain_of


@pytest.fixture(scope="module")
def fpdb(fpdb_dir):
    return open_dataset(f"fpdb:{fpdb_dir}")


def test_each_machine_is_held_out_and_scored(fpdb, tiny_model, tmp_path):
    from fetalclip.tasks.features import FeatureCache

    machines = sorted({domain_of(r, "us_machine") for r in fpdb.records})
    result = TransferPlanes({"epochs": 3, "folds": 2}).run(tiny_model, fpdb, FeatureCache(tiny_model, tmp_path), progress=False,
                                                          n_bootstrap=20)
    assert result.details["held_out"] == machines and len(machines) >= 3
    per_machine = [result.metrics[f"probe_macro_f1_{m.lower().replace(' ', '_')}"] for m in machines]
    assert sum(d["n_test"] for d in result.details["domains"].values()) == len(fpdb)  # every image tested once
    for machine, metric in zip(machines, per_machine):
        domain = result.details["domains"][machine]
        assert metric.n == domain["n_test"] and domain["n_train"] + domain["n_test"] == len(fpdb)
    mean = sum(m.value for m in per_machine) / len(per_machine)
    assert result.metrics["probe_macro_f1"].value == pytest.approx(mean) and result.metrics["probe_macro_f1"].n == len(machines)
    assert result.metrics["zeroshot_macro_f1"].n == len(machines)


def test_a_patient_on_two_machines_is_refused_and_small_groups_are_not_held_out(fpdb, tiny_model):
    records = [dict(r, metadata=dict(r["metadata"])) for r in fpdb.records]
    first = records[0]
    other = next(r for r in records if r["patient"] == first["patient"] and r is not first)
    machine = domain_of(first, "us_machine")
    other["metadata"]["us_machine"] = next(domain_of(r, "us_machine") for r in records if domain_of(r, "us_machine") != machine)
    leaky = fpdb.subset(range(len(fpdb)))
    leaky.records = records
    with pytest.raises(FetalCLIPError, match=f"patient {first['patient']} has images in two us_machine groups"):
        TransferPlanes().run(tiny_model, leaky, progress=False)
    with pytest.raises(TaskUnavailable, match="holding one out needs at least two"):
        TransferPlanes({"min_images": 10_000}).run(tiny_model, fpdb, progress=False)
    with pytest.raises(FetalCLIPError, match="min_images = 0"):
        TransferPlanes({"min_images": 0})


def test_data_without_domains_is_unavailable(tiny_model):
    with pytest.raises(TaskUnavailable, match="us_machine"):
        TransferPlanes().run(tiny_model, open_dataset("sim:8,size=64"), progress=False)


def test_one_named_machine_and_a_subset_of_planes(fpdb, tiny_model, tmp_path):
    from fetalclip.tasks.features import FeatureCache

    four = ["abdomen", "brain", "femur", "thorax"]
    result = TransferPlanes({"epochs": 3, "folds": 2, "held_out": ["Aloka"], "classes": four}).run(
        tiny_model, fpdb, FeatureCache(tiny_model, tmp_path), progress=False, n_bootstrap=20)
    assert result.details["held_out"] == ["Aloka"]
    aloka = result.details["domains"]["Aloka"]
    expected = sum(domain_of(r, "us_machine") == "Aloka" and r["label"] in four for r in fpdb.records)
    assert aloka["n_test"] == expected and sorted(aloka["classes"]) == four
    assert result.metrics["probe_macro_f1"].value == result.metrics["probe_macro_f1_aloka"].value
    with pytest.raises(TaskUnavailable, match="no labelled image with us_machine = 'Nowhere'"):
        TransferPlanes({"held_out": ["Nowhere"]}).run(tiny_model, fpdb, progress=False)


def test_training_hook_scores_the_machine_the_run_never_saw(fpdb_dir, tmp_path):
    from fetalclip.train import make_config, train

    config = make_config(None, {
        "model": "fetalclip-tiny", "model_overrides": {"vision_cfg": {"image_size": 64}, "text_cfg": {"context_length": 32}},
        "data": [f"fpdb:{fpdb_dir}"], "steps": 2, "batch_size": 8, "progress": False, "device": "cpu",
        "holdout_group": "us_machine=Aloka", "transfer_planes": f"fpdb:{fpdb_dir}",
    })
    result = train(config, tmp_path / "run", builtin_hooks=False)
    assert set(k for k in result.eval if k.startswith("transfer/planes/")) == {
        "transfer/planes/probe_macro_f1", "transfer/planes/probe_macro_f1_aloka",
        "transfer/planes/zeroshot_macro_f1", "transfer/planes/zeroshot_macro_f1_aloka"}
    assert 0 <= result.eval["transfer/planes/probe_macro_f1_aloka"] <= 100
