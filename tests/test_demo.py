"""The demo: its plan, its verdict logic, a fair baseline, and a shortened end-to-end run through the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from fetalclip.bench.harness import BenchmarkRun, ModelRef
from fetalclip.bench.tasks import default_registry, metric
from fetalclip.demo import (
    LOSS,
    MISSING,
    PRETRAINED_LABEL,
    RANDOM_LABEL,
    TABLE_TASKS,
    TIE,
    WIN,
    DemoResult,
    compare_models,
    judge,
    plan_demo,
)
from fetalclip.errors import FetalCLIPError


def test_plan_scales_with_the_budget_and_keeps_sets_apart():
    short, default, long = plan_demo(1), plan_demo(8), plan_demo(20)
    assert short.steps < default.steps < long.steps
    assert short.train_images <= default.train_images <= long.train_images
    assert short.planes_images < default.planes_images and short.head_images < default.head_images
    assert len(set(default.seeds.values())) == 5  # every set rendered from its own seed
    assert len(set(plan_demo(8, seed=1).seeds.values()) | set(default.seeds.values())) == 10
    assert short.clips < default.clips and short.clip_frames < default.clip_frames
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(FetalCLIPError, match="--minutes"):
            plan_demo(bad)


def _run(values: dict[str, tuple]) -> BenchmarkRun:
    """A benchmark run holding, per task, (random value, pretrained value) or ((value, ci), (value, ci))."""
    registry = default_registry()
    entries = []
    for task, pair in values.items():
        for label, cell in zip((RANDOM_LABEL, PRETRAINED_LABEL), pair):
            value, ci = cell if isinstance(cell, tuple) else (cell, None)
            primary = registry.get(task).primary
            done = value is not None
            entries.append({"model": label, "task": task, "status": "done" if done else "failed",
                            "metrics": {primary: metric(value, ci)} if done else {}})
    models = [ModelRef(RANDOM_LABEL, "fetalclip-tiny"), ModelRef(PRETRAINED_LABEL, "run/model")]
    return BenchmarkRun(models, list(values), entries, [], {}, registry)


def test_outcome_is_ahead_or_behind_only_outside_both_intervals():
    assert judge(60.0, (55.0, 66.0), 5.5, (3.9, 7.0), True) == WIN
    assert judge(5.5, (3.9, 7.0), 60.0, (55.0, 66.0), True) == LOSS
    # The failing run: 98.16 vs 98.30 Dice, 2.56 vs 2.43 mm, far inside the intervals: ties, not losses.
    assert judge(2.56, (1.59, 3.94), 2.43, (1.80, 3.11), False) == TIE
    assert judge(2.06, (1.37, 2.89), 2.43, (1.80, 3.12), False) == TIE
    # Lower is better: a clearly smaller error is ahead, a clearly larger one behind.
    assert judge(1.0, (0.8, 1.2), 3.0, (2.5, 3.5), False) == WIN
    assert judge(3.0, (2.5, 3.5), 1.0, (0.8, 1.2), False) == LOSS
    # One value inside the other's interval is a tie even when the other is outside.
    assert judge(37.7, (31.4, 44.1), 32.0, (26.0, 38.0), True) == TIE
    # Without an interval nothing is told apart from noise; without a value there is nothing to compare.
    assert judge(98.4, None, 98.3, None, True) == TIE
    assert judge(98.4, (98.0, 98.8), 98.3, None, True) == TIE
    for missing in (None, math.nan):
        assert judge(missing, None, 1.0, (0.5, 1.5), True) == MISSING


def test_verdict_rests_on_the_tasks_that_read_what_pretraining_learns():
    clear_win = ((20.0, (15.0, 25.0)), (60.0, (55.0, 65.0)))
    tie = ((30.0, (25.0, 35.0)), (32.0, (27.0, 37.0)))
    loss = ((40.0, (35.0, 45.0)), (20.0, (15.0, 25.0)))
    seg_loss = ((99.0, (98.9, 99.1)), (90.0, (89.0, 91.0)))
    passing = _run({"zeroshot-planes": clear_win, "zeroshot-ga": tie, "probe-planes": clear_win, "clips": loss,
                    "segment-hc": seg_loss, "biometry-hc": ((2.4, (1.8, 3.1)), (2.6, (1.6, 3.9)))})
    result = DemoResult(plan_demo(1), compare_models(passing), "", {})
    outcomes = {c.task: c.outcome for c in result.comparisons}
    assert outcomes == {"zeroshot-planes": WIN, "zeroshot-ga": TIE, "probe-planes": WIN, "clips": LOSS,
                        "segment-hc": LOSS, "biometry-hc": TIE}
    assert result.passed and result.failing_tasks() == []  # clips and segmentation are shown, not judged
    assert {c.task for c in result.comparisons if c.requirement} == {"zeroshot-planes", "zeroshot-ga", "probe-planes"}
    assert all(c.reason for c in result.comparisons)
    # A tie where a win is required, a loss where no loss is allowed, a failed cell: each fails the demo.
    for task, cells in (("zeroshot-planes", tie), ("probe-planes", tie), ("zeroshot-ga", loss),
                        ("zeroshot-planes", (20.0, None))):
        values = {"zeroshot-planes": clear_win, "zeroshot-ga": tie, "probe-planes": clear_win, task: cells}
        failing = DemoResult(plan_demo(1), compare_models(_run(values)), "", {})
        assert not failing.passed and failing.failing_tasks() == [task], task
    assert not DemoResult(plan_demo(1), [], "", {}).passed  # nothing judged is not a pass


def test_random_init_row_is_the_model_pretraining_starts_from():
    from fetalclip.models import create_model
    from fetalclip.train.modeling import build_model

    baseline, start = create_model("fetalclip-tiny", seed=3), build_model("fetalclip-tiny", seed=3)
    for key, value in baseline.clip.state_dict().items():
        torch.testing.assert_close(start.clip.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_short_demo_runs_the_whole_chain(tmp_path, one_thread, render_in_chromium):
    """About a minute: phantom -> pretraining -> benchmark of both models -> report, through the command."""
    from typer.testing import CliRunner

    from fetalclip.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--minutes", "1", "--no-check"])
    assert result.exit_code == 0, result.output
    for name in ("report.html", "results.json", "results.csv", "results.md", "demo.json"):
        assert (out / name).is_file(), name
    assert "report: " in result.output and str((out / "report.html").resolve()) in result.output
    summary = json.loads((out / "demo.json").read_text())
    assert [c["task"] for c in summary["comparisons"]] == list(TABLE_TASKS)
    values = {c["task"]: c for c in summary["comparisons"]}
    assert all(c["random_init"] is not None and c["pretrained"] is not None for c in summary["comparisons"])
    # Even a minute of pretraining teaches the views: zero-shot planes is ahead outside both intervals.
    assert values["zeroshot-planes"]["outcome"] == WIN
    assert not [c["task"] for c in summary["comparisons"] if c["requirement"] and c["outcome"] == LOSS]
    assert summary["passed"] == all(c["passes"] for c in summary["comparisons"])
    assert "verdict (ahead / behind only when" in result.output
    # Evaluation patients are never training patients.
    def patients(name):
        with (out / "data" / name / "manifest.csv").open() as handle:
            return {row["patient"] for row in csv.DictReader(handle)}
    trained_on = patients("train") | patients("train-heads")
    assert trained_on and not trained_on & (patients("planes") | patients("heads") | patients("clips"))
    # The report names both rows and embeds its figures.
    html = (out / "report.html").read_text()
    assert RANDOM_LABEL in html and PRETRAINED_LABEL in html and html.count("data:image/png;base64,") >= 4
    # A rerun reuses the phantom, the pretrained model and every benchmark cell.
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--minutes", "1", "--no-check"])
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output and "stored result reused" in again.output
    # The report a user opens: no script errors, every figure decoded, something drawn.
    body, console, pixels = render_in_chromium(out / "report.html")
    assert console == [] and 'data-broken-images="0"' in body and pixels.std() > 10, (console, body)


@pytest.mark.slow
def test_short_demo_verdict_holds_with_another_seed(tmp_path, one_thread):
    """Another seed renders other patients, ages and speckle and starts from other weights; the short run's
    verdict on what it can show must come out as with seed 0 (test above): zero-shot planes ahead outside
    both intervals, and no judged task behind."""
    from typer.testing import CliRunner

    from fetalclip.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--minutes", "1", "--seed", "1", "--no-check"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["plan"]["seed"] == 1
    outcomes = {c["task"]: c["outcome"] for c in summary["comparisons"] if c["requirement"]}
    assert outcomes["zeroshot-planes"] == WIN and LOSS not in outcomes.values(), outcomes


def test_pretraining_is_reused_resumed_or_replaced_by_plan(tmp_path, one_thread):
    from fetalclip.demo import DemoPlan, _pretrain, _write_sets

    plan = DemoPlan(minutes=1, steps=2, train_images=8, train_head_images=4, planes_images=6, head_images=4,
                    batch_size=4, size=96, clips=2, clip_frames=2)
    lines: list[str] = []
    specs = _write_sets(plan, tmp_path / "data", lines.append, progress=False)
    assert _write_sets(plan, tmp_path / "data", lines.append, progress=False) == specs
    assert sum("reusing" in line for line in lines) == 5  # second pass renders nothing
    # A set rendered by another version of the renderer is rendered again, not reused.
    for info in (tmp_path / "data" / "planes" / "sim.json", tmp_path / "data" / "clips" / "cine.json"):
        info.write_text(json.dumps({**json.loads(info.read_text()), "renderer": -1}))
    lines.clear()
    _write_sets(plan, tmp_path / "data", lines.append, progress=False)
    assert sorted(line.split(":")[0] for line in lines if "reusing" not in line) == ["phantom clips", "phantom planes"]
    train_specs = [specs["train"], specs["train-heads"]]
    run = tmp_path / "run"
    model_dir, losses = _pretrain(plan, train_specs, run, lines.append, progress=False)
    assert (model_dir / "model.safetensors").is_file() and losses is not None
    assert _pretrain(plan, train_specs, run, lines.append, progress=False) == (model_dir, None)
    (model_dir / "model.safetensors").unlink()  # trained to the end but the model is gone: trained again
    _pretrain(plan, train_specs, run, lines.append, progress=False)
    assert "without its model" in lines[-3] and (model_dir / "model.safetensors").is_file()
    longer = DemoPlan(**{**plan.__dict__, "steps": 4})
    for folder in (run / "model", *sorted((run / "checkpoints").iterdir())[1:]):  # killed after step 2 of 4
        shutil.rmtree(folder)
    (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "steps": 4}))
    _pretrain(longer, train_specs, run, lines.append, progress=False)
    assert "(resuming)" in lines[-2] and (model_dir / "model.safetensors").is_file()
    longer = DemoPlan(**{**plan.__dict__, "steps": 3})
    _pretrain(longer, train_specs, run, lines.append, progress=False)
    assert any("another plan" in line for line in lines)
    assert json.loads((run / "config.json").read_text())["steps"] == 3
