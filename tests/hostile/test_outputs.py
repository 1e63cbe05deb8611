"""Hostile output paths: no command may write over an input, replace an existing file without --overwrite,
write two outputs to one path, or find out only after the work that its destination cannot be written.

Each case goes through ``fetalclip.cli.main`` (the real error boundary) and asserts the exit code, a one-line
message naming the path, that nothing was changed byte for byte, and, where the refusal must come before any
compute, that the model loader was never called.
"""

from __future__ import annotations

import csv
import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from fetalclip.cli import main
from fetalclip.errors import OutputError
from fetalclip.io import write_text_atomic
from fetalclip.outputs import RunFolder, check_outputs


# -- helpers -------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_line_error(err: str, *fragments: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the refusal must come before compute."""
    import fetalclip.bench.harness
    import fetalclip.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output guard refused")

    monkeypatch.setattr(fetalclip.models, "load", refuse)
    monkeypatch.setattr(fetalclip.bench.harness, "load_model", refuse)
    monkeypatch.setattr(fetalclip.bench.harness, "run_benchmark", refuse)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 56), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def manifest(tmp_path, png):
    """A ``csv:`` dataset of two labelled images with spacing, HC and a mask each."""
    mask = tmp_path / "scan_mask.png"
    Image.fromarray(np.zeros((40, 56), dtype=np.uint8)).save(mask)
    path = tmp_path / "set.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "pixel_spacing_mm", "hc_mm", "mask"])
        writer.writerow([png.name, "brain", "p1", "0.2", "180", mask.name])
        writer.writerow([png.name, "abdomen", "p2", "0.2", "200", mask.name])
    return path


@pytest.fixture
def score_map(tmp_path):
    """A saved GA score map, so ``zeroshot ga --scores`` runs without any model."""
    path = tmp_path / "scores.npz"
    rng = np.random.default_rng(1)
    np.savez(path, scores=rng.random((3, 190)).astype(np.float32), hc_mm=np.array([180.0, 250.0, 300.0]))
    return path


def snapshot(path):
    return path.read_bytes()


# -- never over an input -------------------------------------------------------------------------------------
def test_embed_over_its_input_image_is_refused_and_the_image_kept(capsys, png, no_model):
    before = snapshot(png)
    code, _, err = run_cli(capsys, "embed", png, "--out", png, "--overwrite")
    assert code == 2
    assert_one_line_error(err, str(png), "is an input")
    assert snapshot(png) == before


def test_a_symlink_to_an_input_is_still_the_input(capsys, tmp_path, png, no_model):
    link = tmp_path / "innocent.npz"
    link.symlink_to(png)
    code, _, err = run_cli(capsys, "embed", png, "--out", link, "--overwrite")
    assert code == 2 and "is an input" in assert_one_line_error(err, str(link))
    assert Image.open(png).size == (56, 40)


def test_zeroshot_planes_over_its_manifest_is_refused(capsys, tmp_path, manifest, no_model):
    before = snapshot(manifest)
    code, _, err = run_cli(capsys, "zeroshot", "planes", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "-o", manifest, "--overwrite")
    assert code == 2
    assert_one_line_error(err, str(manifest), "is an input")
    assert snapshot(manifest) == before


def test_biometry_over_a_mask_it_reads_is_refused(capsys, tmp_path, manifest):
    mask = tmp_path / "scan_mask.png"
    before = snapshot(mask)
    code, _, err = run_cli(capsys, "biometry", "hc", "-d", f"csv:{manifest}", "-o", mask, "--overwrite")
    assert code == 2
    assert_one_line_error(err, str(mask), "is an input")
    assert snapshot(mask) == before


def test_explain_default_output_is_not_replaced(capsys, tmp_path, png, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output is IMAGE_STEM.cam.png in the current folder
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"brain": ["fetal brain"], "abdomen": ["fetal abdomen"]}))
    existing = tmp_path / "scan.cam.png"
    existing.write_bytes(b"an earlier map")
    code, _, err = run_cli(capsys, "explain", png, "-p", prompts)
    assert code == 2
    assert_one_line_error(err, str(existing), "already exists", "--overwrite")
    assert existing.read_bytes() == b"an earlier map"


# -- never over an existing file without --overwrite -----------------------------------------------------------
def test_embed_keeps_an_existing_output_then_replaces_it_with_overwrite(capsys, tmp_path, png):
    out = tmp_path / "emb.npz"
    out.write_bytes(b"precious results")
    code, _, err = run_cli(capsys, "embed", png, "--out", out)
    assert code == 2
    assert_one_line_error(err, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious results"

    code, _, err = run_cli(capsys, "embed", png, "--out", out, "--overwrite")
    assert code == 0, err
    assert np.load(out)["embeddings"].shape == (1, 128)


def test_probe_classify_refuses_an_existing_result_before_loading(capsys, tmp_path, manifest, no_model):
    out = tmp_path / "probe.json"
    out.write_text("{}")
    code, _, err = run_cli(capsys, "probe", "classify", "-d", f"csv:{manifest}", "-o", out, "--cache", "none")
    assert code == 2
    assert_one_line_error(err, str(out), "already exists")
    assert out.read_text() == "{}"


def test_probe_fewshot_folder_files_are_outputs_too(capsys, tmp_path, manifest, no_model):
    folder = tmp_path / "fs"
    folder.mkdir()
    (folder / "fewshot.json").write_text("earlier curve")
    code, _, err = run_cli(capsys, "probe", "fewshot", "-d", f"csv:{manifest}", "-o", folder, "--cache", "none")
    assert code == 2
    assert_one_line_error(err, str(folder / "fewshot.json"), "already exists")
    assert (folder / "fewshot.json").read_text() == "earlier curve"


def test_zeroshot_ga_refuses_an_existing_csv_before_decoding(capsys, tmp_path, score_map):
    side = tmp_path / "r.csv"
    side.write_text("source\nkeep me\n")
    code, _, err = run_cli(capsys, "zeroshot", "ga", "--scores", score_map, "-o", tmp_path / "r.json", "--n-bootstrap", "0")
    assert code == 2
    assert_one_line_error(err, str(side), "already exists")
    assert side.read_text() == "source\nkeep me\n"
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.png").exists()


# -- never two outputs on one path ---------------------------------------------------------------------------
@pytest.mark.parametrize("out_name, csv_name, plot_name", [
    ("r.json", "r.csv", "r.png"),  # the usual case keeps its names
    ("r.csv", "r.per-image.csv", "r.png"),
    ("r.png", "r.csv", "r.scatter.png"),
])
def test_zeroshot_ga_side_outputs_never_land_on_the_json(capsys, tmp_path, score_map, out_name, csv_name, plot_name):
    out = tmp_path / out_name
    code, _, err = run_cli(capsys, "zeroshot", "ga", "--scores", score_map, "-o", out, "--n-bootstrap", "0")
    assert code == 0, err
    saved = json.loads(out.read_text())  # OUT holds the JSON result, not the CSV or the plot
    assert saved["task"] == "zeroshot-ga"
    assert (saved["csv"], saved["plot"]) == (str(tmp_path / csv_name), str(tmp_path / plot_name))
    assert (tmp_path / csv_name).read_text().startswith("source,")
    assert (tmp_path / plot_name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zeroshot_ga_two_options_on_one_file_are_refused_before_loading(capsys, tmp_path, manifest, no_model):
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "zeroshot", "ga", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "-o", out, "--plot", out)
    assert code == 2
    assert_one_line_error(err, str(out), "two outputs", "--out", "--plot")
    assert not out.exists()


def test_two_outputs_through_a_symlinked_folder_are_one_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    with pytest.raises(OutputError, match="two outputs"):
        check_outputs({"--out": real / "a.json", "--csv": tmp_path / "alias" / "a.json"})


def test_a_hard_link_to_an_input_is_the_input(tmp_path, png):
    twin = tmp_path / "twin.png"
    os.link(png, twin)
    with pytest.raises(OutputError, match="is an input"):
        check_outputs({"--out": twin}, inputs=[png], overwrite=True)


# -- unwritable destinations fail at once --------------------------------------------------------------------
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_fails_before_the_model_loads(capsys, tmp_path, png, no_model):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "embed", png, "--out", locked / "sub" / "emb.npz")
    finally:
        locked.chmod(0o755)
    assert code == 2
    assert_one_line_error(err, "emb.npz", "not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("reason", [errno.EROFS, errno.EACCES])
def test_unwritable_folder_fails_before_the_model_loads(capsys, monkeypatch, tmp_path, png, no_model, reason):
    """The same refusal for a read-only mount or a permission problem, simulated so it also runs as root."""
    import tempfile

    real_mkstemp = tempfile.mkstemp
    locked = tmp_path / "locked"
    locked.mkdir()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir) == os.path.realpath(locked):
            raise OSError(reason, os.strerror(reason), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,pixel_spacing_mm,hc_mm\n{png.name},0.2,180\n")
    code, _, err = run_cli(capsys, "zeroshot", "ga", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "-o", locked / "r.json")
    assert code == 2
    assert_one_line_error(err, str(locked / "r.json"), "not writable", os.strerror(reason))


def test_a_file_where_the_folder_should_be_fails_at_once(capsys, tmp_path, png, no_model):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "embed", png, "--out", blocker / "emb.npz")
    assert code == 2
    assert_one_line_error(err, str(blocker), "is a file")


def test_disk_full_during_a_write_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    out.write_text("the previous report")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError) as info:
        write_text_atomic(out, "the new report")
    assert str(info.value).startswith(f"{out}: write failed") and "No space left" in str(info.value)
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_disk_full_through_the_cli_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "t.npz"
    code, _, err = run_cli(capsys, "embed-text", "fetal brain", "--out", out)
    assert code == 2
    assert_one_line_error(err, str(out), "No space left on device")
    assert list(tmp_path.iterdir()) == []


# -- run folders keep their reuse ----------------------------------------------------------------------------
def test_benchmark_reuses_its_own_folder_but_not_a_foreign_one(capsys, tmp_path, monkeypatch):
    import fetalclip.bench.harness

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached("the guard let the run start")

    monkeypatch.setattr(fetalclip.bench.harness, "run_benchmark", reached)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "results.md").write_text("my own notes")
    code, _, err = run_cli(capsys, "benchmark", "-m", "fetalclip-tiny", "-t", "zeroshot-planes", "-o", foreign)
    assert code == 2
    assert_one_line_error(err, str(foreign / "results.md"), "not a previous run", "--overwrite")
    assert (foreign / "results.md").read_text() == "my own notes"

    earlier = tmp_path / "bench"
    (earlier / "store").mkdir(parents=True)
    (earlier / "results.md").write_text("an earlier table")
    code, _, err = run_cli(capsys, "benchmark", "-m", "fetalclip-tiny", "-t", "zeroshot-planes", "-o", earlier)
    assert code == 1 and "Reached: the guard let the run start" in err  # a resume passes the guard


def test_sim_rerenders_its_own_export_but_keeps_a_foreign_manifest(capsys, tmp_path):
    out = tmp_path / "phantom"
    args = ["sim", "--n", "2", "--size", "64", "--overlay", "0", "-o", out]
    assert run_cli(capsys, *args)[0] == 0
    first = snapshot(out / "manifest.csv")
    assert run_cli(capsys, *args)[0] == 0  # re-rendered in place: same seed, same files
    assert snapshot(out / "manifest.csv") == first

    foreign = tmp_path / "study"
    foreign.mkdir()
    (foreign / "manifest.csv").write_text("path,label\nmine.png,brain\n")
    code, _, err = run_cli(capsys, "sim", "--n", "2", "--size", "64", "-o", foreign)
    assert code == 2
    assert_one_line_error(err, str(foreign / "manifest.csv"), "--overwrite")
    assert (foreign / "manifest.csv").read_text() == "path,label\nmine.png,brain\n"


def test_run_folder_rules(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "report.html").write_text("x")
    spec = RunFolder(folder, writes=("report.html",), marks=("store",))
    with pytest.raises(OutputError, match="not a previous run"):
        check_outputs(folders=[spec])
    check_outputs(folders=[spec], overwrite=True)
    (folder / "store").mkdir()
    check_outputs(folders=[spec])  # marked: a resume
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="names a file"):
        check_outputs(folders=[RunFolder(tmp_path / "file", writes=(), marks=())])


def test_demo_reruns_into_its_folder_but_not_over_foreign_results(capsys, tmp_path, monkeypatch):
    import fetalclip.demo

    def reached(*args, **kwargs):
        raise RuntimeError("the guard let the demo start")

    monkeypatch.setattr(fetalclip.demo, "run_demo", reached)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.html").write_text("<p>my report</p>")
    code, _, err = run_cli(capsys, "demo", "-o", foreign, "--minutes", "1")
    assert code == 2
    assert_one_line_error(err, str(foreign / "report.html"), "--overwrite")
    assert (foreign / "report.html").read_text() == "<p>my report</p>"

    earlier = tmp_path / "demo"
    (earlier / "data" / "train").mkdir(parents=True)  # an interrupted demo: only its first phantom set begun
    (earlier / "report.html").write_text("stale")
    code, _, err = run_cli(capsys, "demo", "-o", earlier, "--minutes", "1")
    assert code == 1 and "the guard let the demo start" in err
