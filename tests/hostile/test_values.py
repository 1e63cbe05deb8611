"""Hostile values: bad numbers, bad tables, lying checkpoints and references.

Each case makes its own input under ``tmp_path`` and asserts the failure is one of the project's errors, on one
line, naming the file (and the row and field where there is one), or, for rows that need not stop a run, that
they are counted and reported instead of silently dropped or counted twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.data.captions import template_caption
from fetalclip.data.datasets import open_dataset
from fetalclip.data.readers import read_frame, read_image
from fetalclip.data.sample import make_sample
from fetalclip.errors import CheckpointError, FetalCLIPError, HubUnavailableError, ImageReadError
from fetalclip.io import write_json_atomic
from fetalclip.models.checkpoint import write_checkpoint_dir, write_published_checkpoint
from fetalclip.models.hub import parse_hub_reference
from fetalclip.models.loading import load

BAD_NUMBERS = ["0", "-0.1", "nan", "NaN", "inf", "-inf", "1e999", "abc", "0x1p-3"]


def _png(path, size=(8, 10)):
    Image.fromarray(np.full(size, 100, np.uint8)).save(path)
    return path


def _one_line_error(info, *fragments):
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- numbers at the data boundary ------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["pixel_spacing_mm", "hc_mm", "ga_days"])
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_csv_manifest_rejects_unusable_numbers_naming_file_line_and_column(tmp_path, column, value):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text(f"path,{column}\na.png,0.2\nb.png,{value}\n")
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"csv:{tmp_path / 'm.csv'}")
    _one_line_error(info, "m.csv", "line 3", column, repr(value))


@pytest.mark.parametrize("value", ["0", "-0.07", "nan", "inf", "ten"])
def test_hc18_table_rejects_unusable_spacing(tmp_path, value):
    (tmp_path / "training_set").mkdir()
    _png(tmp_path / "training_set" / "000_HC.png")
    (tmp_path / "training_set_pixel_size_and_HC.csv").write_text(
        f"filename,pixel size(mm),head circumference (mm)\n000_HC.png,{value},44.3\n"
    )
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"hc18:{tmp_path}")
    _one_line_error(info, "training_set_pixel_size_and_HC.csv", "line 2", "pixel size(mm)")


def test_every_reader_refuses_a_bad_spacing_as_a_read_error_of_that_file(tmp_path):
    image = np.zeros((4, 4), np.uint8)
    for value in (0.0, -1.0, math.nan, math.inf, float("-inf")):
        with pytest.raises(ImageReadError) as info:
            make_sample(image, "scan.png", pixel_spacing_mm=value)
        _one_line_error(info, "scan.png", "pixel_spacing_mm")
    with pytest.raises(ImageReadError, match="hc_mm"):
        make_sample(image, "scan.png", hc_mm=math.nan)
    path = _png(tmp_path / "x.png")
    with pytest.raises(ImageReadError) as info:
        read_image(path, pixel_spacing_mm=math.nan)
    _one_line_error(info, str(path), "pixel_spacing_mm")
    # Good values are untouched.
    sample = make_sample(image, "scan.png", pixel_spacing_mm=0.25, hc_mm=170.0)
    assert sample["pixel_spacing_mm"] == 0.25 and sample["pixel_spacing_224_mm"] == pytest.approx(0.25 * 4 / 224)


def test_dicom_header_with_a_negative_spacing_never_reaches_a_sample(tmp_path, dicom_writer):
    # The DICOM reader may treat such a header as "no spacing" or refuse the file; a negative number is neither.
    path = dicom_writer(tmp_path / "neg.dcm", np.zeros((8, 8), np.uint8), pixel_spacing_mm=(-0.2, -0.2))
    try:
        sample = read_frame(path)
    except ImageReadError as exc:
        assert "neg.dcm" in str(exc) and "\n" not in str(exc)
    else:
        assert sample["pixel_spacing_mm"] is None and sample["pixel_spacing_224_mm"] is None


def test_caption_never_says_nan(tmp_path):
    sample = {"source": "s.png", "label": "brain", "pixel_spacing_224_mm": math.nan}
    with pytest.raises(FetalCLIPError) as info:
        template_caption(sample, np.random.default_rng(0))
    _one_line_error(info, "s.png", "pixel_spacing_224_mm")
    good = template_caption({"source": "s.png", "label": "brain", "pixel_spacing_224_mm": 0.5}, np.random.default_rng(0))
    assert "nan" not in good.lower()


def test_json_writer_writes_null_for_nan_and_infinity(tmp_path):
    out = write_json_atomic(tmp_path / "r.json", {"a": math.nan, "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0])})
    text = out.read_text()

    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON")

    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [None, 1.5], "c": [None, 2.0]}


# -- rows left out are counted and reported ------------------------------------------------------------------------
def test_missing_and_duplicate_rows_are_counted_reported_and_not_double_counted(tmp_path, caplog):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,brain\ngone.png,brain\nb.png,femur\na.png,brain\nlost.png,femur\n")
    with caplog.at_level(logging.WARNING, logger="fetalclip"):
        dataset = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert [r["source"].rsplit("/", 1)[1] for r in dataset.records] == ["a.png", "b.png"]
    problems = dataset.problems()
    assert problems["missing"]["count"] == 2 and problems["missing"]["first"]["source"].endswith("gone.png")
    assert "line 3" in problems["missing"]["first"]["reason"]
    assert problems["duplicates"]["count"] == 1 and "line 5" in problems["duplicates"]["first"]["reason"]
    json.dumps(problems)  # fit for a command's JSON as it is
    logged = [r.getMessage() for r in caplog.records if r.name == "fetalclip"]
    assert len(logged) == 1 and "2 listed file(s) missing" in logged[0] and "1 duplicate row(s)" in logged[0]
    # The report travels with subsets (a command may filter before it prints).
    assert dataset.subset([0]).problems() == problems


def test_a_clean_manifest_reports_nothing(tmp_path, caplog):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path\na.png\n")
    with caplog.at_level(logging.WARNING, logger="fetalclip"):
        dataset = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert dataset.describe_problems() is None and not caplog.records
    assert dataset.problems() == {"missing": {"count": 0, "first": None}, "duplicates": {"count": 0, "first": None}}


# -- tables that are not what they claim ---------------------------------------------------------------------
def test_hc18_wrong_header(tmp_path):
    (tmp_path / "training_set").mkdir()
    (tmp_path / "training_set_pixel_size_and_HC.csv").write_text("name,spacing\n000_HC.png,0.1\n")
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"hc18:{tmp_path}")
    _one_line_error(info, "training_set_pixel_size_and_HC.csv", "'filename'")


def test_fpdb_wrong_header_and_unknown_label(tmp_path):
    (tmp_path / "Images").mkdir()
    _png(tmp_path / "Images" / "Patient00001_Plane1_1_of_15.png")
    table = tmp_path / "FETAL_PLANES_DB_data.csv"
    table.write_text("Image_name;Patient_num\nPatient00001_Plane1_1_of_15;1\n")
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"fpdb:{tmp_path}")
    _one_line_error(info, "FETAL_PLANES_DB_data.csv", "'Plane'")
    table.write_text(
        "Image_name;Patient_num;Plane;Brain_plane;Train \nPatient00001_Plane1_1_of_15;1;Fetal elbow;Other;1\n"
    )
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"fpdb:{tmp_path}")
    _one_line_error(info, "FETAL_PLANES_DB_data.csv", "line 2", "Fetal elbow")


@pytest.mark.parametrize("scheme", ["csv", "hc18"])
def test_non_utf8_table(tmp_path, scheme):
    (tmp_path / "training_set").mkdir()
    _png(tmp_path / "a.png")
    if scheme == "csv":
        body = "path,label\na.png,cerveau f\xe9tal\n"
    else:
        body = "filename,pixel size(mm),head circumference (mm)\n\xe9.png,0.1,40\n"
    table = tmp_path / ("m.csv" if scheme == "csv" else "training_set_pixel_size_and_HC.csv")
    table.write_bytes(body.encode("latin-1"))
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"csv:{table}" if scheme == "csv" else f"hc18:{tmp_path}")
    _one_line_error(info, table.name, "UTF-8")


def test_manifest_row_with_an_empty_path_or_a_bad_frame_index(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,frame_index\na.png,\n,\n")
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"csv:{tmp_path / 'm.csv'}")
    _one_line_error(info, "m.csv", "line 3", "path is empty")
    (tmp_path / "m.csv").write_text("path,frame_index\na.png,-1\n")
    with pytest.raises(FetalCLIPError) as info:
        open_dataset(f"csv:{tmp_path / 'm.csv'}")
    _one_line_error(info, "m.csv", "line 2", "frame_index")


# -- zero-shot GA with nothing to measure ----------------------------------------------------------------------
def test_ga_on_a_dataset_without_any_spacing(tmp_path, tiny_model):
    from fetalclip.tasks.gestational_age import predict_ga

    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path\na.png\n")
    dataset = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    for skip_bad in (False, True):
        with pytest.raises(FetalCLIPError) as info:
            predict_ga(tiny_model, dataset, skip_bad=skip_bad)
        _one_line_error(info, "m.csv", "pixel spacing")


# -- checkpoints -----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_folder(tmp_path, tiny_model):
    config = {key: value for key, value in tiny_model.config.items() if key != "provenance"}
    return write_checkpoint_dir(tmp_path / "ckpt", tiny_model.clip.state_dict(), config)


@pytest.mark.parametrize("body", ["[1, 2]", '"fetalclip"', "null", "{\"format\": \"fetalclip\", \"format_version\": \"1\"}",
                                  "{\"format\": \"fetalclip\", \"format_version\": 1.5}",
                                  "{\"format\": \"fetalclip\", \"format_version\": true}",
                                  "{\"format\": \"fetalclip\", \"format_version\": null}"])
def test_checkpoint_config_that_is_not_an_object_of_our_format(tiny_folder, body):
    (tiny_folder / "config.json").write_text(body)
    with pytest.raises(CheckpointError) as info:
        load(tiny_folder)
    _one_line_error(info, "config.json")


def test_non_utf8_checkpoint_config(tiny_folder):
    (tiny_folder / "config.json").write_bytes(b'{"format": "fetalclip\xff"}')
    with pytest.raises(CheckpointError) as info:
        load(tiny_folder)
    _one_line_error(info, "config.json", "not valid JSON")


@pytest.mark.parametrize("name", ["notes.txt", "weights.pt", "empty.pt"])
def test_a_text_file_is_not_a_checkpoint(tmp_path, name):
    path = tmp_path / name
    path.write_text("" if name == "empty.pt" else "these are my notes, not weights\n")
    with pytest.raises(CheckpointError) as info:
        load(path)
    _one_line_error(info, name, "not a torch checkpoint")


def test_nan_weights_are_refused_at_load_naming_the_key(tmp_path, tiny_model):
    state = {key: value.clone() for key, value in tiny_model.clip.state_dict().items()}
    state["visual.proj"][0, 0] = math.nan
    state["text_projection"][1, 1] = math.inf
    published = write_published_checkpoint(tmp_path / "w.pt", state)
    with pytest.raises(CheckpointError) as info:
        load(published)
    _one_line_error(info, "w.pt", "holds NaN or infinite values", "2 tensor(s)")
    config = {key: value for key, value in tiny_model.config.items() if key != "provenance"}
    folder = write_checkpoint_dir(tmp_path / "ckpt", state, config)
    with pytest.raises(CheckpointError) as info:
        load(folder)
    _one_line_error(info, "ckpt")


def test_one_missing_or_misshaped_key_is_named_against_the_closest_architecture(tmp_path, tiny_model):
    state = dict(tiny_model.clip.state_dict())
    del state["visual.proj"]
    path = write_published_checkpoint(tmp_path / "w.pt", state)
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = _one_line_error(info, "w.pt", "closest is fetalclip-tiny", "1 missing keys: visual.proj")
    assert "fetalclip-vit-l14" not in message
    state = dict(tiny_model.clip.state_dict())
    state["logit_scale"] = torch.zeros(2)
    state["extra.bias"] = torch.zeros(1)
    path = write_published_checkpoint(tmp_path / "w2.pt", state)
    with pytest.raises(CheckpointError) as info:
        load(path)
    _one_line_error(info, "closest is fetalclip-tiny", "1 unexpected keys: extra.bias", "1 shape mismatches: logit_scale")


@pytest.mark.parametrize("reference", ["hf-hub:org/repo/../../etc/passwd", "hf-hub:../x/y", "hf-hub:org/repo/..",
                                       "hf-hub:org/../repo", "hf-hub:org/repo/a\\..\\b.pt", "hf-hub:org/.hidden/x"])
def test_hub_reference_that_climbs_out_is_refused_before_any_lookup(reference, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a lookup was attempted")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(HubUnavailableError) as info:
        load(reference)
    _one_line_error(info, reference.split("/")[0])
    assert parse_hub_reference("hf-hub:org/repo/sub/file.pt") == ("org/repo", "sub/file.pt")


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_open_clip_baseline_holding_a_pickle_is_refused_and_nothing_runs(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from fetalclip.bench.baselines import load_baseline

    tiny = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder = tmp_path / "oc"
    folder.mkdir()
    state = dict(open_clip.CLIP(**tiny).state_dict())
    marker = tmp_path / "pwned"
    torch.save({"state_dict": state, "extra": _Payload(str(marker))}, folder / "open_clip_pytorch_model.bin",
               pickle_module=pickle)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny}))
    with pytest.raises(FetalCLIPError) as info:
        load_baseline(f"open_clip:{folder}")
    _one_line_error(info, "refused to load")
    assert not marker.exists()
    (folder / "open_clip_config.json").write_text("[]")
    with pytest.raises(FetalCLIPError) as info:
        load_baseline(f"open_clip:{folder}")
    _one_line_error(info, "open_clip_config.json", "model_cfg")


# -- training recipes ----------------------------------------------------------------------------------------------
def test_training_config_hostile_files_and_values(tmp_path):
    from fetalclip.train.config import make_config

    recipe = tmp_path / "r.json"
    for body in (b"[1, 2]", b'{"lr": "fast"}', b'{"lr": NaN}', b'{"lr": Infinity}', b'{"steps": 1e400}', b'{"model": ["a"]}',
                 b'{"lr": 1e-3, "lr\xff": 2}'):
        recipe.write_bytes(body)
        with pytest.raises(FetalCLIPError) as info:
            make_config(recipe)
        assert "\n" not in str(info.value)
    with pytest.raises(FetalCLIPError, match="'lr'"):
        make_config(overrides={"lr": "nan"})
    assert make_config(overrides={"lr": "1e-3"}).lr == 1e-3
