import collections
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.datasets import hc18_subject, open_dataset, parse_spec
from fetalclip.errors import FetalCLIPError, ImageReadError


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


# -- masks, spacing and multi-frame records ---------------------------------------------------------------------
def test_hc18_records_carry_224_spacing(hc18_dir):
    dataset = open_dataset(f"hc18:{hc18_dir}")
    record = dataset.records[0]
    assert record["pixel_spacing_224_mm"] == pytest.approx(record["pixel_spacing_mm"] * 800 / 224)
    assert dataset[0]["pixel_spacing_224_mm"] == pytest.approx(record["pixel_spacing_224_mm"])


def test_hc18_masks_are_filled_heads(hc18_dir):
    """Filled masks from the outlines: solid, one piece, and as large as the annotated circumference implies.

    For an ellipse of circumference C the area is 4*pi*area/C^2 of a circle's C^2/(4 pi): 1.0 for a circle,
    about 0.92-0.99 for the aspect ratios of fetal heads (1.0-1.6). A mask filled to the outer edge of the
    drawn line, or only to its inner edge, or one with holes, falls outside that band for small heads.
    """
    from scipy import ndimage

    dataset = open_dataset(f"hc18:{hc18_dir}")
    ratios = []
    for index in range(0, len(dataset), 40):
        sample = dataset[index]
        mask = sample["mask"]
        assert mask.dtype == np.uint8 and mask.shape == sample["image"].shape and set(np.unique(mask)) <= {0, 1}
        assert ndimage.label(mask)[1] == 1 and np.array_equal(ndimage.binary_fill_holes(mask), mask.astype(bool))
        if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue  # head cut by the border: its visible area is not the ellipse's
        circumference_px = sample["hc_mm"] / sample["pixel_spacing_mm"]
        ratios.append(4 * np.pi * mask.sum() / circumference_px**2)
    assert len(ratios) >= 15
    assert 0.9 <= np.median(ratios) <= 1.0 and min(ratios) > 0.85 and max(ratios) < 1.02


def test_hc18_head_cut_by_the_border_is_filled(hc18_dir):
    dataset = open_dataset(f"hc18:{hc18_dir}")
    index = [Path(s).name for s in dataset.column("source")].index("346_HC.png")
    sample = dataset[index]
    outline = np.asarray(Image.open(sample["metadata"]["annotation"])) > 0
    assert sample["mask"].sum() > 20 * outline.sum() and sample["mask"][0].any()


def test_fill_outline_keeps_the_middle_of_the_line():
    from PIL import ImageDraw

    from fetalclip.data.masks import fill_outline

    canvas = Image.new("L", (120, 100), 0)
    ImageDraw.Draw(canvas).ellipse((20, 20, 100, 80), outline=255, width=5)
    outline = np.asarray(canvas)
    mask = fill_outline(outline)
    outer = (mask > 0).sum()
    ImageDraw.Draw(canvas).ellipse((20, 20, 100, 80), fill=255)
    full = (np.asarray(canvas) > 0).sum()
    inside_only = full - (outline > 0).sum()
    # Strictly between "inside the line" and "up to the outer edge", near the midpoint.
    assert inside_only < outer < full and abs(outer - (inside_only + full) / 2) < 0.15 * (full - inside_only)
    # Open at the border: the part within the outline's hull is filled.
    cut = outline.copy()
    cut[:, 95:] = 0
    cut_mask = fill_outline(cut[:, :95])
    assert cut_mask.sum() > 0.8 * mask[:, :95].sum()
    assert fill_outline(np.zeros((10, 10), np.uint8)).sum() == 0


def test_csv_masks_views_frames_and_dicom_rows(tmp_path, dicom_writer, ramp_frames):
    _write_png(tmp_path / "a.png", size=(16, 20))
    mask = np.zeros((16, 20), np.uint8)
    mask[4:8, 5:9] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "wrong_mask.png")
    dicom_writer(tmp_path / "loop.dcm", ramp_frames, region_spacing_cm=(0.01, 0.01))
    (tmp_path / "m.csv").write_text(
        "path,label,view,pixel_spacing_mm,mask,frame_index\n"
        "a.png,thorax,three_vessel,0.25,a_mask.png,\n"
        "loop.dcm,thorax,four_chamber,,,\n"
        "loop.dcm,thorax,four_chamber,,,3\n"
        "a.png,thorax,,,wrong_mask.png,\n"
    )
    dataset = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    first = dataset[0]
    assert first["view"] == "three_vessel" and first["mask"].sum() == 16 and first["mask"].max() == 1
    assert dataset.records[0]["pixel_spacing_224_mm"] == pytest.approx(0.25 * 20 / 224)
    # A DICOM row without a frame index expands into its frames; with one, it is that frame.
    frames = list(dataset.iter_record_samples(1, frames="every:2"))
    assert [s["frame_index"] for s in frames] == [0, 2, 4] and frames[0]["view"] == "four_chamber"
    assert frames[0]["pixel_spacing_mm"] == pytest.approx(0.1)
    assert np.array_equal(dataset[2]["image"], ramp_frames[3]) and list(dataset.iter_record_samples(2))[0]["frame_index"] == 3
    assert np.array_equal(dataset[1]["image"], ramp_frames[0])
    with pytest.raises(ImageReadError, match="wrong_mask.png.*5x5"):
        dataset[3]
