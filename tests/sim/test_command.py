"""``fetalclip sim`` end to end, in-process."""

from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.data.captions import FINDING_PHRASES
from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError

runner = CliRunner()


def test_sim_command_writes_a_readable_set(tmp_path):
    out = tmp_path / "phantom"
    result = runner.invoke(app, ["sim", "--n", "8", "--out", str(out), "--seed", "3", "--size", "96"])
    assert result.exit_code == 0, result.output
    assert "trans-thalamic" in result.output and f"csv:{out / 'manifest.csv'}" in result.output
    dataset = open_dataset(f"csv:{out / 'manifest.csv'}")
    assert len(dataset) == 8 and dataset[0]["image"].shape == (72, 96)
    assert (out / "sim.json").is_file() and len(list((out / "masks").glob("*.png"))) == 8


def test_sim_command_rejects_unknown_classes(tmp_path):
    result = runner.invoke(app, ["sim", "--n", "2", "--out", str(tmp_path / "x"), "--classes", "brain,kidney"])
    assert isinstance(result.exception, FetalCLIPError) and "kidney" in str(result.exception)
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_sim_command_renders_cine_clips_and_defect_captions(tmp_path):
    out = tmp_path / "cine"
    result = runner.invoke(app, ["sim", "--cine", "--n", "4", "--frames", "3", "--size", "96", "--out", str(out),
                                 "--defect", "hlhs"])
    assert result.exit_code == 0, result.output
    assert "hlhs" in result.output and "3 frames each" in result.output
    dataset = open_dataset(f"csv:{out / 'manifest.csv'}")
    assert sorted(record["label"] for record in dataset.records) == ["chd", "chd", "normal", "normal"]
    assert all(len(list((out / "clips" / f"{i:06d}").glob("*.png"))) == 3 for i in range(4))
    images = tmp_path / "images"
    result = runner.invoke(app, ["sim", "--n", "12", "--out", str(images), "--size", "96", "--chd", "1",
                                 "--classes", "thorax"])
    assert result.exit_code == 0, result.output
    records = open_dataset(f"csv:{images / 'manifest.csv'}").records
    assert all(record["finding"] in ("hlhs", "vsd") for record in records)
    assert all(r["caption"].endswith(tuple(FINDING_PHRASES[r["finding"]])) for r in records)


def test_sim_command_renders_sweeps_with_their_best_frame(tmp_path):
    import csv

    import numpy as np
    from PIL import Image

    from fetalclip.sim.sweep import SweepConfig, render_sweep

    out = tmp_path / "sweeps"
    result = runner.invoke(app, ["sim", "--sweep", "--n", "2", "--frames", "6", "--size", "96", "--seed", "4",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    expected = render_sweep(SweepConfig(seed=4, size=96, frames=6), 1)
    assert [r["label"] for r in rows] == ["brain", "brain"] and int(rows[1]["best_frame"]) == expected.best_frame
    saved = np.asarray(Image.open(out / rows[1]["path"] / f"{expected.best_frame:03d}.png"))
    assert np.array_equal(saved, expected.frames[expected.best_frame])
    clash = runner.invoke(app, ["sim", "--sweep", "--cine", "--n", "2", "--out", str(tmp_path / "x")])
    assert isinstance(clash.exception, FetalCLIPError) and "exclude" in str(clash.exception)
