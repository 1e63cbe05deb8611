"""WebDataset shards: round trip, resume, skip-bad, check, no identifying data, the CLI."""

import json
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.data import shards as shard_rules
from fetalclip.data.datasets import open_dataset, open_hc18, register_adapter
from fetalclip.data.shards import (
    MANIFEST,
    check_shards,
    iter_shard_samples,
    open_shard_folder,
    pack_shards,
    read_manifest,
    rules,
    stripped_png,
)
from fetalclip.data.shards.encode import _STATE, PackSettings, _stored_image
from fetalclip.data.shards.writer import _ordered
from fetalclip.errors import FetalCLIPError, ImageReadError

runner = CliRunner()


@pytest.fixture
def small_csv(tmp_path, dicom_writer, ramp_frames):
    """A csv dataset: grey PNG with a text chunk, grey-valued RGB, colour RGB, 16-bit, a 5-frame DICOM, a mask."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (40, 60), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "PatientName=Testperson^Jane")
    Image.fromarray(grey).save(folder / "grey.png", pnginfo=info)
    Image.fromarray(np.dstack([grey] * 3)).save(folder / "rgbgrey.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray((rng.integers(0, 65535, (20, 24))).astype(np.uint16)).save(folder / "deep.png")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 1
    Image.fromarray(mask).save(folder / "grey_mask.png")
    dicom_writer(folder / "loop.dcm", ramp_frames, region_spacing_cm=(0.02, 0.02))
    (folder / "m.csv").write_text(
        "path,label,patient,pixel_spacing_mm,ga_days,mask\n"
        "grey.png,brain,p1,0.1,150,grey_mask.png\n"
        "rgbgrey.png,femur,p1,,,\n"
        "colour.png,thorax,p2,0.2,,\n"
        "deep.png,abdomen,p3,,200,\n"
        "loop.dcm,thorax,,,,\n"
    )
    return f"csv:{folder / 'm.csv'}"


def _expected(spec, frames="all"):
    dataset = open_dataset(spec)
    return {
        (s["source"], s["frame_index"]): s
        for i in range(len(dataset)) for s in dataset.iter_record_samples(i, frames)
    }


def test_round_trip_yields_exactly_the_packed_samples(tmp_path, small_csv):
    out = tmp_path / "shards"
    result = pack_shards([small_csv], out, shard_size=3, clean=False, seed=1, workers=0)
    assert result.inputs == 5 and result.samples == 9 and result.shards == 3 and not result.skipped
    expected = _expected(small_csv)
    samples = list(iter_shard_samples(out))
    assert len(samples) == 9 and len({s["key"] for s in samples}) == 9
    for sample in samples:
        source = expected[(sample["source"], sample["frame_index"])]
        stored = _stored_image(source["image"])
        assert sample["image"].dtype == np.uint8 and np.array_equal(sample["image"], stored)
        for key in ("label", "patient", "pixel_spacing_mm", "pixel_spacing_224_mm", "ga_days", "frame_index"):
            assert sample.get(key) == source.get(key), key
        assert sample["dataset"] == "csv" and sample["cleaning"] is None and sample["caption"].endswith(".")
        assert (sample["height"], sample["width"]) == stored.shape[:2]
        if source.get("mask") is not None:
            assert np.array_equal(sample["mask"], source["mask"])
    by_name = {s["source"].rsplit("/", 1)[-1]: s for s in samples if s["frame_index"] is None}
    assert by_name["rgbgrey.png"]["image"].ndim == 2 and by_name["colour.png"]["image"].ndim == 3
    assert by_name["deep.png"]["image"].dtype == np.uint8
    assert "21 weeks and 3 days" in by_name["grey.png"]["caption"] and "0.03 mm" in by_name["grey.png"]["caption"]
    # Manifest: counts, checksums, settings.
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["totals"]["samples"] == 9 and manifest["settings"]["seed"] == 1
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert check_shards(out).ok
    # Same settings, same bytes: a second run elsewhere writes identical shards.
    again = pack_shards([small_csv], tmp_path / "again", shard_size=3, clean=False, seed=1, workers=0)
    assert [s["sha256"] for s in read_manifest(again.out)["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_png_passthrough_drops_ancillary_chunks(tmp_path, small_csv):
    source = small_csv.split(":", 1)[1].replace("m.csv", "grey.png")
    data = stripped_png(source, 40, 60, 1)
    assert data is not None and b"Testperson" not in data and b"tEXt" not in data
    assert np.array_equal(np.asarray(Image.open(source)), np.asarray(Image.open(__import__("io").BytesIO(data))))
    assert stripped_png(source, 40, 60, 3) is None and stripped_png(source, 41, 60, 1) is None


def test_no_identifying_dicom_attribute_reaches_the_shards(tmp_path, small_csv, phi):
    out = tmp_path / "shards"
    pack_shards([small_csv], out, shard_size=100, clean=False, workers=0)
    blob = b"".join(p.read_bytes() for p in out.iterdir())
    for value in phi.values():
        for part in value.split("^"):
            assert part.encode() not in blob, part
    assert b"Testperson" not in blob  # the PNG text chunk is gone too


def test_resume_after_a_failure_continues_without_duplicates(tmp_path, small_csv):
    reference = pack_shards([small_csv], tmp_path / "ref", shard_size=2, clean=False, seed=3, workers=0)
    # Break one input that comes late in the seeded order, then pack: it stops there with the file's name.
    order = [s["source"] for s in iter_shard_samples(reference.out) if s["frame_index"] in (None, 0)]
    victim = order[-1]
    good = open(victim, "rb").read()
    open(victim, "wb").write(b"not an image at all")
    out = tmp_path / "shards"
    with pytest.raises(ImageReadError, match="skip-bad"):
        pack_shards([small_csv], out, shard_size=2, clean=False, seed=3, workers=0)
    partial = read_manifest(out)
    assert not partial["complete"] and 0 < len(partial["shards"]) < reference.shards
    (out / ".shard-000009.tar.abc.tmp").write_bytes(b"junk from a killed run")
    open(victim, "wb").write(good)
    resumed = pack_shards([small_csv], out, shard_size=2, clean=False, seed=3, workers=0)
    assert resumed.resumed_from_shard == len(partial["shards"]) and resumed.samples == reference.samples
    assert [s["sha256"] for s in read_manifest(out)["shards"]] == [s["sha256"] for s in read_manifest(reference.out)["shards"]]
    keys = [s["key"] for s in iter_shard_samples(out)]
    assert len(keys) == len(set(keys)) == reference.samples
    assert not list(out.glob(".*.tmp"))
    # Nothing left to do on a third run; other settings are refused.
    assert pack_shards([small_csv], out, shard_size=2, clean=False, seed=3, workers=0).written_shards == 0
    with pytest.raises(FetalCLIPError, match="other settings"):
        pack_shards([small_csv], out, shard_size=2, clean=False, seed=4, workers=0)


def test_skip_bad_counts_and_lists(tmp_path, small_csv):
    folder = tmp_path / "in"
    (folder / "notes.png").write_text("a text file named .png")
    data = (folder / "colour.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    with open(folder / "m.csv", "a") as handle:
        handle.write("notes.png,brain,p9,,,\ncut.png,brain,p9,,,\n")
    result = pack_shards([small_csv], tmp_path / "shards", shard_size=4, clean=False, skip_bad=True, workers=0)
    assert sorted(s["source"].rsplit("/", 1)[-1] for s in result.skipped) == ["cut.png", "notes.png"]
    manifest = read_manifest(result.out)
    assert manifest["totals"]["skipped"] == 2 and result.samples == 9
    assert all(s["reason"] for s in manifest["skipped"])


def test_check_finds_damage(tmp_path, small_csv):
    out = tmp_path / "shards"
    pack_shards([small_csv], out, shard_size=3, clean=False, workers=0)
    names = [s["name"] for s in read_manifest(out)["shards"]]
    assert len(names) >= 2
    shard = out / names[0]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / names[-1]).unlink()
    (out / "shard-000077.tar").write_bytes(b"")
    problems = check_shards(out).problems
    assert any(f"{names[0]}: checksum" in p for p in problems) and any(f"{names[-1]}: missing" in p for p in problems)
    assert any("shard-000077.tar: shard file not listed" in p for p in problems)


def test_workers_and_cleaning_and_frames(tmp_path, small_csv):
    serial = pack_shards([small_csv], tmp_path / "a", shard_size=4, clean=True, frames="even:2", workers=0)
    parallel = pack_shards([small_csv], tmp_path / "b", shard_size=4, clean=True, frames="even:2", workers=2)
    assert [s["sha256"] for s in read_manifest(serial.out)["shards"]] == [s["sha256"] for s in read_manifest(parallel.out)["shards"]]
    samples = list(iter_shard_samples(parallel.out))
    assert serial.samples == 6 and sorted(s["frame_index"] for s in samples if s["frame_index"] is not None) == [0, 4]
    assert all(set(s["cleaning"]) == {"sector_fraction", "overlay_fraction", "changed_fraction"} for s in samples)


def test_custom_caption_function(tmp_path, small_csv):
    result = pack_shards([small_csv], tmp_path / "s", clean=False, workers=0,
                         caption_fn=lambda sample, rng: f"custom {sample['label']}", caption_name="test:custom")
    captions = {s["caption"] for s in iter_shard_samples(result.out)}
    assert captions == {"custom brain", "custom femur", "custom thorax", "custom abdomen"}
    assert read_manifest(result.out)["settings"]["captions"] == "test:custom"


def test_real_hc18_round_trip_with_masks(tmp_path, hc18_dir):
    register_adapter("hc18-first12", lambda path: open_hc18(path).subset(range(12)))
    spec = f"hc18-first12:{hc18_dir}"
    result = pack_shards([spec], tmp_path / "s", shard_size=5, clean=False, workers=0)
    assert result.samples == 12 and result.shards == 3
    dataset = open_dataset(spec)
    by_source = {r["source"]: i for i, r in enumerate(dataset.records)}
    for sample in iter_shard_samples(result.out):
        original = dataset[by_source[sample["source"]]]
        assert np.array_equal(sample["image"], original["image"]) and np.array_equal(sample["mask"], original["mask"])
        assert sample["hc_mm"] == original["hc_mm"] and sample["patient"] == original["patient"]
        assert sample["caption_ga_source"] == "who_hc_median" and "weeks and" in sample["caption"]
    # The PNG in the shard is the file's own compressed pixel data (no re-encoding when nothing changed).
    first_shard = tmp_path / "s" / "shard-000000.tar"
    with tarfile.open(first_shard) as tar:
        member = next(m for m in tar if m.name.endswith(".png") and not m.name.endswith(".mask.png"))
        packed = tar.extractfile(member).read()
    first = next(iter_shard_samples(first_shard))
    assert packed == stripped_png(first["source"], first["height"], first["width"], 1)


def test_cli_pack_check_split(tmp_path, small_csv):
    out = tmp_path / "shards"
    result = runner.invoke(app, ["data", "pack", "--dataset", small_csv, "--out", str(out), "--shard-size", "4",
                                 "--no-clean", "--workers", "0", "--json", str(tmp_path / "pack.json")])
    assert result.exit_code == 0, result.output
    assert "packed 9 samples from 5 inputs into" in result.output
    assert json.loads((tmp_path / "pack.json").read_text())["samples"] == 9
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0 and "9 samples, 0 problems" in result.output
    (out / "shard-000000.tar").write_bytes(b"")
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code != 0 and "shard check failed" in str(result.exception)
    result = runner.invoke(app, ["data", "split", "--dataset", small_csv, "--out", str(tmp_path / "split.json"),
                                 "--folds", "2", "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "split.json").read_text())["k"] == 2
    assert (out / MANIFEST).is_file()


# -- the shard rules shared by the checker and the training reader ----------------------------------------------
_NAME_PARTS = st.text(alphabet="ab.-_/0\n", min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_NAME_PARTS)
def test_member_names_split_exactly_as_webdataset_splits_them(name):
    from webdataset.tariterators import base_plus_ext

    key, extension = base_plus_ext(name)
    assert shard_rules.split_member_name(name) == (None if key is None else (key, extension))


def test_checker_and_training_reader_read_a_packed_folder_alike(tmp_path, small_csv):
    out = tmp_path / "shards"
    pack_shards([small_csv], out, shard_size=4, clean=False, workers=0)
    checked = check_shards(out)
    dataset = open_shard_folder(out)
    assert checked.ok and checked.samples == len(dataset) == 9
    read_back = {s["key"]: s for s in iter_shard_samples(out)}
    for record in dataset.records:
        sample = dataset.loader(record)
        assert np.array_equal(sample["image"], read_back[record["metadata"]["key"]]["image"])


def test_a_compressed_or_linked_shard_is_refused_by_every_reader(tmp_path, small_csv):
    import gzip

    out = tmp_path / "shards"
    pack_shards([small_csv], out, shard_size=100, clean=False, workers=0)
    shard = out / "shard-000000.tar"
    plain = shard.read_bytes()
    shard.write_bytes(gzip.compress(plain))
    for read in (lambda: list(iter_shard_samples(out)), lambda: open_shard_folder(out)):
        with pytest.raises(shard_rules.ShardError, match="shard-000000.tar: gzip-compressed"):
            read()
    (tmp_path / "elsewhere.tar").write_bytes(plain)
    shard.unlink()
    shard.symlink_to(tmp_path / "elsewhere.tar")
    for read in (lambda: list(iter_shard_samples(out)), lambda: open_shard_folder(out)):
        with pytest.raises(shard_rules.ShardError, match="shard-000000.tar: is a symbolic link"):
            read()
    assert any("symbolic link" in problem for problem in check_shards(out).problems)


def test_a_pool_stopped_early_leaves_no_worker(small_csv):
    import multiprocessing

    dataset = open_dataset(small_csv)
    _STATE.update(datasets=[dataset], settings=PackSettings([small_csv], clean=False), caption_fn=None)
    try:
        results = _ordered([(i, 0, i) for i in range(len(dataset))], workers=2)
        assert next(results)[0] == 0
        assert len(multiprocessing.active_children()) == 2
        results.close()  # what an error in the consumer, Ctrl-C or SIGTERM does to the generator
        assert multiprocessing.active_children() == []
    finally:
        _STATE.clear()


def test_pack_never_writes_a_member_its_readers_would_refuse(tmp_path, small_csv, monkeypatch):
    monkeypatch.setattr(rules, "MAX_IMAGE_MEMBER_BYTES", 20)  # below every packed PNG here
    with pytest.raises(ImageReadError, match="over the .* a shard member may have"):
        pack_shards([small_csv], tmp_path / "a", clean=False, workers=0)
    result = pack_shards([small_csv], tmp_path / "b", clean=False, workers=0, skip_bad=True)
    assert result.samples == 0 and len(result.skipped) == 5
