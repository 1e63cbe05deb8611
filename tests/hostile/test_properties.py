"""Property-based tests for the parsers of untrusted text: manifests (``csv:`` / HC18 tables), checkpoint
``config.json`` files and training recipes.

Two properties each: whatever the bytes or values, the parser either succeeds or raises the project's own
``FetalCLIPError`` (never a ``KeyError``, ``ValueError`` or ``UnicodeDecodeError`` traceback), and what a
valid input says comes back unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import CheckpointError, FetalCLIPError
from fetalclip.models.checkpoint import FORMAT_NAME, FORMAT_VERSION, parse_config
from fetalclip.train.config import TrainConfig, coerce, make_config, read_config_file

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IMAGES = ("a.png", "b.png", "sub/c.png")
MANIFEST_COLUMNS = ("path", "label", "patient", "pixel_spacing_mm", "ga_days", "hc_mm", "frame_index", "view",
                    "finding", "caption", "split", "brain_plane", "mask", "extra")


@pytest.fixture(scope="module")
def folder():
    """A folder with a few small images, shared by every example (each example writes only its own table)."""
    root = Path(tempfile.mkdtemp(prefix="fetalclip-props-"))
    (root / "sub").mkdir()
    (root / "training_set").mkdir()
    for name in IMAGES:
        Image.fromarray(np.full((6, 9), 80, np.uint8)).save(root / name)
    Image.fromarray(np.full((6, 9), 80, np.uint8)).save(root / "training_set" / "000_HC.png")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _open_or_project_error(spec: str):
    try:
        return open_dataset(spec)
    except FetalCLIPError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


# -- manifests -------------------------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=400))
def test_any_bytes_as_a_csv_manifest(folder, data):
    (folder / "m.csv").write_bytes(data)
    _open_or_project_error(f"csv:{folder / 'm.csv'}")


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_as_an_hc18_table(folder, data):
    (folder / "training_set_pixel_size_and_HC.csv").write_bytes(b"filename,pixel size(mm),head circumference (mm)\n" + data)
    _open_or_project_error(f"hc18:{folder}")


cell = st.one_of(
    st.sampled_from(["", "a.png", "sub/c.png", "../a.png", "nan", "inf", "-1", "0", "0.2", "1e999", "3", "brain", "\x00"]),
    st.text(max_size=12),
)


@FAST
@given(
    columns=st.lists(st.sampled_from(MANIFEST_COLUMNS), min_size=1, max_size=6, unique=True),
    rows=st.lists(st.lists(cell, min_size=0, max_size=7), max_size=5),
)
def test_any_table_of_text_as_a_csv_manifest(folder, columns, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    (folder / "m.csv").write_text(buffer.getvalue(), encoding="utf-8")
    dataset = _open_or_project_error(f"csv:{folder / 'm.csv'}")
    if dataset is not None:
        # Whatever was accepted is usable: every number a positive finite float, every source an existing file.
        for record in dataset.records:
            assert Path(record["source"]).exists()
            for key in ("pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "hc_mm"):
                value = record.get(key)
                assert value is None or (isinstance(value, float) and math.isfinite(value) and value > 0)
        # Every non-blank row is accounted for: kept, missing or a repeat (csv skips rows with no cells at all).
        assert len(dataset.records) + len(dataset.missing) + len(dataset.duplicates) == len([r for r in rows if r])


positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
good_row = st.fixed_dictionaries({
    "path": st.sampled_from(IMAGES),
    "patient": st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8),
    "pixel_spacing_mm": st.one_of(st.none(), positive),
    "ga_days": st.one_of(st.none(), positive),
    "hc_mm": st.one_of(st.none(), positive),
    # Cells are read stripped, so a caption with outer blanks would not come back as written.
    "caption": st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)
    .filter(lambda text: text == text.strip()),
})


@FAST
@given(st.lists(good_row, min_size=1, max_size=6))
def test_a_valid_manifest_round_trips(folder, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else repr(value) if isinstance(value, float) else value
                         for key, value in row.items()})
    (folder / "m.csv").write_text(buffer.getvalue(), encoding="utf-8")
    dataset = open_dataset(f"csv:{folder / 'm.csv'}")
    # Exact repeats are reported once and kept once; everything else comes back as written.
    distinct = []
    for row in rows:
        if row not in distinct:
            distinct.append(row)
    assert len(dataset.records) == len(distinct) and len(dataset.duplicates) == len(rows) - len(distinct)
    assert not dataset.missing
    for row, record in zip(distinct, dataset.records):
        assert record["source"] == str(folder / row["path"])
        assert record["patient"] == row["patient"]
        assert record["pixel_spacing_mm"] == row["pixel_spacing_mm"]
        for key in ("ga_days", "hc_mm"):
            assert record.get(key) == row[key]
        assert record.get("caption") == (row["caption"] or None)


# -- checkpoint config.json ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["format", "format_version", "model_name", "embed_dim"]), json_values, max_size=4),
    st.fixed_dictionaries({"format": st.just(FORMAT_NAME), "format_version": json_values}),
))
def test_any_json_as_a_checkpoint_config(folder, value):
    path = folder / "config.json"
    path.write_text(json.dumps(value))
    try:
        config = parse_config(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and "config.json" in str(exc)
    else:
        assert config["format"] == FORMAT_NAME and isinstance(config["format_version"], int)


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_as_a_checkpoint_config(folder, data):
    path = folder / "config.json"
    path.write_bytes(data)
    try:
        parse_config(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)


@FAST
@given(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in ("format", "format_version")),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=10), max_size=5),
       st.integers(min_value=0, max_value=FORMAT_VERSION))
def test_a_valid_checkpoint_config_round_trips(folder, settings_, version):
    import torch

    from fetalclip.models.checkpoint import CONFIG_FILE, write_checkpoint_dir

    out = folder / "ckpt"
    write_checkpoint_dir(out, {"w": torch.zeros(1)}, settings_, overwrite=True)
    config = parse_config(out / CONFIG_FILE)
    assert config == {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **settings_}
    # Older versions are read too.
    (out / CONFIG_FILE).write_text(json.dumps({"format": FORMAT_NAME, "format_version": version, **settings_}))
    assert parse_config(out / CONFIG_FILE)["format_version"] == version


# -- training recipes ------------------------------------------------------------------------------------------
SETTING_NAMES = sorted(TrainConfig().to_dict())


@FAST
@given(st.binary(max_size=200), st.sampled_from([".json", ".toml", ".yaml"]))
def test_any_bytes_as_a_training_recipe(folder, data, suffix):
    path = folder / f"recipe{suffix}"
    path.write_bytes(data)
    try:
        make_config(path)
    except FetalCLIPError as exc:
        assert "\n" not in str(exc)


@FAST
@given(st.dictionaries(st.sampled_from(SETTING_NAMES), json_values, max_size=4))
def test_any_values_in_a_training_recipe(folder, values):
    path = folder / "recipe.json"
    path.write_text(json.dumps(values))
    try:
        config = make_config(path)
    except FetalCLIPError as exc:
        assert "\n" not in str(exc)
    else:
        for value in config.to_dict().values():
            assert not (isinstance(value, float) and not math.isfinite(value))


@FAST
@given(st.sampled_from(SETTING_NAMES), st.one_of(st.text(max_size=12), json_values))
def test_coerce_any_value(key, value):
    try:
        coerce(key, value)
    except FetalCLIPError:
        pass


@FAST
@given(
    steps=st.integers(min_value=1, max_value=10**7),
    seed=st.integers(min_value=0, max_value=2**31),
    lr=st.floats(min_value=1e-9, max_value=1.0),
    weight_decay=st.floats(min_value=0.0, max_value=1.0),
    tensorboard=st.booleans(),
    model=st.sampled_from(["fetalclip-tiny", "fetalclip-vit-b16"]),
)
def test_a_valid_training_recipe_round_trips(folder, steps, seed, lr, weight_decay, tensorboard, model):
    config = make_config(overrides={"steps": steps, "seed": seed, "lr": lr, "weight_decay": weight_decay,
                                    "tensorboard": tensorboard, "model": model})
    path = folder / "resolved.json"
    path.write_text(json.dumps(config.to_dict()))
    assert read_config_file(path) == config.to_dict()
    assert make_config(path) == config


# -- published-format .pt files --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch on a made-up header
@FAST
@given(st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"]), st.binary(max_size=300))
def test_any_bytes_as_a_published_checkpoint(folder, magic, data):
    from fetalclip.models.checkpoint import read_published_state_dict

    path = folder / "w.pt"
    path.write_bytes(magic + data)
    try:
        read_published_state_dict(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and "w.pt" in str(exc)
