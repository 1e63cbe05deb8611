"""The task registry and the figure tasks implemented in the harness (embedding map, CAMs)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from fetalclip.bench.tasks import (
    TASK_NAMES,
    TaskContext,
    TaskUnavailable,
    cams_task,
    default_prompt_set,
    default_registry,
    embedding_map_task,
    stratified_indices,
)
from fetalclip.data.datasets import open_dataset

# The published table's column order.
PUBLISHED_TASKS = ["zeroshot-planes", "zeroshot-brain", "zeroshot-ga", "probe-planes", "probe-brain",
                   "fewshot-planes", "clips", "segment-hc", "biometry-hc"]


@pytest.fixture
def folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("brain", "femur", "abdomen"):
        (tmp_path / label).mkdir()
        for i in range(4):
            image = rng.integers(0, 80, (60, 90), dtype=np.uint8)
            image[20:40, 30:60] = 200 if label == "brain" else 120
            Image.fromarray(image).save(tmp_path / label / f"{i}.png")
    return open_dataset(f"folder:{tmp_path}")


def _context(tmp_path, **options):
    return TaskContext(cache_dir=tmp_path / "cache", seed=0, progress=False, options=options)


def test_registry_has_the_published_tasks_and_connection_points(tmp_path, tiny_model, folder_dataset):
    registry = default_registry()
    assert TASK_NAMES == tuple(PUBLISHED_TASKS + ["embedding-map", "cams"])
    assert registry.get("biometry-hc").higher_is_better is False
    assert registry.get("zeroshot-ga").published == {"FetalCLIP": 83.42, "CLIP ViT-L/14": 11.43}
    for name in PUBLISHED_TASKS:  # not connected yet: each says which library it waits for
        with pytest.raises(TaskUnavailable, match=r"needs fetalclip\.tasks\.\w+ \(issue [56]\)"):
            registry.get(name).fn(tiny_model, folder_dataset, _context(tmp_path))
    registry.connect("zeroshot-planes", lambda model, data, context: {"metrics": {}}, version=2)
    assert registry.get("zeroshot-planes").version == 2 and registry.get("zeroshot-planes").title == "ZS planes F1"
    assert default_registry().get("zeroshot-planes").version == 1  # connecting changes only that registry


def test_embedding_map_projects_every_selected_image(tmp_path, tiny_model, folder_dataset):
    output = embedding_map_task(tiny_model, folder_dataset, _context(tmp_path))
    data = output["figures"]["embedding_map"]
    assert np.asarray(data["xy"]).shape == (12, 2) and sorted(set(data["labels"])) == ["abdomen", "brain", "femur"]
    assert data["method"] == "pca" and output["metrics"] == {}  # too few images for t-SNE/UMAP
    small = embedding_map_task(tiny_model, folder_dataset, _context(tmp_path, **{"embedding-map": {"per_class": 2}}))
    assert len(small["figures"]["embedding_map"]["xy"]) == 6


@pytest.mark.slow
def test_embedding_map_uses_a_neighbourhood_method_for_larger_sets():
    from fetalclip.bench.tasks import _project_2d

    features = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    xy, method = _project_2d(features, seed=0)
    assert xy.shape == (40, 2) and method in ("umap", "t-sne")


def test_cams_task_targets_true_classes_with_decodable_images(tmp_path, tiny_model, folder_dataset):
    output = cams_task(tiny_model, folder_dataset, _context(tmp_path, cams={"per_class": 1}))
    cams = output["figures"]["cams"]
    assert sorted(item["label"] for item in cams) == ["abdomen", "brain", "femur"]
    for item in cams:
        image = Image.open(io.BytesIO(base64.b64decode(item["image_png"])))
        assert image.size == (224, 224) and np.asarray(item["cam"]).shape == (14, 14)
    assert output["details"]["method"] == "gradcam"


def test_stratified_selection_and_default_prompts():
    labels = ["a", "b", "a", None, "b", "a", "c"]
    picked = stratified_indices(labels, 2, seed=0)
    assert picked == stratified_indices(labels, 2, seed=0) and len(picked) == 5 and 3 not in picked
    assert len(stratified_indices(labels, None, seed=0, max_total=3)) == 3
    prompts = default_prompt_set(["thorax", "trans-thalamic"])
    assert "fetal heart" in prompts["thorax"][0] and "trans-thalamic" in prompts["trans-thalamic"][0]


def test_figure_tasks_on_shared_fetal_planes(tmp_path, fpdb_dir):
    from fetalclip.bench.harness import ModelRef, run_benchmark

    run = run_benchmark(
        [ModelRef("tiny", "fetalclip-tiny")], {"planes": f"fpdb:{fpdb_dir}"}, tmp_path, ["embedding-map", "cams"],
        options={"embedding-map": {"per_class": 4}, "cams": {"per_class": 1}}, progress=False, echo=lambda _: None,
    )
    maps, cams = run.entries
    assert sorted(set(maps["figures"]["embedding_map"]["labels"])) == ["abdomen", "brain", "cervix", "femur", "other", "thorax"]
    assert sorted(item["label"] for item in cams["figures"]["cams"]) == ["abdomen", "brain", "cervix", "femur", "thorax"]
    assert run.provenance["data"]["planes"]["n"] == 222 and len(run.provenance["data"]["planes"]["manifest_sha256"]) == 64
