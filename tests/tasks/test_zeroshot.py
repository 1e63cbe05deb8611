import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.zeroshot import (
    build_classifier,
    classify,
    evaluate_planes,
    load_prompts,
    predict,
    record_target,
)

PLANES = ("abdomen", "brain", "femur", "thorax", "cervix")
DISTRACTORS = ("kidney", "lips_nose", "profile", "spine")
BRAIN = ("trans-thalamic", "trans-cerebellum", "trans-ventricular")


def test_packaged_prompt_sets_cover_every_class_with_five_phrasings():
    planes = load_prompts(task="planes")
    assert list(planes) == [*PLANES, *DISTRACTORS]
    brain = load_prompts(task="brain")
    assert list(brain) == list(BRAIN)
    for prompts in (*planes.values(), *brain.values()):
        assert len(prompts) >= 5 and len(set(prompts)) == len(prompts)


def test_prompt_files_use_any_label_spelling(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"Fetal thorax": ["a heart"], "Maternal cervix": "a cervix", "my class": ["x"]}))
    assert load_prompts(path) == {"thorax": ["a heart"], "cervix": ["a cervix"], "my class": ["x"]}
    path.write_text(json.dumps({"heart": ["a"], "thorax": ["b"]}))
    with pytest.raises(FetalCLIPError, match="both mean 'thorax'"):
        load_prompts(path)
    path.write_text(json.dumps({"brain": []}))
    with pytest.raises(FetalCLIPError, match="non-empty list"):
        load_prompts(path)
    path.write_text(json.dumps({"Trans-thalamic": ["tt"]}))
    assert load_prompts(path, task="brain") == {"trans-thalamic": ["tt"]}


def test_classifier_is_the_renormalised_mean_of_normalised_prompt_embeddings(tiny_model):
    prompts = {"brain": ["fetal brain", "fetal head", "skull"], "femur": ["fetal femur"]}
    classifier = build_classifier(tiny_model, ["femur", "brain"], prompts)
    with torch.inference_mode():
        brain = F.normalize(tiny_model.encode_text(prompts["brain"]), dim=-1).mean(0)
        femur = F.normalize(tiny_model.encode_text(prompts["femur"]), dim=-1)[0]
    torch.testing.assert_close(classifier, torch.stack([femur, F.normalize(brain, dim=0)]), atol=1e-5, rtol=1e-5)
    # Templates are the other accepted form.
    from_templates = build_classifier(tiny_model, ["brain"], ["an ultrasound of the fetal {}", "{c} scan"])
    with torch.inference_mode():
        texts = F.normalize(tiny_model.encode_text(["an ultrasound of the fetal brain", "brain scan"]), dim=-1)
    torch.testing.assert_close(from_templates[0], F.normalize(texts.mean(0), dim=0), atol=1e-5, rtol=1e-5)


def test_logits_are_100_times_cosine(tiny_model, gray_image):
    classifier = build_classifier(tiny_model, ["brain", "femur"], {"brain": ["fetal brain"], "femur": ["fetal femur"]})
    logits = classify(tiny_model, [gray_image, gray_image[:, ::-1].copy()], classifier, batch_size=1)
    with torch.inference_mode():
        image = tiny_model.encode_image([gray_image], normalize=True)
    np.testing.assert_allclose(logits[0], (100 * image @ classifier.T)[0].numpy(), atol=1e-4)
    assert logits.shape == (2, 2) and np.all(np.abs(logits) <= 100 + 1e-4)


def test_brain_targets_come_from_the_sub_plane_or_a_sub_plane_label():
    assert record_target({"label": "brain", "brain_plane": "trans-thalamic"}, "brain") == "trans-thalamic"
    assert record_target({"label": "Trans-cerebellum"}, "brain") == "trans-cerebellum"
    assert record_target({"label": "brain", "brain_plane": None}, "brain") is None
    assert record_target({"label": "femur"}, "planes") == "femur"


@pytest.fixture
def fpdb_manifest(fpdb_dir, tmp_path):
    """Two images of each of three planes plus one "Other", with FETAL_PLANES_DB-style label names."""
    rows = list(csv.DictReader((fpdb_dir / "FETAL_PLANES_DB_data.csv").open(encoding="utf-8-sig"), delimiter=";"))
    chosen = []
    for plane in ("Fetal brain", "Fetal femur", "Maternal cervix", "Other"):
        chosen += [r for r in rows if r["Plane"] == plane][: 1 if plane == "Other" else 2]
    path = tmp_path / "planes.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row in chosen:
            writer.writerow([fpdb_dir / "Images" / f"{row['Image_name']}.png", row["Plane"]])
    return path


def test_predictions_on_real_images_with_and_without_distractors(tiny_model, fpdb_manifest, tmp_path):
    dataset = open_dataset(f"csv:{fpdb_manifest}")
    with_distractors = predict(tiny_model, dataset, "planes")
    assert with_distractors.classnames == [*PLANES, *DISTRACTORS]
    assert with_distractors.y_true == ["brain", "brain", "femur", "femur", "cervix", "cervix"]
    assert with_distractors.excluded == 1 and with_distractors.logits.shape == (6, 9)
    without = predict(tiny_model, dataset, "planes", distractors=False)
    assert without.classnames == ["brain", "femur", "cervix"]
    # Same images, same class embeddings: the offered columns are a subset.
    columns = [with_distractors.classnames.index(c) for c in without.classnames]
    np.testing.assert_allclose(without.logits, with_distractors.logits[:, columns], atol=1e-4)
    # Through the feature cache: the same logits, and "Other" is left out before anything is encoded.
    from fetalclip.tasks.features import FeatureCache

    cache = FeatureCache(tiny_model, tmp_path / "cache")
    cached = predict(tiny_model, dataset, "planes", cache=cache)
    assert cache.encoded == 6 and cached.sources == with_distractors.sources and cached.y_true == with_distractors.y_true
    np.testing.assert_allclose(cached.logits, with_distractors.logits, atol=1e-3)
    metrics = evaluate_planes(tiny_model, dataset, n_bootstrap=50, cache=FeatureCache(tiny_model, tmp_path / "cache"))
    assert set(k for k in metrics if k.startswith("zeroshot/planes/f1/")) == {
        "zeroshot/planes/f1/brain", "zeroshot/planes/f1/femur", "zeroshot/planes/f1/cervix"
    }
    assert 0 <= metrics["zeroshot/planes/f1"] <= 100 and metrics["zeroshot/planes/n"] == 6


def test_a_label_without_prompts_is_an_error_listing_the_known_ones(tiny_model, fpdb_manifest):
    text = fpdb_manifest.read_text().replace("Maternal cervix", "Fetal kneecap")
    fpdb_manifest.write_text(text)
    with pytest.raises(FetalCLIPError, match=r"'Fetal kneecap'.*known labels: abdomen, brain, femur, thorax, cervix"):
        predict(tiny_model, open_dataset(f"csv:{fpdb_manifest}"), "planes")

