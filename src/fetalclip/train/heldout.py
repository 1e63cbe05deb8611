"""The patients a training run never saw, so other commands can evaluate the run on them alone.

A run folder keeps its resolved ``config.json``; the split is recomputed from it (its data, ``holdout_fraction``,
``holdout_group`` and seed through ``split_by_patient``, the one function training draws it with) rather than
stored as a list, so a run trained before this module existed gets the same answer. Only records are read:
no image is decoded. A data spec that no longer opens (a relative path read from another folder, data moved)
fails with the spec named: a guessed split would silently mix trained-on patients into the evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.records import SampleDataset
from ..errors import FetalCLIPError
from .data import open_sources, patient_key, split_by_patient
from .rundir import CONFIG_FILE


def held_out_patients(run_dir: str | Path) -> frozenset[str]:
    """Patient keys (``patient_key``) of every sample the run at ``run_dir`` held out of training."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FetalCLIPError(f"{path}: no such file; --held-out-of takes a training run folder (fetalclip train --out)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FetalCLIPError(f"{path}: not a readable run config ({exc})") from None
    if not (config.get("holdout_fraction") or config.get("holdout_group")):
        raise FetalCLIPError(f"{run_dir}: the run held no patient out (holdout_fraction 0, no holdout_group): "
                             "every patient was trained on")
    try:
        sources = open_sources(config["data"])
    except FetalCLIPError as exc:
        raise FetalCLIPError(f"{run_dir}: cannot reopen the run's training data to recompute its split: {exc}") from None
    _, held = split_by_patient(sources, config["holdout_fraction"], config["seed"], config.get("holdout_group"))
    return frozenset(patient_key(sources[d], sources[d].records[i]) for d, i in held)


def only_patients(dataset: SampleDataset, patients: frozenset[str], why: str) -> SampleDataset:
    """The samples of ``dataset`` whose patient is in ``patients``; none is an error naming ``why``."""
    kept = [i for i, record in enumerate(dataset.records) if patient_key(dataset, record) in patients]
    if not kept:
        raise FetalCLIPError(f"{dataset.name}: none of its {len(dataset)} samples is a patient {why}")
    return dataset.subset(kept)
