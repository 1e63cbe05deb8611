import json

import numpy as np
import pytest
import torch

from fetalclip.errors import FetalCLIPError
from fetalclip.growth import who_hc
from fetalclip.tasks.gestational_age import (
    DAYS,
    check_template,
    decode_top_k_median,
    fill_template,
    format_spacing,
    ga_metrics,
    load_templates,
    predict_ga,
    score_days,
    score_days_reference,
)

FEW_DAYS = range(98, 106)
TWO_TEMPLATES = ["Fetal brain at {weeks} weeks and {days} days, {spacing} mm per pixel.", "Head, {ga}, spacing {spacing} mm"]


def test_day_grid_is_14w0d_to_38w6d():
    assert len(DAYS) == 175 and DAYS[0] == 14 * 7 and DAYS[-1] == 38 * 7 + 6


def test_decode_takes_the_median_index_of_the_top_15():
    scores = -np.abs(np.arange(175) - 50.0)  # top 15: indices 43..57
    assert decode_top_k_median(scores)[0] == 98 + 50
    # The median of the best days, not the best day: index 10 wins but 14 other good days lie at 100..113.
    skewed = np.zeros((1, 175))
    skewed[0, 10] = 5.0
    skewed[0, 100:114] = 4.0
    assert decode_top_k_median(skewed)[0] == 98 + 106  # sorted top 15: 10, 100..113 -> position 7 is 106
    assert decode_top_k_median(skewed, top_k=1)[0] == 98 + 10
    assert decode_top_k_median(skewed, top_k=4, first_day=0)[0] == 101  # 10, 100, 101, 102 -> position 2
    with pytest.raises(ValueError, match="top_k"):
        decode_top_k_median(skewed, top_k=176)


def test_prompt_filling():
    assert format_spacing(0.125) == "0.12" and format_spacing(0.5) == "0.50" and format_spacing(1.006) == "1.01"
    assert fill_template(TWO_TEMPLATES[0], 142, "0.31") == "Fetal brain at 20 weeks and 2 days, 0.31 mm per pixel."
    assert fill_template(TWO_TEMPLATES[1], 98, "1.00") == "Head, 14 weeks and 0 days, spacing 1.00 mm"
    with pytest.raises(ValueError, match="unknown placeholder"):
        check_template("at {weeks} weeks, {zoom} zoom")
    with pytest.raises(ValueError, match="never mentions the age"):
        check_template("fetal head, {spacing} mm per pixel")


def test_packaged_templates_and_template_files(tmp_path):
    ours = load_templates()
    assert len(ours) >= 5 and all("{spacing}" in t and "{weeks}" in t for t in ours)
    (tmp_path / "list.json").write_text(json.dumps(TWO_TEMPLATES))
    assert load_templates(tmp_path / "list.json") == TWO_TEMPLATES
    (tmp_path / "bad.json").write_text(json.dumps({"templates": ["no age here"]}))
    with pytest.raises(FetalCLIPError, match="bad.json"):
        load_templates(tmp_path / "bad.json")


def test_fast_scores_equal_the_per_image_reference(tiny_model, gray_image):
    rng = np.random.default_rng(1)
    images = [gray_image, np.flipud(gray_image).copy(), rng.integers(0, 256, (90, 100), dtype=np.uint8)]
    spacings = [0.31, 0.3111, 1.5]  # the first two print alike and share their text
    fast = score_days(tiny_model, images, spacings, TWO_TEMPLATES, FEW_DAYS, batch_size=2)
    reference = np.stack([score_days_reference(tiny_model, im, s, TWO_TEMPLATES, FEW_DAYS) for im, s in zip(images, spacings)])
    assert fast.shape == (3, len(FEW_DAYS))
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=0)
    # A preprocessed batch gives the same map as raw images.
    batch = torch.stack([tiny_model.preprocess(im) for im in images])
    np.testing.assert_allclose(score_days(tiny_model, batch, spacings, TWO_TEMPLATES, FEW_DAYS), fast, atol=1e-5)


def test_ga_metrics_by_hand():
    pred = np.array([140.0, 140.0, 200.0, 150.0])
    hc = np.array([float(who_hc(140)), float(who_hc(140, 0.975)) + 5, float(who_hc(200)), 50.0])
    metrics = ga_metrics(pred, hc, n_bootstrap=100)
    assert metrics["zeroshot/ga/n_evaluated"] == 3 and metrics["zeroshot/ga/n_valid"] == 2
    assert metrics["zeroshot/ga/vpr"] == pytest.approx(200 / 3)
    assert metrics["zeroshot/ga/n"] == 4
    assert metrics["zeroshot/ga/vpr_ci_low"] <= metrics["zeroshot/ga/vpr"] <= metrics["zeroshot/ga/vpr_ci_high"]


def test_predict_on_real_hc18_images_uses_the_224_input_spacing(hc18_dir, tiny_model, tmp_path):
    from fetalclip.data.datasets import open_dataset

    dataset = open_dataset(f"hc18:{hc18_dir}").subset(range(3))
    predictions = predict_ga(tiny_model, dataset, TWO_TEMPLATES, days=FEW_DAYS)
    expected = [r["pixel_spacing_mm"] * 800 / 224 for r in dataset.records]  # HC18 images are 800x540
    np.testing.assert_allclose(predictions.spacing_224, expected, rtol=1e-12)
    assert predictions.scores.shape == (3, len(FEW_DAYS))
    assert list(predictions.hc_mm) == [r["hc_mm"] for r in dataset.records]
    assert set(predictions.predicted_days(top_k=5)) <= set(FEW_DAYS)
    # Through the feature cache: the same embeddings (normalised), each image's own spacing.
    from fetalclip.tasks.features import FeatureCache

    cache = FeatureCache(tiny_model, tmp_path / "cache")
    cached = predict_ga(tiny_model, dataset, TWO_TEMPLATES, days=FEW_DAYS, cache=cache)
    assert cache.encoded == 3 and cached.sources == predictions.sources
    np.testing.assert_allclose(cached.spacing_224, predictions.spacing_224, rtol=1e-12)
    np.testing.assert_allclose(cached.scores, predictions.scores, atol=1e-3)

