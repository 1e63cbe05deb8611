import collections

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.datasets import hc18_subject, open_dataset, parse_spec
from fetalclip.errors import FetalCLIPError


def test_hc18_real_data(hc18_dir):
    dataset = open_dataset(f"hc18:{hc18_dir}")
    assert len(dataset) == 804 and dataset.missing == []
    first = dataset[0]
    assert first["image"].ndim == 2 and first["image"].dtype == np.uint8
    assert first["pixel_spacing_mm"] > 0 and first["hc_mm"] > 0
    assert first["patient"] == hc18_subject(first["source"])
    # Several images per subject exist (NNN_HC, NNN_2HC, ...): subjects are fewer than images.
    assert len(set(dataset.column("patient"))) < len(dataset)


def test_hc18_subject_ids():
    assert hc18_subject("012_HC.png") == "012" and hc18_subject("/x/012_2HC.png") == "012"


def test_fpdb_real_data(fpdb_dir):
    dataset = open_dataset(f"fpdb:{fpdb_dir}")
    assert len(dataset) == 222 and dataset.missing == []
    labels = collections.Counter(dataset.column("label"))
    assert set(labels) == {"abdomen", "brain", "femur", "thorax", "cervix", "other"}
    assert set(dataset.column("split")) == {"train", "test"}
    brain = [r for r in dataset.records if r["label"] == "brain"]
    assert all(r["brain_plane"] is not None for r in brain)
    assert all(r["brain_plane"] is None for r in dataset.records if r["label"] != "brain")


def _write_png(path, value=100, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_fpdb_trailing_spaces_and_absent_rows(tmp_path):
    _write_png(tmp_path / "Images" / "Patient00001_Plane2_1_of_3.png")
    (tmp_path / "FETAL_PLANES_DB_data.csv").write_text(
        "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
        "Patient00001_Plane2_1_of_3;1;Fetal brain;Trans-thalamic;Op1;Voluson E6;1 \n"
        "Patient00002_Plane3_1_of_3;2;Fetal femur;Not A Brain;Op1;Voluson E6;0 \n"
    )
    dataset = open_dataset(f"fpdb:{tmp_path}")
    assert len(dataset) == 1 and dataset.records[0]["split"] == "train"
    assert dataset.records[0]["brain_plane"] == "trans-thalamic"
    assert len(dataset.missing) == 1 and "Patient00002" in dataset.missing[0][0] and "line 3" in dataset.missing[0][1]


def test_csv_manifest(tmp_path):
    _write_png(tmp_path / "imgs" / "a.png")
    _write_png(tmp_path / "imgs" / "b.png", 200)
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient,pixel_spacing_mm,ga_days,caption\n"
        "imgs/a.png,Fetal thorax,p1,0.2,150,a caption\n"
        "imgs/b.png,chd,p2,,,\n"
        "imgs/gone.png,femur,p3,,,\n"
    )
    dataset = open_dataset(f"csv:{tmp_path / 'manifest.csv'}")
    assert [r["label"] for r in dataset.records] == ["thorax", "chd"]
    assert dataset.records[0]["pixel_spacing_mm"] == 0.2 and dataset.records[0]["ga_days"] == 150
    assert "ga_days" not in dataset.records[1] and dataset.records[1]["pixel_spacing_mm"] is None
    assert dataset[1]["image"].max() == 200 and dataset[0]["caption"] == "a caption"
    assert len(dataset.missing) == 1


def test_csv_bad_number_names_the_line(tmp_path):
    _write_png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,hc_mm\na.png,brain,abc\n")
    with pytest.raises(FetalCLIPError, match="line 2"):
        open_dataset(f"csv:{tmp_path / 'm.csv'}")


def test_folder_adapter(tmp_path):
    _write_png(tmp_path / "Fetal femur" / "1.png")
    _write_png(tmp_path / "cervix" / "x" / "2.jpg")
    dataset = open_dataset(f"folder:{tmp_path}")
    assert dataset.column("label") == ["femur", "cervix"]


def test_bad_specs():
    with pytest.raises(FetalCLIPError, match="SCHEME:ARG"):
        parse_spec("hc18")
    with pytest.raises(FetalCLIPError, match="unknown scheme"):
        open_dataset("nope:thing")
    with pytest.raises(FetalCLIPError, match="not a folder"):
        open_dataset("hc18:/definitely/not/here")
