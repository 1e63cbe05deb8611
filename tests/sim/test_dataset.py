"""The sim: dataset spec, lazy datasets, and the exported csv: manifest read back through open_dataset."""

import csv

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.sim import MANIFEST_COLUMNS, SimConfig, parse_sim_spec, render_sample, write_phantom


def test_spec_options():
    n, config = parse_sim_spec("12,seed=3,size=320,classes=brain,femur,per_patient=2,ga=20-30,overlay=0")
    assert n == 12
    expected = SimConfig(seed=3, size=320, classes=("brain", "femur"), per_patient=2, ga_days=(140, 216), overlay=0.0)
    assert config == expected
    assert parse_sim_spec("5,classes=Fetal thorax+TC")[1].classes == ("thorax", "trans-cerebellum")
    assert parse_sim_spec("5")[1] == SimConfig()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("x", "number of images"),
        ("0", "positive"),
        ("4,colour=red", "unknown option"),
        ("4,seed=abc", "bad value"),
        ("4,classes=kidney", "no class"),
        ("4,brain", "not key=value"),
        ("4,ga=30-20", "gestational age"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(FetalCLIPError, match=message):
        parse_sim_spec(spec)


def test_open_dataset_is_lazy_and_subsets_render_identically():
    dataset = open_dataset("sim:16,seed=9,size=128")
    assert len(dataset) == 16 and dataset.name == "sim:16,seed=9,size=128"
    assert all("image" not in record for record in dataset.records)
    assert set(dataset.column("label")) == {"brain", "abdomen", "femur", "thorax", "cervix", "other"}
    sample = dataset[13]
    assert sample["image"].shape == (96, 128)
    alone = render_sample(13, SimConfig(seed=9, size=128))
    picked = dataset.subset([13, 2])[0]
    for other in (alone, picked):
        assert np.array_equal(sample["image"], other["image"]) and np.array_equal(sample["mask"], other["mask"])
    assert sample["caption"] == alone["caption"] and sample["source"] == "sim://9/13"


def test_export_round_trips_through_the_csv_adapter(tmp_path):
    config = SimConfig(seed=2, size=128, overlay=1.0)
    summary = write_phantom(10, config, tmp_path / "set")
    manifest = tmp_path / "set" / "manifest.csv"
    with manifest.open() as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == MANIFEST_COLUMNS
    assert summary["n"] == 10 and sum(summary["counts"].values()) == 10 and summary["patients"] == 3
    assert summary["mask_labels"]["brain"]["head"] == 1

    dataset = open_dataset(f"csv:{manifest}")
    assert len(dataset) == 10 and not dataset.missing
    for index, record in enumerate(dataset.records):
        truth = render_sample(index, config)
        assert record["label"] == truth["label"] and record["patient"] == truth["patient"]
        assert record.get("brain_plane") == truth["brain_plane"]
        assert record["pixel_spacing_mm"] == pytest.approx(truth["pixel_spacing_mm"], rel=1e-5)
        assert record["ga_days"] == truth["ga_days"] and record["caption"] == truth["caption"]
        assert record.get("hc_mm") == (pytest.approx(truth["hc_mm"], abs=1e-3) if truth["label"] == "brain" else None)
        loaded = dataset[index]
        assert np.array_equal(loaded["image"], truth["image"])
        mask = np.asarray(Image.open(record["metadata"]["mask_path"]))
        assert np.array_equal(mask, truth["mask"])
