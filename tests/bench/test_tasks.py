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
    default_registry,
    feature_cache,
    protocol_options,
)
from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.maps import cam_prompts, default_prompt_set, project_2d, stratified_indices
from fetalclip.tasks.result import TaskOptions

# The figure tasks as the benchmark runs them (options from the context, results in the stored shape).
cams_task = default_registry().get("cams").fn
embedding_map_task = default_registry().get("embedding-map").fn

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


def test_registry_has_the_published_tasks_with_their_options(tmp_path, tiny_model, folder_dataset):
    registry = default_registry()
    assert TASK_NAMES == tuple(PUBLISHED_TASKS + ["transfer-planes", "embedding-map", "cams"])
    assert registry.get("biometry-hc").higher_is_better is False
    assert registry.get("zeroshot-ga").published == {"FetalCLIP": 83.42, "CLIP ViT-L/14": 11.43}
    for spec in registry:  # every task is connected (version >= 2), a task object with typed options
        assert spec.version >= 2 and issubclass(spec.task.Options, TaskOptions)
        assert spec.defaults == spec.task.Options.cpu().to_dict() and spec.task.Options.published().to_dict()
    # Head segmentation changed what it computes (whole head where masks label inner structures): new version.
    assert registry.get("segment-hc").version == registry.get("biometry-hc").version == 3
    biometry = registry.get("biometry-hc")
    assert biometry.options_key == "segment-hc" and biometry.resolve_options({"epochs": 3})["epochs"] == 3
    with pytest.raises(FetalCLIPError, match=r"task probe-planes: unknown option\(s\) rnus; known: augment, batch_size"):
        registry.get("probe-planes").resolve_options({"rnus": 5})
    with pytest.raises(FetalCLIPError, match="unknown option"):
        registry.get("zeroshot-planes").fn(tiny_model, folder_dataset, _context(tmp_path, **{"zeroshot-planes": {"prompt": "x"}}))
    published = protocol_options("published")
    assert published["probe-planes"] == {"runs": 5, "augment": 5} and published["segment-hc"]["size"] == 224
    assert protocol_options("cpu") == {}
    registry.connect("zeroshot-planes", lambda model, data, context: {"metrics": {}}, version=3)
    assert registry.get("zeroshot-planes").version == 3 and registry.get("zeroshot-planes").title == "ZS planes F1"
    assert default_registry().get("zeroshot-planes").version == 2  # connecting changes only that registry


@pytest.fixture(scope="module")
def sim_sets(phantom_specs):
    return {key: open_dataset(spec) for key, spec in phantom_specs.items()}


def test_connected_tasks_share_one_feature_cache(tmp_path, tiny_model, sim_sets, monkeypatch):
    registry = default_registry()
    context = _context(tmp_path, **{
        "probe-planes": {"folds": 2, "epochs": 3}, "fewshot-planes": {"sizes": [1, 2, 64], "support_sets": 1, "epochs": 3},
        "segment-hc": {"size": 32, "channels": [8, 8, 8, 8, 8], "epochs": 1},
        "embedding-map": {"max_images": 24},  # PCA: t-SNE/UMAP take seconds
        "zeroshot-ga": {"templates": ["the fetal head at {weeks} weeks and {days} days, {spacing} mm per pixel"]},
    })
    context.n_bootstrap = 100
    planes = sim_sets["planes"]
    cache = feature_cache(tiny_model, context)

    zeroshot = registry.get("zeroshot-planes").fn(tiny_model, planes, context)
    others = sum(label == "other" for label in planes.column("label"))
    assert cache.encoded == len(planes) - others  # "Other" is not a zero-shot class
    f1 = zeroshot["metrics"]["macro_f1"]
    assert 0 <= f1["value"] <= 100 and f1["ci"][0] <= f1["value"] <= f1["ci"][1] and f1["n"] == len(planes) - others
    confusion = zeroshot["details"]["confusion"]
    assert confusion["labels"][:5] == ["abdomen", "brain", "femur", "thorax", "cervix"] and len(confusion["labels"]) == 9

    probe = registry.get("probe-planes").fn(tiny_model, planes, context)
    assert cache.encoded == len(planes)  # only the "Other" images were new
    assert sorted(probe["details"]["confusion"]["labels"]) == ["abdomen", "brain", "cervix", "femur", "other", "thorax"]
    assert probe["details"]["folds"] == 2 and probe["details"]["runs"] == 1

    fewshot = registry.get("fewshot-planes").fn(tiny_model, planes, context)
    curve = fewshot["details"]["fewshot"]
    assert curve["n"] == [1, 2] and fewshot["details"]["skipped_sizes"] == [64]
    assert fewshot["metrics"]["macro_f1"]["value"] == curve["mean"][-1]
    assert registry.get("embedding-map").fn(tiny_model, planes, context)["details"]["method"] == "pca"
    assert cache.encoded == len(planes)  # nothing re-encoded

    ga = registry.get("zeroshot-ga").fn(tiny_model, sim_sets["ga"], context)
    scatter = ga["figures"]["ga_scatter"]
    assert len(scatter["pred_ga_days"]) == len(scatter["true_hc_mm"]) == ga["metrics"]["vpr"]["n"] == ga["details"]["n_evaluated"]
    assert all(100 <= hc <= 342 for hc in scatter["true_hc_mm"]) and all(98 <= d <= 272 for d in scatter["pred_ga_days"])

    import fetalclip.tasks.segmentation as segmentation

    trainings = []
    real = segmentation.run_segmentation
    monkeypatch.setattr(segmentation, "run_segmentation", lambda *a, **k: trainings.append(1) or real(*a, **k))
    segment = registry.get("segment-hc").fn(tiny_model, sim_sets["seg"], context)
    biometry = registry.get("biometry-hc").fn(tiny_model, sim_sets["seg"], context)
    assert len(trainings) == 1  # biometry measured with segment-hc's decoder, kept under the cache folder
    assert segment["metrics"]["dice"]["n"] == biometry["details"]["n"] and biometry["metrics"]["hc_mean_abs_diff_mm"]["unit"] == "mm"


def test_tasks_without_the_data_they_need_are_unavailable(tmp_path, tiny_model, folder_dataset):
    registry = default_registry()
    for name, reason in (("zeroshot-brain", "no images with a brain sub-plane label"), ("zeroshot-ga", "no images with a pixel spacing"),
                         ("probe-brain", "no records with a 'brain_plane' label"), ("segment-hc", "no segmentation mask")):
        with pytest.raises(TaskUnavailable, match=reason):
            registry.get(name).fn(tiny_model, folder_dataset, _context(tmp_path))


def test_cam_prompts_are_the_zero_shot_prompts():
    from fetalclip.tasks.zeroshot import load_prompts

    prompts = cam_prompts(["brain", "thorax", "kneecap"])
    assert prompts["brain"] == load_prompts(task="planes")["brain"] and prompts["thorax"] == load_prompts(task="planes")["thorax"]
    assert prompts["kneecap"] == default_prompt_set(["kneecap"])["kneecap"]


def test_embedding_map_projects_every_selected_image(tmp_path, tiny_model, folder_dataset):
    output = embedding_map_task(tiny_model, folder_dataset, _context(tmp_path))
    data = output["figures"]["embedding_map"]
    assert np.asarray(data["xy"]).shape == (12, 2) and sorted(set(data["labels"])) == ["abdomen", "brain", "femur"]
    assert data["method"] == "pca" and output["metrics"] == {}  # too few images for t-SNE/UMAP
    small = embedding_map_task(tiny_model, folder_dataset, _context(tmp_path, **{"embedding-map": {"per_class": 2}}))
    assert len(small["figures"]["embedding_map"]["xy"]) == 6


@pytest.mark.slow
def test_embedding_map_uses_a_neighbourhood_method_for_larger_sets():
    features = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    xy, method = project_2d(features, seed=0)
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
