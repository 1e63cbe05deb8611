"""The harness with counting fake tasks: resume after interruption, fingerprints, skips, failures, checksums."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from fetalclip.bench.harness import (
    ModelRef,
    manifest_checksum,
    model_checksum,
    parse_data_args,
    parse_model_args,
    run_benchmark,
)
from fetalclip.bench.results import ResultsStore
from fetalclip.bench.tasks import TaskRegistry, TaskSpec, TaskUnavailable, metric
from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError


@pytest.fixture
def planes_dir(tmp_path):
    root = tmp_path / "planes"
    rng = np.random.default_rng(0)
    for label in ("brain", "femur"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


class Counter:
    """Fake tasks that count their calls and can simulate a kill after a given number of calls."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[tuple[str, str]] = []
        self.interrupt_at = interrupt_at
        self.loads: list[str] = []

    def task(self, name: str):
        def run(model, dataset, context):
            self.calls.append((context.model_label, name))
            if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
                raise KeyboardInterrupt  # what Ctrl-C or a killed job looks like mid-task
            return {"metrics": {"score": metric(len(dataset) + context.seed, [0.0, 1.0], n=len(dataset))}, "details": {}}

        return run

    def loader(self, spec, **kwargs):
        self.loads.append(spec)
        return object()

    def registry(self, **versions) -> TaskRegistry:
        return TaskRegistry([
            TaskSpec("t1", "planes", "T1", "score", self.task("t1"), version=versions.get("t1", 1)),
            TaskSpec("t2", "planes", "T2", "score", self.task("t2"), version=versions.get("t2", 1)),
            TaskSpec("t3", "ga", "T3", "score", self.task("t3")),
        ])


MODELS = [ModelRef("a", "fetalclip-tiny"), ModelRef("b", "fetalclip-vit-b16")]


def _run(counter, planes_dir, out, registry=None, **kwargs):
    lines: list[str] = []
    run = run_benchmark(
        MODELS, {"planes": f"folder:{planes_dir}"}, out, kwargs.pop("tasks", None),
        registry=registry or counter.registry(), progress=False, echo=lines.append, model_loader=counter.loader, **kwargs,
    )
    return run, lines


def test_interrupted_benchmark_resumes_computing_only_what_is_missing(tmp_path, planes_dir):
    out = tmp_path / "out"
    first = Counter(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        _run(first, planes_dir, out)
    assert first.calls == [("a", "t1"), ("a", "t2"), ("b", "t1")]  # killed during (b, t1)
    assert len(list(ResultsStore(out / "store").entries())) == 2

    second = Counter()
    run, lines = _run(second, planes_dir, out)
    assert second.calls == [("b", "t1"), ("b", "t2")]
    assert second.loads == ["fetalclip-vit-b16"]  # model a is not even loaded: all its cells were stored
    assert (run.computed, run.reused) == (2, 2)
    assert [e["metrics"]["score"]["value"] for e in run.entries] == [4.0] * 4
    assert any("[1/4] a / t1: stored result reused" in line for line in lines)
    assert "skip t3: no data: pass --data ga=SPEC" in lines

    third = Counter()
    run, _ = _run(third, planes_dir, out)
    assert third.calls == [] and third.loads == [] and run.reused == 4


def test_changed_fingerprint_recomputes_only_the_affected_cells(tmp_path, planes_dir):
    out = tmp_path / "out"
    _run(Counter(), planes_dir, out)
    bumped = Counter()
    _run(bumped, planes_dir, out, registry=bumped.registry(t2=2))  # t2's computation changed
    assert bumped.calls == [("a", "t2"), ("b", "t2")]
    reseeded = Counter()
    run, _ = _run(reseeded, planes_dir, out, registry=reseeded.registry(t2=2), seed=1)
    assert len(reseeded.calls) == 4 and run.entries[0]["metrics"]["score"]["value"] == 5.0
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(planes_dir / "brain" / "new.png")  # the data changed
    more = Counter()
    _run(more, planes_dir, out, registry=more.registry(t2=2), seed=1)
    assert len(more.calls) == 4
    fresh = Counter()
    _run(fresh, planes_dir, out, registry=fresh.registry(t2=2), seed=1, fresh=True)
    assert len(fresh.calls) == 4


def test_unavailable_tasks_are_skipped_and_failed_ones_retried(tmp_path, planes_dir):
    counter = Counter()
    attempts = []

    def unavailable(model, dataset, context):
        attempts.append(context.model_label)
        raise TaskUnavailable("t1: needs fetalclip.tasks.zeroshot (issue 5)")

    def failing(model, dataset, context):
        attempts.append(context.model_label)
        raise FetalCLIPError("bad.png: not a recognised image format")

    registry = TaskRegistry([TaskSpec("t1", "planes", "T1", "score", unavailable), TaskSpec("t2", "planes", "T2", "score", failing)])
    out = tmp_path / "out"
    run, lines = _run(counter, planes_dir, out, registry=registry, tasks=["t1", "t2"])
    assert [item["model"] for item in run.skipped] == ["a", "b"]
    assert any("a / t1: skipped (t1: needs fetalclip.tasks.zeroshot (issue 5))" in line for line in lines)
    assert [e["status"] for e in run.entries] == ["failed", "failed"]
    assert "not a recognised image format" in run.entries[0]["error"]
    stored = ResultsStore(out / "store")
    assert stored.get("a", "t1") is None and stored.get("a", "t2")["status"] == "failed"
    _run(counter, planes_dir, out, registry=registry, tasks=["t1", "t2"])
    assert len(attempts) == 8  # neither a skip nor a failure is taken as a result


def test_problems_are_reported_before_any_work(tmp_path, planes_dir):
    counter = Counter()
    with pytest.raises(FetalCLIPError, match="unknown benchmark task 'nope'"):
        _run(counter, planes_dir, tmp_path / "o", tasks=["t1", "nope"])
    with pytest.raises(FetalCLIPError, match="not on this machine"):
        run_benchmark([ModelRef("a", "fetalclip-tiny"), ModelRef("clip", "open_clip:ViT-B-32@openai")],
                      {"planes": f"folder:{planes_dir}"}, tmp_path / "o", registry=counter.registry(),
                      progress=False, echo=lambda _: None, model_loader=counter.loader)
    with pytest.raises(FetalCLIPError, match="is not a folder"):
        run_benchmark(MODELS, {"planes": f"folder:{tmp_path / 'missing'}"}, tmp_path / "o", registry=counter.registry(),
                      progress=False, echo=lambda _: None, model_loader=counter.loader)
    assert counter.calls == [] and counter.loads == []


def test_argument_parsing(tmp_path):
    refs = parse_model_args(["fetalclip-tiny", "trained=runs/x", "open_clip:ViT-B-32@openai", "fetalclip-tiny", str(tmp_path),
                             "open_clip:ViT-B-16@/w/b16.pt", "open_clip:hf-hub:org/repo"])
    assert [r.label for r in refs] == ["fetalclip-tiny", "trained", "ViT-B-32@openai", "fetalclip-tiny#2", tmp_path.name,
                                       "ViT-B-16@b16.pt", "repo"]
    assert refs[1].spec == "runs/x" and refs[4].spec == str(tmp_path)
    assert parse_data_args(["planes=fpdb:/d", "ga=hc18:/h"]) == {"planes": "fpdb:/d", "ga": "hc18:/h"}
    with pytest.raises(FetalCLIPError, match="unknown key 'plane'"):
        parse_data_args(["plane=fpdb:/d"])
    with pytest.raises(FetalCLIPError, match="expected KEY=SPEC"):
        parse_data_args(["fpdb:/d"])


def test_model_checksums_identify_weights(tmp_path):
    from fetalclip.models import create_model

    assert model_checksum("fetalclip-tiny", seed=0) == model_checksum("fetalclip-tiny", seed=0)
    assert model_checksum("fetalclip-tiny", seed=0) != model_checksum("fetalclip-tiny", seed=1)
    folder = create_model("fetalclip-tiny", seed=3).save(tmp_path / "ckpt")
    expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert model_checksum(str(folder)) == expected == model_checksum(str(folder / "config.json"))
    with pytest.raises(FetalCLIPError, match="not a registered model"):
        model_checksum("no-such-model")


def test_manifest_checksum_follows_content_not_location(tmp_path, planes_dir):
    original = manifest_checksum(open_dataset(f"folder:{planes_dir}"))
    moved = shutil.copytree(planes_dir, tmp_path / "elsewhere" / "planes")
    assert manifest_checksum(open_dataset(f"folder:{moved}")) == original
    (moved / "femur" / "0.png").write_bytes((moved / "femur" / "0.png").read_bytes() + b"\0")
    assert manifest_checksum(open_dataset(f"folder:{moved}")) != original


def test_held_out_of_scores_only_the_runs_unseen_patients(tmp_path, fpdb_dir):
    import json

    from fetalclip.data.sample import domain_of

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": [f"fpdb:{fpdb_dir}"], "seed": 0, "holdout_fraction": 0.2,
                                                 "holdout_group": "us_machine=Aloka"}))
    counter, lines = Counter(), []
    data = {"planes": f"fpdb:{fpdb_dir}"}
    kwargs = dict(registry=counter.registry(), progress=False, echo=lines.append, model_loader=counter.loader)
    whole = run_benchmark(MODELS[:1], data, tmp_path / "o", ["t1"], **kwargs)
    held = run_benchmark(MODELS[:1], data, tmp_path / "o", ["t1"], held_out_of=run, **kwargs)
    everything = open_dataset(data["planes"])
    aloka = sum(domain_of(r, "us_machine") == "Aloka" for r in everything.records)
    n_held = held.provenance["data"]["planes"]["n"]
    assert aloka < n_held < len(everything)  # the machine and a fifth of the other patients
    assert held.provenance["data"]["planes"]["held_out_of"] == str(run)
    assert "held_out_of" not in whole.provenance["data"]["planes"]
    # The fake task scores len(dataset): the held-out run computed afresh on the smaller set, nothing reused.
    assert [e["metrics"]["score"]["value"] for e in (*whole.entries, *held.entries)] == [len(everything), n_held]
    assert (whole.computed, held.computed, held.reused) == (1, 1, 0)
