"""Fake benchmark results for two models, shaped like real task outputs, so report tests need no task code."""

from __future__ import annotations

import numpy as np
import pytest

from fetalclip.bench.harness import BenchmarkRun, ModelRef
from fetalclip.bench.tasks import default_registry, metric, png_base64
from fetalclip.growth import who_hc

MODELS = [ModelRef("tiny-random", "fetalclip-tiny"), ModelRef("tiny-trained", "/ckpt/tiny-trained")]
PLANES = ["abdomen", "brain", "cervix", "femur", "thorax", "kidney"]


def _entry(model: str, task: str, metrics=None, details=None, figures=None, status="done", error=None) -> dict:
    return {
        "model": model,
        "task": task,
        "status": status,
        "error": error,
        "fingerprint": {"model_sha256": model, "data_sha256": "d", "seed": 0},
        "metrics": metrics or {},
        "details": details or {},
        "figures": figures or {},
        "elapsed_s": 1.0,
        "finished_utc": "2026-01-01T00:00:00Z",
        "provenance": {"model_sha256": f"sha-{model}", "data_manifest_sha256": "sha-data", "seed": 0},
    }


def _scan(rng: np.random.Generator) -> np.ndarray:
    image = (rng.random((224, 224)) * 120).astype(np.uint8)
    image[60:160, 50:170] += 100
    return image


def fake_run(task_names: list[str] | None = None) -> BenchmarkRun:
    rng = np.random.default_rng(0)
    entries = []
    for index, ref in enumerate(MODELS):
        quality = 0.4 + 0.5 * index  # the trained model is better everywhere
        matrix = (rng.integers(0, 4, (6, 6)) + np.eye(6, dtype=int) * int(30 * quality)).tolist()
        for row in matrix[5:]:
            row[:] = [0] * 6  # a distractor class with no ground truth
        entries.append(_entry(ref.label, "zeroshot-planes",
                              {"macro_f1": metric(40 + 50 * quality, [35 + 50 * quality, 45 + 50 * quality], n=222)},
                              {"confusion": {"labels": PLANES, "matrix": matrix}}))
        entries.append(_entry(ref.label, "zeroshot-brain", status="failed", error="brain plane labels missing"))
        true_days = rng.uniform(120, 260, 60)
        pred = true_days + rng.normal(0, 30 * (1.2 - quality), 60)
        entries.append(_entry(ref.label, "zeroshot-ga", {"vpr": metric(20 + 60 * quality, [15 + 60 * quality, 25 + 60 * quality], n=60)},
                              figures={"ga_scatter": {"pred_ga_days": pred.tolist(), "true_hc_mm": who_hc(true_days).tolist()}}))
        entries.append(_entry(ref.label, "probe-planes", {"macro_f1": metric(60 + 30 * quality, None, n=100)}))
        n = [2, 4, 8, 16]
        entries.append(_entry(ref.label, "fewshot-planes", {"macro_f1": metric(50 + 40 * quality)},
                              {"fewshot": {"n": n, "mean": [30 + 10 * i * quality for i in range(4)], "sd": [5, 4, 3, 2], "metric": "macro F1"}}))
        error = metric(9 - 6 * quality, [8 - 6 * quality, 10 - 6 * quality], unit="mm")
        entries.append(_entry(ref.label, "biometry-hc", {"hc_mean_abs_diff_mm": error}))
        xy = rng.normal(size=(40, 2)) + np.repeat(np.arange(4), 10)[:, None] * 3 * quality
        entries.append(_entry(ref.label, "embedding-map", figures={"embedding_map": {
            "xy": xy.tolist(), "labels": [PLANES[i // 10] for i in range(40)], "method": "pca"}}))
        cams = []
        for label in PLANES[:3]:
            grid = np.zeros((14, 14))
            grid[4:9, 4:10] = 1.0
            cams.append({"label": label, "predicted": label if index else "brain", "source": f"{label}.png",
                         "image_png": png_base64(_scan(rng)), "cam": grid.tolist()})
        entries.append(_entry(ref.label, "cams", figures={"cams": cams}))
    tasks = task_names or default_registry().names()
    provenance = {
        "fetalclip_version": "0.1.0",
        "git_commit": "0" * 40,
        "created_utc": "2026-01-01T00:00:00Z",
        "seed": 0,
        "device": "cpu",
        "n_bootstrap": 1000,
        "models": {ref.label: {"spec": ref.spec, "sha256": f"sha-{ref.label}" + "0" * 40} for ref in MODELS},
        "data": {"planes": {"spec": "fpdb:/data/fpdb", "manifest_sha256": "ab" * 32, "n": 222}},
    }
    skipped = [{"task": "segment-hc", "model": None, "reason": "no data: pass --data seg=SPEC"},
               {"task": "clips", "model": None, "reason": "no data: pass --data clips=SPEC"},
               {"task": "probe-brain", "model": "tiny-random", "reason": "probe-brain: needs fetalclip.tasks.probe"}]
    return BenchmarkRun(list(MODELS), tasks, entries, skipped, provenance, default_registry())


@pytest.fixture
def two_model_run() -> BenchmarkRun:
    """Fake results of every task for two models (the second better everywhere)."""
    return fake_run()


@pytest.fixture(scope="session")
def phantom_specs(tmp_path_factory) -> dict[str, str]:
    """Dataset specs of small synthetic sets written once as PNG + manifest, one per benchmark data key.

    Files rather than ``sim:`` specs: the feature cache then finds images by path instead of re-rendering
    them to hash their pixels. Few patients keep the GA prompt bank (built per pixel spacing) small.
    """
    from fetalclip.sim.dataset import parse_sim_spec, write_phantom

    root = tmp_path_factory.mktemp("phantoms")
    sets = {
        "planes": "36,size=96,per_patient=3",
        "brain": "18,size=96,per_patient=3,classes=trans-thalamic+trans-cerebellum+trans-ventricular",
        "seg": "20,size=96,per_patient=2,classes=brain",
    }
    specs = {}
    for key, argument in sets.items():
        n, config = parse_sim_spec(argument)
        specs[key] = write_phantom(n, config, root / key)["spec"]
    lines = (root / "seg" / "manifest.csv").read_text().splitlines()
    (root / "seg" / "ga.csv").write_text("\n".join(lines[:7]) + "\n")  # six heads: six spacings x 175 days
    specs["ga"] = f"csv:{root / 'seg' / 'ga.csv'}"
    return specs


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every benchmark test on one thread (the root fixture: tasks measured 4 s -> 20 s with two competing)."""
    yield
