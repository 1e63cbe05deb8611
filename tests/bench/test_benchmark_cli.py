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


# Options that keep each task on the phantom sets (``phantom_specs``) to a second or two.
FAST = [
    "probe-planes.folds=2", "probe-planes.epochs=3", "probe-brain.folds=2", "probe-brain.epochs=3",
    "fewshot-planes.sizes=[1,2]", "fewshot-planes.support_sets=1", "fewshot-planes.epochs=3",
    "segment-hc.size=32", "segment-hc.channels=[8,8,8,8,8]", "segment-hc.epochs=1", "embedding-map.max_images=24",
    'zeroshot-ga.templates=["the fetal head at {weeks} weeks and {days} days, {spacing} mm per pixel"]',
]


@pytest.mark.slow
def test_benchmark_two_models_on_every_task_then_rerun_reuses_everything(tmp_path, phantom_specs, render_in_chromium):
    import re

    from fetalclip.models import create_model

    checkpoint = create_model("fetalclip-tiny", seed=1).save(tmp_path / "tiny-seed1")
    out = tmp_path / "bench"
    args = ["benchmark", "--model", "random=fetalclip-tiny", "--model", str(checkpoint), "--out", str(out),
            "--cams-per-class", "1", "--bootstrap", "100", "--threads", "1"]
    for key, spec in phantom_specs.items():
        args += ["--data", f"{key}={spec}"]
    for option in FAST:
        args += ["-O", option]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "skip clips: no data: pass --data clips=SPEC" in first.output
    assert "20 computed, 0 reused" in first.output and "failed" not in first.output
    for name in ("results.json", "results.csv", "results.md", "report.html"):
        assert (out / name).is_file()
    document = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in document["models"]] == ["random", "tiny-seed1"]
    assert document["models"][0]["sha256"] != document["models"][1]["sha256"]
    assert all(r["status"] == "done" for r in document["results"]) and len(document["results"]) == 20
    probe = next(r for r in document["results"] if r["task"] == "probe-planes")
    assert probe["options"]["folds"] == 2 and probe["options"]["runs"] == 1  # given, and the CPU default
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert header.count("|") == 11  # model + 9 columns (clips has no data)
    row = next(line for line in table.splitlines() if line.startswith("| random |"))
    cells = [cell.strip() for cell in row.split("|")[2:-1]]
    # Every primary metric is there; HC error may not be: a one-epoch decoder often segments no head to fit.
    # The phantom records no scanner machine, so transfer-planes is skipped (its reason is in the run's output).
    assert all(cell != "—" and cell != "failed" for cell in cells[:-2]) and "failed" not in cells[-2] and cells[-1] == "—"
    assert "skipped (transfer-planes:" in first.output
    assert "FetalCLIP *(published)* | 97.27 | 70.15 | 83.42 | 94.73 | 82.01" in table
    page = (out / "report.html").read_text()
    for section in ("Gestational age against the WHO growth chart", "Confusion matrices", "Few-shot curves",
                    "Image embeddings", "Class-activation maps"):
        assert f"<h2>{section}</h2>" in page
    # GA scatter x2, confusion x8 (zero-shot and probe, planes and brain), one few-shot plot, maps x2, CAMs x2
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 15

    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "0 computed, 20 reused" in second.output
    third = CliRunner().invoke(app, args + ["-O", "probe-planes.epochs=4"])  # one option changed: one task recomputed
    assert third.exit_code == 0, third.output
    assert "2 computed, 18 reused" in third.output
    # The report the command wrote opens in a browser: no script errors, all 15 figures decoded, not blank.
    body, console, pixels = render_in_chromium(out / "report.html")
    assert console == [] and 'data-images="15"' in body and 'data-broken-images="0"' in body, (console, body)
    assert pixels.std() > 10


def test_benchmark_rejects_unknown_task_options(tmp_path, planes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", "fetalclip-tiny", "--data", f"planes=folder:{planes}", "--out", str(tmp_path / "o"),
              "-O", "probe-planes.rnus=5"])
    assert exit_info.value.code == 2
    assert "task probe-planes: unknown option(s) rnus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "--model", "fetalclip-tiny", "--out", str(tmp_path / "o"), "-O", "probe-planes:runs=5"])
    assert "expected TASK.NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_benchmark_without_baseline_weights_fails_clearly(tmp_path, planes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", "fetalclip-tiny", "--model", "clip-vit-l14", "--data", f"planes=folder:{planes}",
              "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: clip-vit-l14: the ViT-L-14 'openai' weights are not on this machine")
    assert not (tmp_path / "o" / "results.json").exists()


def test_benchmark_held_out_of_needs_a_run_that_held_patients_out(tmp_path, planes, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": [f"folder:{planes}"], "seed": 0, "holdout_fraction": 0.0}))
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", "fetalclip-tiny", "--data", f"planes=folder:{planes}", "--out", str(tmp_path / "o"),
              "--held-out-of", str(run)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {run}: the run held no patient out")
    assert not (tmp_path / "o" / "results.json").exists()


def test_list_tasks():
    result = CliRunner().invoke(app, ["benchmark", "--model", "x", "--list-tasks"])
    assert result.exit_code == 0 and "biometry-hc" in result.output and "data=seg" in result.output
