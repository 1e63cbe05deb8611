"""A run's held-out patients, recomputed from its config: the same split training drew, and clear refusals."""

from __future__ import annotations

import json

import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.data.sample import domain_of
from fetalclip.errors import FetalCLIPError
from fetalclip.train.data import open_sources, patient_key, split_by_patient
from fetalclip.train.heldout import held_out_patients, only_patients


def _run_folder(tmp_path, name, data, **config):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": data, "seed": 3, "holdout_fraction": 0.2,
                                                 "holdout_group": None, **config}))
    return run


def test_held_out_patients_are_the_split_training_drew(tmp_path, fpdb_dir, hc18_dir):
    data = [f"hc18:{hc18_dir}", f"fpdb:{fpdb_dir}"]
    run = _run_folder(tmp_path, "run", data, holdout_group="us_machine=Aloka")
    patients = held_out_patients(run)
    sources = open_sources(data)
    train, held = split_by_patient(sources, 0.2, 3, "us_machine=Aloka")
    trained = {patient_key(sources[d], sources[d].records[i]) for d, i in train}
    assert patients == {patient_key(sources[d], sources[d].records[i]) for d, i in held}
    assert patients and not patients & trained

    fpdb = only_patients(open_dataset(f"fpdb:{fpdb_dir}"), patients, "held out")
    machines = {domain_of(record, "us_machine") for record in fpdb.records}
    assert "Aloka" in machines and len(machines) > 1  # the machine, and a share of the other machines' patients
    every_aloka = [r for r in open_dataset(f"fpdb:{fpdb_dir}").records if domain_of(r, "us_machine") == "Aloka"]
    assert sum(domain_of(r, "us_machine") == "Aloka" for r in fpdb.records) == len(every_aloka)
    assert not {patient_key(fpdb, r) for r in fpdb.records} & trained
    # Another seed draws another split: the seed is read from the config, not assumed.
    assert held_out_patients(_run_folder(tmp_path, "seed4", data, seed=4)) != held_out_patients(_run_folder(tmp_path, "seed3", data))


def test_refusals_name_the_problem(tmp_path, fpdb_dir, hc18_dir):
    with pytest.raises(FetalCLIPError, match="config.json: no such file; --held-out-of takes a training run folder"):
        held_out_patients(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FetalCLIPError, match="not a readable run config"):
        held_out_patients(tmp_path)
    none_held = _run_folder(tmp_path, "x", [f"fpdb:{fpdb_dir}"], holdout_fraction=0.0)
    with pytest.raises(FetalCLIPError, match="held no patient out"):
        held_out_patients(none_held)
    moved = _run_folder(tmp_path, "y", [f"fpdb:{tmp_path / 'gone'}"])
    with pytest.raises(FetalCLIPError, match="cannot reopen the run's training data"):
        held_out_patients(moved)
    fpdb_only = _run_folder(tmp_path, "z", [f"fpdb:{fpdb_dir}"])
    with pytest.raises(FetalCLIPError, match=r"none of its \d+ samples is a patient held out"):
        only_patients(open_dataset(f"hc18:{hc18_dir}"), held_out_patients(fpdb_only), "held out")
