"""The predictor's segmenter and probe heads: head biometry per scan, its quality flag and reasons, heads' scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fetalclip.errors import FetalCLIPError
from fetalclip.growth import WHO_HC_QUANTILES, who_hc
from fetalclip.tasks.biometry import measure_head
from fetalclip.tasks.ellipse import Ellipse, largest_component, rasterize_ellipse
from fetalclip.tasks.predictor import Predictor
from fetalclip.tasks.segmentation_head import hc_percentile, head_biometry, mask_rle, rle_mask

BRAIN_ONLY = {"brain": ["Ultrasound image of the fetal brain"]}


def test_predictor_measures_a_head_view_as_the_benchmark_does(tiny_model, phantom_heads, tiny_segmenter):
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.segmentation_decoder import Segmenter

    predictor = Predictor(tiny_model, segmenter=tiny_segmenter, plane_prompts=BRAIN_ONLY, head_mask=True)
    label_maps = Segmenter.load(tiny_segmenter).label_maps(FeatureCache(tiny_model, None), phantom_heads)
    measured = 0
    for i in range(4):
        sample = phantom_heads[i]
        answer = predictor(sample["image"], spacing_mm=sample["pixel_spacing_mm"])
        biometry = answer.biometry
        head = rle_mask(biometry.mask)
        assert head.shape == sample["image"].shape[:2]
        # The head (largest blob, holes filled) of the label map the benchmark's path predicts, one image at a
        # time here and in a batch there.
        assert np.mean(head == largest_component(label_maps[i] > 0)) > 0.99
        if biometry.hc_mm is None:  # a weak decoder may find no head: said, not raised
            assert biometry.reason.startswith("no head")
            continue
        measured += 1
        assert biometry.hc_mm == pytest.approx(measure_head(head, sample["pixel_spacing_mm"]).hc_mm, rel=1e-9)
        assert biometry.bpd_mm <= biometry.ofd_mm and biometry.ga_who_weeks_days and biometry.ga_hadlock_weeks_days
        assert biometry.percentile_at_ga_days == answer.gestational_age.days and 0 <= biometry.hc_percentile <= 100
        assert set(biometry.quality) == {"ok", "reason", "residual_px", "coverage", "iou"}
        json.dumps(answer.to_dict(), allow_nan=False)
    assert measured >= 1
    # Without a spacing: the mask and the fit, no measurements, and the reason.
    bare = predictor(phantom_heads[0]["image"]).biometry
    assert bare.hc_mm is None and bare.ga_who_days is None and "no pixel spacing" in bare.reason
    # Not a head view: no biometry.
    other = Predictor(tiny_model, segmenter=tiny_segmenter, plane_prompts={"femur": ["fetal femur"]})
    assert other(phantom_heads[0]["image"], spacing_mm=0.2).biometry is None


def test_segmenter_for_other_weights_is_refused(tiny_model, tiny_segmenter):
    from fetalclip.models import create_model

    with pytest.raises(FetalCLIPError, match="trained on other weights"):
        Predictor(create_model("fetalclip-tiny", seed=1), segmenter=tiny_segmenter)


def test_quality_flag_and_its_reason():
    truth = Ellipse(150, 120, 80, 60, 0.3)
    good = rasterize_ellipse(truth, (240, 300))
    answer = head_biometry(good, 0.2, ga_days=150)
    assert answer.quality["ok"] is True and answer.quality["reason"] is None
    assert answer.hc_mm == pytest.approx(truth.circumference() * 0.2, rel=2e-3)
    yy, xx = np.mgrid[:240, :300]
    bitten = good.copy()
    bitten[(yy - 120) ** 2 + (xx - 225) ** 2 < 40 ** 2] = 0
    poor = head_biometry(bitten, 0.2)
    assert poor.quality["ok"] is False and poor.quality["reason"].startswith("poor ellipse fit")
    assert poor.hc_mm is not None and "no gestational age" in poor.notes[0]  # measured, with the flag
    empty = head_biometry(np.zeros((50, 60), np.uint8), 0.2)
    assert empty.ellipse is None and empty.hc_mm is None and empty.reason.startswith("no head")
    json.dumps(empty.to_dict(), allow_nan=False)


def test_hc_percentile_on_the_who_curves():
    for quantile in WHO_HC_QUANTILES:
        value, outside = hc_percentile(float(who_hc(200, quantile)), 200)
        assert value == pytest.approx(100 * quantile, abs=1e-6) and not outside
    # Between curves: monotone in HC, and beyond the 1st/99th extrapolated (and said).
    values = [hc_percentile(float(hc), 200)[0] for hc in np.linspace(who_hc(200, 0.01), who_hc(200, 0.99), 25)]
    assert all(b > a for a, b in zip(values, values[1:]))
    low, outside = hc_percentile(float(who_hc(200, 0.01)) * 0.95, 200)
    assert outside and 0 < low < 1 and math.isfinite(low)


def test_mask_codes_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.random((17, 23)) > 0.5, np.ones((4, 5), bool), np.zeros((3, 3), bool)):
        code = mask_rle(mask)
        assert sum(code["counts"]) == mask.size
        np.testing.assert_array_equal(rle_mask(code), mask.astype(np.uint8))
    json.dumps(mask_rle(rasterize_ellipse(Ellipse(50, 40, 30, 20, 0.1), (80, 100))))


class FakeHead:
    """The ``ProbeHead`` interface: a name, an input kind, classes, and probabilities from features."""

    def __init__(self, name, input, frames=None):
        self.name, self.input, self.classes, self.frames = name, input, ["no", "yes"], frames
        self.seen = []

    def predict(self, features):
        features = np.asarray(features)
        self.seen.append(features)
        score = 1 / (1 + np.exp(-features.reshape(len(features), -1).mean(axis=1)))
        return np.stack([1 - score, score], axis=1)


def test_image_heads_score_scans_and_clip_heads_score_sweeps(tiny_model, phantom_heads):
    import torch

    image_head, clip_head = FakeHead("plane-probe", "image"), FakeHead("chd", "clip", frames=4)
    predictor = Predictor(tiny_model, heads=[image_head, clip_head], plane_prompts=BRAIN_ONLY)
    frames = [phantom_heads[i]["image"] for i in range(6)]
    answer = predictor(frames[0])
    with torch.inference_mode():
        raw = tiny_model.encode_image([frames[0]]).numpy()
    np.testing.assert_allclose(image_head.seen[-1], raw, atol=1e-6)  # raw embeddings, as the head was trained on
    score = answer.heads["plane-probe"]
    assert set(score) == {"label", "probabilities"} and sum(score["probabilities"].values()) == pytest.approx(1)
    sweep = predictor.sweep(frames)
    assert clip_head.seen[-1].shape == (1, 4, tiny_model.embed_dim)  # four frames, evenly spaced over six
    assert set(sweep.heads) == {"chd"} and sweep.heads["chd"]["label"] in ("no", "yes")
    assert all("heads" not in frame for frame in sweep.frames)
    json.dumps(sweep.to_dict(), allow_nan=False)
    with pytest.raises(FetalCLIPError, match="input must be"):
        Predictor(tiny_model, heads=[FakeHead("x", "video")])
