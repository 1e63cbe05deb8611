"""``fetalclip sim`` end to end, in-process."""

from typer.testing import CliRunner

from fetalclip.cli import app
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
