"""The evaluation contract itself: options checked once, one metric shape, valid JSON, and one composition.

The last tests hold the contract's promise: a task's ``run`` is what the CLI, the benchmark and a training hook
report, value for value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.result import SCHEMA_VERSION, Metric, Task, TaskOptions, TaskResult, percent


@dataclass(frozen=True)
class _Options(TaskOptions):
    TASK: ClassVar[str] = "toy"
    PUBLISHED: ClassVar[dict] = {"runs": 5}

    runs: int = 1
    lr: float = 3e-4
    sizes: tuple[int, ...] = (2, 4)
    prompts: str | None = None

    def check(self) -> None:
        if self.runs < 1:
            raise FetalCLIPError(f"task {self.TASK}: runs must be >= 1")


def test_options_have_cpu_and_published_constructors_and_are_checked_once():
    assert _Options.cpu().runs == 1 and _Options.published().runs == 5 and _Options.published().lr == 3e-4
    assert _Options.cpu().updated({"sizes": [8, 16]}).sizes == (8, 16)  # lists become values (tuples)
    assert _Options.cpu().updated({"lr": 1}).to_dict() == {"runs": 1, "lr": 1.0, "sizes": [2, 4], "prompts": None}
    with pytest.raises(FetalCLIPError, match=r"task toy: unknown option\(s\) rnus; known: lr, prompts, runs, sizes"):
        _Options.cpu().updated({"rnus": 3})
    with pytest.raises(FetalCLIPError, match="option runs = 'two'"):
        _Options(runs="two")
    with pytest.raises(FetalCLIPError, match="option runs = True"):  # a bool is not a count
        _Options(runs=True)
    with pytest.raises(FetalCLIPError, match="runs must be >= 1"):
        _Options.cpu().updated({"runs": 0})


def test_metric_and_result_are_valid_json_with_a_schema_version():
    nothing = Metric(float("nan"), ci=(float("nan"), 3.0), n=0)
    assert nothing.value is None and nothing.ci is None
    assert percent(0.25) == 25.0 and percent(None) is None and percent(float("nan")) is None
    result = TaskResult("toy", {"f1": Metric(91.5, ci=(88, 94), n=10), "empty": nothing},
                        rows=[{"source": "a.png", "score": float("inf")}], details={"per_class": {"x": float("nan")}})
    text = json.dumps(result.to_dict(), allow_nan=False)  # raises on a bare NaN
    back = json.loads(text)
    assert back["schema_version"] == SCHEMA_VERSION and back["metrics"]["f1"] == {"value": 91.5, "ci": [88.0, 94.0], "unit": "%", "n": 10}
    assert back["rows"] == [{"source": "a.png", "score": None}] and back["details"]["per_class"]["x"] is None
    assert Metric.from_dict(back["metrics"]["f1"]) == result.metrics["f1"]
    named = result.named_metrics("zeroshot/toy")
    assert named["zeroshot/toy/f1"] == 91.5 and math.isnan(named["zeroshot/toy/empty"])


def test_a_task_takes_its_options_class_or_a_mapping_only():
    class Toy(Task):
        name = "toy"
        Options = _Options

        def run(self, model, dataset, cache=None, progress=True, *, seed=0, n_bootstrap=10_000, workdir=None, data_digest=None):
            return TaskResult(self.name)

    assert Toy().options == _Options.cpu() and Toy.published().options.runs == 5 and Toy({"runs": 2}).options.runs == 2
    with pytest.raises(FetalCLIPError, match="options must be _Options"):
        Toy(options=object())


@pytest.fixture(scope="module")
def planes_manifest(tmp_path_factory):
    from fetalclip.sim.dataset import parse_sim_spec, write_phantom

    n, config = parse_sim_spec("18,size=96,per_patient=3")
    return write_phantom(n, config, tmp_path_factory.mktemp("contract"))["spec"]


def test_zero_shot_run_is_what_the_cli_the_benchmark_and_a_hook_report(tmp_path, tiny_model, planes_manifest):
    from fetalclip.bench.tasks import TaskContext, default_registry
    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.zeroshot_tasks import ZeroShotPlanes
    from fetalclip.train.hooks import ZeroShotHook

    dataset = open_dataset(planes_manifest)
    direct = ZeroShotPlanes().run(tiny_model, dataset, progress=False, n_bootstrap=50)
    cell = default_registry().get("zeroshot-planes").fn(tiny_model, dataset, TaskContext(tmp_path / "cache", n_bootstrap=50, progress=False))
    assert cell["metrics"] == {name: m.to_dict() for name, m in direct.metrics.items()}  # benchmark == task, value for value

    out = tmp_path / "planes.json"
    result = CliRunner().invoke(app, ["zeroshot", "planes", "-m", "fetalclip-tiny", "-d", planes_manifest,
                                      "--n-bootstrap", "50", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["metrics"] == cell["metrics"] and saved["rows"] == direct.rows  # CLI == task

    logged = ZeroShotHook("planes", dataset, max_samples=None)(tiny_model, step=0)
    unbootstrapped = ZeroShotPlanes().run(tiny_model, dataset, progress=False, n_bootstrap=0)
    assert logged["zeroshot/planes/f1"] == unbootstrapped.metrics["macro_f1"].value == direct.metrics["macro_f1"].value
    assert logged["zeroshot/planes/n"] == direct.metrics["macro_f1"].n


def test_ga_run_and_redecoded_score_map_agree(tmp_path, tiny_model, hc18_dir):
    """``zeroshot ga --scores`` judges a saved map with the same task a model run uses."""
    import csv

    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.zeroshot_tasks import ZeroShotGA

    rows = list(csv.DictReader((hc18_dir / "training_set_pixel_size_and_HC.csv").open()))[:4]
    manifest = tmp_path / "hc.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "pixel_spacing_mm", "hc_mm"])
        for row in rows:
            writer.writerow([hc18_dir / "training_set" / row["filename"], "brain", row["pixel size(mm)"], row["head circumference (mm)"]])
    task = ZeroShotGA({"templates": ["Fetal head at {weeks} weeks and {days} days, {spacing} mm per pixel."]})
    direct = task.run(tiny_model, open_dataset(f"csv:{manifest}"), progress=False, n_bootstrap=20)
    scores = tmp_path / "s.npz"
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps(list(task.options.templates)))
    made = CliRunner().invoke(app, ["zeroshot", "ga", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "--templates", str(templates),
                                    "--save-scores", str(scores), "--n-bootstrap", "20", "-o", str(tmp_path / "a.json")])
    assert made.exit_code == 0, made.output
    redo = CliRunner().invoke(app, ["zeroshot", "ga", "--scores", str(scores), "--n-bootstrap", "20", "-o", str(tmp_path / "b.json")])
    assert redo.exit_code == 0, redo.output
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    expected = {name: m.to_dict() for name, m in direct.metrics.items()}
    assert first["metrics"] == second["metrics"] == expected
    assert [r["pred_ga_days"] for r in second["rows"]] == [r["pred_ga_days"] for r in direct.rows]


def test_whole_number_options_share_one_check_and_one_message():
    from fetalclip.tasks.probe_tasks import FewShotPlanes
    from fetalclip.tasks.zeroshot_tasks import ZeroShotGA, ZeroShotPlanes

    for task, option in ((ZeroShotPlanes, "batch_size"), (ZeroShotGA, "top_k"), (FewShotPlanes, "support_sets")):
        for bad in (0, -2):
            with pytest.raises(FetalCLIPError, match=rf"^task {task.name}: option {option} = {bad!r} must be a whole number >= 1$"):
                task({option: bad})
