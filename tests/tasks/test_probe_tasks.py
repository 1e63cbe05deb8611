"""The probe task objects (probe-planes, probe-brain, fewshot-planes, clips) and the probe recipe.

A task object's ``run`` is what the benchmark's cell for it stores, key for key and value for value (the
objects were checked against the benchmark's former adapters, byte for byte, before those were deleted), on
small phantom sets written once per module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.io import finite_json
from fetalclip.tasks.probe_recipe import ProbeRecipe, RecipeError
from fetalclip.tasks.probe_tasks import ClipProbe, FewShotPlanes, ProbeBrain, ProbePlanes
from fetalclip.tasks.result import TaskUnavailable

CPU_OPTIONS = {  # the benchmark's TASK_OPTIONS for these tasks, as they were
    "probe-planes": {"folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01, "augment": 0,
                     "standardize": False},
    "fewshot-planes": {"sizes": [2, 4, 8, 16, 32, 64], "support_sets": 2, "runs": 1, "epochs": 50, "batch_size": 64,
                       "lr": 3e-4, "weight_decay": 0.01, "augment": 0, "standardize": False},
    "clips": {"frames": 16, "folds": 5, "runs": 1, "epochs": 50, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01,
              "positive": None, "standardize": False},
}
CPU_OPTIONS["probe-brain"] = dict(CPU_OPTIONS["probe-planes"])
PUBLISHED = {"probe-planes": {"runs": 5, "augment": 5}, "probe-brain": {"runs": 5, "augment": 5},
             "fewshot-planes": {"support_sets": 5, "runs": 5, "epochs": 100, "augment": 10}, "clips": {"runs": 5}}
TASKS = {task.name: task for task in (ProbePlanes, ProbeBrain, FewShotPlanes, ClipProbe)}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Planes (with brain sub-planes) and cine clips, written as files so the feature cache indexes them by path."""
    from fetalclip.sim.cine import parse_cine_spec, write_cine
    from fetalclip.sim.dataset import parse_sim_spec, write_phantom

    root = tmp_path_factory.mktemp("probe-phantoms")
    n, config = parse_sim_spec("36,size=96,per_patient=3")
    planes = write_phantom(n, config, root / "planes")["spec"]
    n, config = parse_sim_spec("18,size=96,per_patient=3,classes=trans-thalamic+trans-cerebellum+trans-ventricular")
    brain = write_phantom(n, config, root / "brain")["spec"]
    n, config = parse_cine_spec("16,size=64,frames=4,clips_per_patient=1")
    write_cine(n, config, root / "cine")
    return {"planes": open_dataset(planes), "brain": open_dataset(brain),
            "clips": open_dataset(f"csv:{root / 'cine' / 'manifest.csv'}")}


def _plain(value):
    """JSON-comparable (NaN -> None), so a value that was NaN on both sides compares equal."""
    return finite_json(value)


CASES = [
    ("probe-planes", "planes", {"folds": 2, "epochs": 3, "augment": 1}),
    ("probe-brain", "brain", {"folds": 2, "epochs": 3, "standardize": True}),
    ("fewshot-planes", "planes", {"sizes": [1, 2, 64], "support_sets": 2, "epochs": 3}),
    ("clips", "clips", {"frames": 4, "folds": 2, "runs": 2, "epochs": 3, "lr": 1e-2}),
]


@pytest.mark.parametrize("name, data_key, options", CASES, ids=[case[0] for case in CASES])
def test_task_run_is_the_benchmark_cell(tmp_path, tiny_model, phantoms, name, data_key, options):
    from fetalclip.bench.tasks import TaskContext, default_registry, feature_cache

    context = TaskContext(cache_dir=tmp_path, seed=3, progress=False, n_bootstrap=50, options={name: options})
    cell = default_registry().get(name).fn(tiny_model, phantoms[data_key], context)
    cache = feature_cache(tiny_model, context)
    encoded = cache.encoded
    result = TASKS[name](options).run(tiny_model, phantoms[data_key], cache, progress=False, seed=3, n_bootstrap=50)
    assert cache.encoded == encoded  # same images, same variants: everything came from the cell's cache entries
    assert result.task == name and list(result.metrics) == list(cell["metrics"])
    assert result.to_dict(rows=False)["metrics"] == _plain(cell["metrics"])
    assert _plain(result.details) == _plain(cell["details"])


def test_tasks_are_unavailable_without_what_they_need(tiny_model, phantoms):
    planes = phantoms["planes"]
    unlabelled_clips = phantoms["clips"].subset(range(4))
    unlabelled_clips.records[0]["label"] = None
    cases = [("probe-brain", phantoms["clips"], {}, "no records with a 'brain_plane' label"),
             ("fewshot-planes", planes, {"sizes": [64]}, "too few for N=64"),
             ("clips", unlabelled_clips, {"frames": 4}, "every clip of .* needs a label")]
    for name, dataset, options, reason in cases:
        with pytest.raises(TaskUnavailable, match=reason):
            TASKS[name](options).run(tiny_model, dataset, progress=False, n_bootstrap=10)


def test_options_are_the_benchmarks_with_published_overrides():
    for name, task in TASKS.items():
        assert task.Options.cpu().to_dict() == CPU_OPTIONS[name], name
        assert task.Options.published().to_dict() == {**CPU_OPTIONS[name], **PUBLISHED[name]}, name
        assert dict(task.Options.PUBLISHED) == PUBLISHED[name]
    with pytest.raises(FetalCLIPError, match=r"task probe-planes: unknown option\(s\) rnus; known: augment, batch_size"):
        ProbePlanes({"rnus": 5})


def test_task_without_a_cache_encodes_directly(tiny_model, phantoms):
    result = ProbePlanes({"folds": 2, "epochs": 2}).run(tiny_model, phantoms["planes"], progress=False, n_bootstrap=0)
    assert result.metrics["macro_f1"].n == result.details["n_test"] and result.metrics["macro_f1_sd"].n == 2
    assert 0 <= result.value("macro_f1") <= 100


# -- the recipe ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, rule", [
    ("epochs", 0, "whole number >= 1"), ("epochs", 2.5, "whole number"), ("epochs", True, "whole number"),
    ("lr", 0.0, "positive, finite"), ("lr", -1e-3, "positive, finite"), ("lr", math.nan, "positive, finite"),
    ("weight_decay", -0.1, "finite number >= 0"), ("batch_size", 0, ">= 1"), ("folds", 0, ">= 1"), ("runs", 0, ">= 1"),
    ("test_fraction", 1.0, r"\[0, 1\)"), ("grid", [(1e-3,)], "pairs"), ("standardize", "yes", "true or false"),
])
def test_bad_recipe_values_are_one_clear_error(field, value, rule):
    with pytest.raises(RecipeError, match=rf"^probe recipe: {field} = .* {rule}") as info:
        ProbeRecipe(**{field: value})
    assert info.value.field == field and "\n" not in str(info.value)


def test_task_options_report_bad_recipe_values_under_the_task_name():
    with pytest.raises(FetalCLIPError, match=r"^task probe-planes: option epochs = 0 must be a whole number >= 1$"):
        ProbePlanes({"epochs": 0})
    with pytest.raises(FetalCLIPError, match=r"^task clips: option lr = -1.0 must be a positive, finite number$"):
        ClipProbe({"lr": -1})
    with pytest.raises(FetalCLIPError, match="task clips: option folds = 1 must be >= 2"):
        ClipProbe({"folds": 1})
    with pytest.raises(FetalCLIPError, match="task fewshot-planes: option sizes"):
        FewShotPlanes({"sizes": [0, 2]})
    with pytest.raises(FetalCLIPError, match="task probe-brain: option augment = -1"):
        ProbeBrain({"augment": -1})


def test_recipe_points_and_single_point_runners():
    assert ProbeRecipe().points == ((3e-4, 0.01),)
    recipe = ProbeRecipe(grid=[(1e-3, 0.0), (1e-2, 0.1)])
    assert recipe.points == ((1e-3, 0.0), (1e-2, 0.1)) and recipe.to_dict()["grid"] == [[1e-3, 0.0], [1e-2, 0.1]]
    with pytest.raises(RecipeError, match="the few-shot probe trains one"):
        recipe.single_point("few-shot probe")
    assert ProbeRecipe.from_mapping({"epochs": 3, "augment": 2, "frames": 4}) == ProbeRecipe(epochs=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    from fetalclip.tasks.probe_clips import clip_probe

    with pytest.raises(RecipeError, match="folds = 1 must be >= 2"):
        clip_probe(x, ["a", "b"] * 10, [f"p{i}" for i in range(20)], ProbeRecipe(folds=1))
