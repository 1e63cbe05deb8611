"""``shards:DIR``: a packed folder read by every command as its source was, and the one manifest reader."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.data.datasets import open_dataset, register_adapter
from fetalclip.data.sample import REQUIRED_KEYS
from fetalclip.data.shards import (
    MANIFEST,
    ShardError,
    check_shards,
    iter_shard_samples,
    load_manifest,
    pack_shards,
    read_manifest,
)
from fetalclip.errors import FetalCLIPError

SIM = "sim:12,size=64"
runner = CliRunner()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack_shards([SIM], out, shard_size=5, clean=False, workers=0)
    return out


def _source_index(source, shards):
    by_source = {record["source"]: i for i, record in enumerate(source.records)}
    return [by_source[record["source"]] for record in shards.records]


def test_shards_spec_has_the_records_and_pixels_of_its_source(packed):
    source, shards = open_dataset(SIM), open_dataset(f"shards:{packed}")
    assert shards.name == f"shards:{packed}" and len(shards) == len(source) == 12
    order = _source_index(source, shards)
    assert sorted(order) == list(range(12))  # each source record once, in the packed (seeded) order
    for index, original in zip(range(len(shards)), order):
        record, expected_record = shards.records[index], source.records[original]
        assert not any(isinstance(value, np.ndarray) for value in record.values())  # an index, never pixels
        for key, value in expected_record.items():
            if key != "metadata":
                assert record[key] == value, key
        metadata = record["metadata"]
        assert {key: metadata[key] for key in expected_record["metadata"]} == expected_record["metadata"]
        assert metadata["shard"].endswith(".tar") and metadata["key"]
        sample, expected = shards[index], source[original]
        assert set(REQUIRED_KEYS) <= set(sample)
        assert sample["image"].dtype == expected["image"].dtype and np.array_equal(sample["image"], expected["image"])
        assert np.array_equal(sample["mask"], expected["mask"])
        for key in ("pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "hc_mm", "caption", "label", "brain_plane", "patient"):
            assert sample.get(key) == expected.get(key), key
    # A subset keeps the loader, as every adapter's does.
    assert np.array_equal(shards.subset([3])[0]["image"], shards[3]["image"])


def test_a_packed_frame_is_one_sample_and_shards_pack_again(tmp_path, dicom_writer, ramp_frames):
    dicom_writer(tmp_path / "loop.dcm", ramp_frames, region_spacing_cm=(0.02, 0.02))
    (tmp_path / "m.csv").write_text("path,label,patient\nloop.dcm,thorax,p1\n")
    first = pack_shards([f"csv:{tmp_path / 'm.csv'}"], tmp_path / "a", frames="every:2", clean=False, workers=0)
    shards = open_dataset(f"shards:{tmp_path / 'a'}")
    assert first.samples == len(shards) == 3
    for index in range(len(shards)):
        # The record names its frame; its source file is never gone back to (it need not exist any more).
        (only,) = shards.iter_record_samples(index, frames="all")
        assert np.array_equal(only["image"], ramp_frames[only["frame_index"]])
    again = pack_shards([f"shards:{tmp_path / 'a'}"], tmp_path / "b", clean=False, workers=0)
    assert again.samples == 3 and check_shards(again.out).ok
    repacked = {s["frame_index"]: s["image"] for s in iter_shard_samples(again.out)}
    assert sorted(repacked) == [0, 2, 4] and all(np.array_equal(repacked[k], ramp_frames[k]) for k in repacked)


def _zeroshot_json(spec, out, name):
    result = runner.invoke(app, ["zeroshot", "planes", "-m", "fetalclip-tiny", "-d", spec, "-o", str(out), "--n-bootstrap", "200"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text().replace(json.dumps(name)[1:-1], "DATA"))


def test_zeroshot_on_shards_gives_the_numbers_of_its_source(packed, tmp_path, one_thread):
    source, shards = open_dataset(SIM), open_dataset(f"shards:{packed}")
    order = _source_index(source, shards)
    register_adapter("sim-in-pack-order", lambda argument: source.subset(order, name="sim-in-pack-order:x"))
    from_shards = _zeroshot_json(f"shards:{packed}", tmp_path / "shards.json", f"shards:{packed}")
    from_source = _zeroshot_json("sim-in-pack-order:x", tmp_path / "source.json", "sim-in-pack-order:x")
    # Every number, bootstrap intervals included (they resample rows in dataset order), and every row.
    assert from_shards == from_source
    # In the source's own order the rows are the same ones.
    plain = _zeroshot_json(SIM, tmp_path / "plain.json", SIM)
    assert sorted(map(json.dumps, plain["rows"])) == sorted(map(json.dumps, from_shards["rows"]))


# -- the one manifest reader ------------------------------------------------------------------------------------
def _copy(packed, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in packed.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _readers(folder):
    return {
        "read_manifest": lambda: read_manifest(folder),
        "check": lambda: check_shards(folder),
        "stream": lambda: list(iter_shard_samples(folder)),
        "shards spec": lambda: open_dataset(f"shards:{folder}"),
        "training": lambda: __import__("fetalclip.train.data", fromlist=["open_sources"]).open_sources([str(folder)]),
        "pack resume": lambda: pack_shards([SIM], folder, shard_size=5, clean=False, workers=0),
    }


@pytest.mark.parametrize("text, why", [
    ("{", "not valid JSON"),
    ("[1, 2]", "not a"),
    ('{"format": "fetalclip-shards", "shards": 7}', "'shards' is not a list"),
], ids=["not-json", "not-an-object", "shards-not-a-list"])
def test_a_corrupt_manifest_is_one_error_naming_it_for_every_reader(packed, tmp_path, text, why):
    folder = _copy(packed, tmp_path)
    (folder / MANIFEST).write_text(text)
    for name, read in _readers(folder).items():
        with pytest.raises(ShardError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{folder / MANIFEST}: ") and why in message and "\n" not in message, name


def test_an_unusable_shard_entry_is_listed_by_the_checker_and_stops_every_reader(packed, tmp_path):
    folder = _copy(packed, tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["shards"][1]["sha256"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    problems = check_shards(folder).problems
    assert f"{MANIFEST}: shard entry 'shard-000001.tar': 'sha256' missing or not a str" in problems
    assert [entry.problem is None for entry in load_manifest(folder).entries] == [True, False, True]
    for name in ("stream", "shards spec", "training"):
        with pytest.raises(ShardError, match=f"{MANIFEST}: shard entry 'shard-000001.tar'"):
            _readers(folder)[name]()


def test_an_absent_manifest(packed, tmp_path):
    folder = _copy(packed, tmp_path)
    (folder / MANIFEST).unlink()
    for read in (lambda: read_manifest(folder), lambda: check_shards(folder)):
        with pytest.raises(ShardError, match=f"{folder / MANIFEST}: missing"):
            read()
    # Readers take a folder without one as its shard-*.tar files in name order (shards written elsewhere).
    assert len(open_dataset(f"shards:{folder}")) == len(list(iter_shard_samples(folder))) == 12
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetalCLIPError, match="not a shard folder"):
        open_dataset(f"shards:{empty}")
    with pytest.raises(FetalCLIPError, match="is not a folder"):
        open_dataset(f"shards:{tmp_path / 'absent'}")
