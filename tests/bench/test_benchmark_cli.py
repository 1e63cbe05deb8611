"""``fetalclip benchmark`` end to end on small synthetic data: two models, skips, outputs, and a resumed rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app, main


@pytest.fixture
def planes(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("brain", "femur"):
        (tmp_path / "planes" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(tmp_path / "planes" / label / f"{i}.png")
    return tmp_path / "planes"


@pytest.mark.slow
def test_benchmark_two_models_then_rerun_reuses_everything(tmp_path, planes):
    from fetalclip.models import create_model

    checkpoint = create_model("fetalclip-tiny", seed=1).save(tmp_path / "tiny-seed1")
    out = tmp_path / "bench"
    args = ["benchmark", "--model", "random=fetalclip-tiny", "--model", str(checkpoint), "--data", f"planes=folder:{planes}",
            "--tasks", "zeroshot-planes,zeroshot-ga,embedding-map,cams", "--cams-per-class", "1", "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "skip zeroshot-ga: no data: pass --data ga=SPEC" in first.output
    assert "random / zeroshot-planes: skipped (zeroshot-planes: needs fetalclip.tasks.zeroshot (issue 5)" in first.output
    assert "4 computed, 0 reused" in first.output
    assert "| random |" in first.output and "| tiny-seed1 |" in first.output and "FetalCLIP *(published)* | 97.27" in first.output
    for name in ("results.json", "results.csv", "results.md", "report.html"):
        assert (out / name).is_file()
    document = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in document["models"]] == ["random", "tiny-seed1"]
    assert document["models"][0]["sha256"] != document["models"][1]["sha256"]
    assert {(r["model"], r["task"]) for r in document["results"]} == {
        (m, t) for m in ("random", "tiny-seed1") for t in ("embedding-map", "cams")}

    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "0 computed, 4 reused" in second.output


def test_benchmark_without_baseline_weights_fails_clearly(tmp_path, planes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", "fetalclip-tiny", "--model", "clip-vit-l14", "--data", f"planes=folder:{planes}",
              "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: clip-vit-l14: the ViT-L-14 'openai' weights are not on this machine")
    assert not (tmp_path / "o" / "results.json").exists()


def test_list_tasks():
    result = CliRunner().invoke(app, ["benchmark", "--model", "x", "--list-tasks"])
    assert result.exit_code == 0 and "biometry-hc" in result.output and "data=seg" in result.output
