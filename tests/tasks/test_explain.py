"""Class-activation maps: sanity checks on a model trained here, in the test, on synthetic images.

The images are grey speckle with one small coloured square at a random place; its colour is the class, so the
only class evidence sits in a known region. A ViT trained on them for a few dozen steps must put most of its
map's mass on that region, and a model with randomised weights must not (the model-randomisation check of
Adebayo et al. 2018: maps that do not change when the weights are destroyed explain nothing).

The test model is fetalclip-tiny's text tower with a one-block, 64-pixel vision tower: with a single block the
class token gathers all its evidence in the block the maps are computed on, so the check tests the map
computation, not how deep a toy model happens to route information; and it trains in seconds on two cores.
The loss is sigmoid contrastive (SigLIP-style) between images and the class prompts, with the text tower
frozen: under a softmax over a few classes a model may recognise one class by the absence of the others, and
that class's evidence then sits nowhere, which would make the region check meaningless for it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from fetalclip.errors import FetalCLIPError
from fetalclip.models import create_model, get_model_config, register_model
from fetalclip.tasks.explain import (
    class_embeddings,
    compute_cam,
    compute_cams,
    load_prompt_set,
    mass_in_region,
    overlay,
    upsample,
)

SIZE, SQUARE, PATCH = 64, 16, 8
COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "empty": None}
PROMPTS = {"red": ["a red square"], "green": ["a green square"], "empty": ["plain speckle"]}
TEST_MODEL = "fetalclip-tiny-cam-test"


def synthetic(count: int, seed: int) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    """Images, labels and the square's region (dilated by one patch: a map cannot be finer than its grid)."""
    rng = np.random.default_rng(seed)
    images, labels, regions = [], [], []
    names = list(COLOURS)
    for index in range(count):
        image = np.repeat(rng.uniform(0.2, 0.6, (SIZE, SIZE, 1)), 3, axis=2)
        label = names[index % len(names)]
        top, left = rng.integers(0, SIZE - SQUARE, 2)
        if COLOURS[label] is not None:
            image[top : top + SQUARE, left : left + SQUARE] = COLOURS[label]
        region = np.zeros((SIZE, SIZE), bool)
        region[max(0, top - PATCH) : top + SQUARE + PATCH, max(0, left - PATCH) : left + SQUARE + PATCH] = True
        images.append((image * 255).astype(np.uint8))
        labels.append(label)
        regions.append(region)
    return images, labels, regions


def _register_test_model() -> None:
    config = get_model_config("fetalclip-tiny")
    config["vision_cfg"].update(image_size=SIZE, patch_size=PATCH, layers=1, width=64, head_width=32)
    config["preprocess"]["image_size"] = SIZE
    register_model(TEST_MODEL, config)


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT trained for 60 steps on the synthetic squares (about 10 s on two cores)."""
    _register_test_model()
    torch.manual_seed(0)
    model = create_model(TEST_MODEL, seed=0).train()
    images, labels, _ = synthetic(96, seed=0)
    pixels = model.preprocess.batch(images)
    names = list(COLOURS)
    classes = torch.tensor([names.index(label) for label in labels])
    with torch.no_grad():
        text = model.encode_text([PROMPTS[name][0] for name in names], normalize=True)
    bias = torch.nn.Parameter(torch.tensor(-3.0))
    optimiser = torch.optim.AdamW([*model.clip.visual.parameters(), model.clip.logit_scale, bias], lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = torch.randperm(len(images), generator=generator)[:32]
        logits = model.encode_image(pixels[batch], normalize=True) @ text.T * model.clip.logit_scale.exp() + bias
        loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(classes[batch], len(names)).float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def held_out():
    images, labels, regions = synthetic(24, seed=1)
    keep = [i for i, label in enumerate(labels) if label != "empty"]  # no square, no region to find
    return [images[i] for i in keep], [labels[i] for i in keep], [regions[i] for i in keep]


def _maps(model, images, labels, method="gradcam"):
    classes, vectors = class_embeddings(model, PROMPTS)
    return compute_cams(model, images, classes, vectors, labels, method=method, batch_size=64)


def test_trained_model_maps_fall_on_the_class_evidence(trained, held_out):
    images, labels, regions = held_out
    results = _maps(trained, images, labels)
    assert np.mean([r.predicted == label for r, label in zip(results, labels)]) >= 0.9  # it did learn the task
    masses = [mass_in_region(r.cam, region) for r, region in zip(results, regions)]
    area = np.mean([region.mean() for region in regions])
    assert np.median(masses) > 0.6 and np.mean(masses) > 2 * area, (masses, area)


def test_maps_of_randomised_weights_differ_and_do_not_localise(trained, held_out):
    images, labels, regions = held_out
    ours = _maps(trained, images, labels)
    randomised = create_model(TEST_MODEL, seed=1)  # same architecture, weights destroyed
    theirs = _maps(randomised, images, labels)
    correlations = [
        np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1] if a.cam.std() and b.cam.std() else 0.0 for a, b in zip(ours, theirs)
    ]
    assert np.mean(correlations) < 0.5, correlations
    trained_mass = np.mean([mass_in_region(r.cam, g) for r, g in zip(ours, regions)])
    random_mass = np.mean([mass_in_region(r.cam, g) for r, g in zip(theirs, regions)])
    assert random_mass < trained_mass - 0.2, (random_mass, trained_mass)


def test_scorecam_localises_better_than_chance(trained, held_out):
    images, labels, regions = held_out
    results = _maps(trained, images[:6], labels[:6], method="scorecam")
    assert all(r.method == "scorecam" and r.cam.shape == (SIZE // PATCH, SIZE // PATCH) for r in results)
    masses = [mass_in_region(r.cam, g) for r, g in zip(results, regions[:6])]
    area = np.mean([g.mean() for g in regions[:6]])
    assert np.mean(masses) > 1.5 * area, (masses, area)


def test_map_shape_range_and_targets(tiny_model, gray_image):
    result = compute_cam(tiny_model, gray_image, {"brain": ["fetal brain"], "femur": ["fetal femur", "a femur"]})
    assert result.cam.shape == (14, 14) and result.cam.dtype == np.float32
    assert result.cam.min() >= 0 and result.cam.max() == pytest.approx(1.0)
    assert result.target == result.predicted and set(result.scores) == {"brain", "femur"}
    assert result.model_image.shape == (224, 224, 3)
    forced = compute_cam(tiny_model, gray_image, {"brain": ["fetal brain"], "femur": ["fetal femur"]}, target="femur")
    assert forced.target == "femur"
    with pytest.raises(FetalCLIPError, match="not in the prompt set"):
        compute_cam(tiny_model, gray_image, {"brain": ["fetal brain"]}, target="heart")
    assert not any(p.grad is not None for p in tiny_model.parameters())  # maps never touch parameter gradients


def test_overlay_and_upsample(gray_image):
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    blended = overlay(gray_image, cam)
    assert blended.shape == (*gray_image.shape, 3) and blended.dtype == np.uint8
    assert np.array_equal(blended[-1, -1], [gray_image[-1, -1]] * 3)  # no evidence: image untouched
    assert not np.array_equal(blended[0, 0], [gray_image[0, 0]] * 3)
    assert upsample(cam, (8, 8)).shape == (8, 8)


def test_prompt_set_files(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"brain": "fetal brain", "femur": ["fetal femur", "the femur"]}))
    assert load_prompt_set(good) == {"brain": ["fetal brain"], "femur": ["fetal femur", "the femur"]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"brain": []}))
    with pytest.raises(FetalCLIPError, match="class 'brain' needs a prompt"):
        load_prompt_set(bad)
    with pytest.raises(FetalCLIPError, match="not found"):
        load_prompt_set(tmp_path / "missing.json")


def test_explain_command_writes_an_overlay(tmp_path, gray_image):
    from fetalclip.cli import app

    image = tmp_path / "scan.png"
    Image.fromarray(gray_image).save(image)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"brain": ["fetal brain"], "femur": ["fetal femur"]}))
    out = tmp_path / "cam.png"
    result = CliRunner().invoke(app, ["explain", str(image), "--prompt-set", str(prompts), "--out", str(out), "--all-classes"])
    assert result.exit_code == 0, result.output
    assert "predicted" in result.output and "brain" in result.output
    picture = np.asarray(Image.open(out).convert("L"))
    assert picture.shape[0] > 200 and picture.std() > 5


def test_explain_command_takes_a_frame_of_a_multi_frame_dicom(tmp_path, dicom_writer, ramp_frames, monkeypatch):
    from fetalclip.cli import app

    archive, work = tmp_path / "archive", tmp_path / "work"
    archive.mkdir(), work.mkdir()
    monkeypatch.chdir(work)
    scan = dicom_writer(archive / "loop.dcm", ramp_frames)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"brain": ["fetal brain"], "femur": ["fetal femur"]}))
    result = CliRunner().invoke(app, ["explain", str(scan), "--prompt-set", str(prompts), "--frame", "3", "--class", "femur"])
    assert result.exit_code == 0, result.output
    # The map goes to the current folder, never beside the input unless asked.
    assert "map for femur" in result.output and (work / "loop.cam.png").is_file() and sorted(archive.iterdir()) == [scan]
    # Without --prompt-set the packaged plane prompts are offered, in a labelled table.
    result = CliRunner().invoke(app, ["explain", str(scan), "--out", str(work / "planes.png")])
    assert result.exit_code == 0, result.output
    assert "softmax" in result.output and "abdomen" in result.output and "femur" in result.output
