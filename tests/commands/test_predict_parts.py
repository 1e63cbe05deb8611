"""``predict`` over an archive: resumable parts (``--parts``) and ``torchrun -m fetalclip predict`` with two ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fetalclip.cli import app


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from PIL import Image

    from fetalclip.sim.dataset import render_sample
    from fetalclip.sim.render import SimConfig

    folder = tmp_path_factory.mktemp("scans")
    for i in range(5):
        Image.fromarray(render_sample(i, SimConfig(size=96))["image"]).save(folder / f"scan{i}.png")
    return folder


def _predict(*args):
    result = CliRunner().invoke(app, ["predict", *map(str, args), "--model", "fetalclip-tiny", "--view", "brain", "--spacing", "0.3"])
    assert result.exit_code == 0, result.output
    return result.output


def test_parts_give_the_plain_answers_and_resume(tmp_path, scans, one_thread, cli_exit_code, capsys):
    _predict(scans, "--out", tmp_path / "plain.json")
    output = _predict(scans, "--out", tmp_path / "parts.json", "--parts", tmp_path / "p", "--chunk-size", "2")
    assert "3 parts computed" in output and "5 scans answered" in output
    plain, parted = (json.loads((tmp_path / name).read_text()) for name in ("plain.json", "parts.json"))
    assert parted["predictions"] == plain["predictions"]
    again = _predict(scans, "--out", tmp_path / "parts.json", "--parts", tmp_path / "p", "--chunk-size", "2", "--overwrite")
    assert "0 parts computed" in again  # every part was there: nothing recomputed
    assert json.loads((tmp_path / "parts.json").read_text())["predictions"] == plain["predictions"]
    code = cli_exit_code(["predict", str(scans), "--model", "fetalclip-tiny", "--out", str(tmp_path / "x.json"),
                          "--parts", str(tmp_path / "p"), "--chunk-size", "3"])
    assert code == 2 and "parts were made by a different run" in capsys.readouterr().err


def test_torchrun_two_processes_give_the_single_process_answers(tmp_path, scans):
    _predict(scans, "--out", tmp_path / "single.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fetalclip",
               "predict", str(scans), "--model", "fetalclip-tiny", "--view", "brain", "--spacing", "0.3",
               "--out", str(tmp_path / "two.json"), "--chunk-size", "1"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    single, two = (json.loads((tmp_path / name).read_text()) for name in ("single.json", "two.json"))
    assert [a["source"] for a in two["predictions"]] == [a["source"] for a in single["predictions"]]
    assert two["predictions"] == single["predictions"]
    assert len(list((tmp_path / "two.json.parts").glob("part-*.json"))) == 5
