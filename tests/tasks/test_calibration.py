"""Calibrated plane confidence: each layer against a reference, the patient split, the file and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.errors import OutputError
from fetalclip.tasks.calibration import (
    CalibrationError,
    abstain_threshold,
    conformal_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    load_calibration,
    nll,
    prediction_sets,
    softmax,
    standardness,
)


def _sampled(n=4000, classes=5, temperature=2.5, seed=0):
    """Logits and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    probs = softmax(logits, temperature)
    y = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, y


def test_temperature_recovers_the_one_that_made_the_labels_and_matches_a_grid_search():
    logits, y = _sampled()
    fitted = fit_temperature(logits, y)
    assert fitted == pytest.approx(2.5, rel=0.08)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 2001))
    best = grid[np.argmin([nll(logits, y, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=2e-3)
    assert nll(logits, y, fitted) <= nll(logits, y, 1.0)


def test_ece_by_hand_and_zero_for_a_calibrated_model():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins (0.8, 0.9]: 2 images, accuracy 0.5, confidence 0.9; (0.53, 0.6]: 1 image, 1.0 vs 0.6; (0.67, 0.73]: 1, 1.0 vs 0.7
    assert expected_calibration_error(probs, y) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)
    logits, y = _sampled(n=20000, temperature=1.0, seed=1)
    assert expected_calibration_error(softmax(logits), y) < 0.015
    assert expected_calibration_error(softmax(logits, 0.3), y) > 0.05  # overconfident


def test_conformal_sets_cover_fresh_images_at_the_asked_rate():
    logits, y = _sampled(n=6000, temperature=1.5, seed=2)
    fit, test = slice(0, 1000), slice(1000, None)
    for coverage in (0.8, 0.9, 0.95):
        q = conformal_threshold(softmax(logits[fit], 1.5), y[fit], coverage)
        sets = prediction_sets(softmax(logits[test], 1.5), q)
        covered = sets[np.arange(len(y[test])), y[test]].mean()
        sigma = np.sqrt(coverage * (1 - coverage) / len(y[test]))
        assert coverage - 3 * sigma <= covered <= coverage + 0.02 + 3 * sigma, coverage
    # The finite-sample rank: with 9 fitting scores and coverage 0.9, the 9th (largest) score; with 8, none fits.
    probs = np.eye(3)[[0] * 9] * 0.0 + 1 / 3
    assert conformal_threshold(probs, np.zeros(9, int), 0.9) == pytest.approx(2 / 3)
    assert conformal_threshold(probs[:8], np.zeros(8, int), 0.9) == 1.0


def test_abstain_threshold_keeps_the_asked_share():
    scores = np.linspace(0.1, 0.5, 101)
    threshold = abstain_threshold(scores, 0.95)
    assert (scores >= threshold).mean() == pytest.approx(0.96, abs=0.011)
    assert standardness(np.array([[10.0, 30.0], [5.0, 1.0]])).tolist() == [0.3, 0.05]


def _planes(seed=0, patients=120, other=20):
    """Zero-shot-like logits: standard images lie close to their class prompt, 'other' images to none."""
    rng = np.random.default_rng(seed)
    classes = ["abdomen", "brain", "femur"]
    logits, labels, ids = [], [], []
    for p in range(patients + other):
        label = classes[p % 3] if p < patients else "other"
        cos = rng.normal(0.15, 0.03, 3)
        if label != "other":
            cos[classes.index(label)] += 0.08
        for _ in range(2):
            logits.append(100 * (cos + rng.normal(0, 0.02, 3)))
            labels.append(label)
            ids.append(f"p{p}")
    return np.array(logits), labels, ids, classes


def test_fit_on_some_patients_measure_on_the_others(tmp_path):
    logits, labels, patients, classes = _planes()
    calibration = fit_calibration(logits, labels, patients, classes, coverage=0.9, accept=0.95, seed=3)
    e = calibration.evaluation
    assert calibration.fit["n_images"] + e["n_images"] == sum(label != "other" for label in labels)
    assert e["ece_after"] < e["ece_before"] and e["nll_after"] < e["nll_before"]
    assert 0.8 <= e["coverage"] <= 1.0 and 1.0 <= e["mean_set_size"] <= 3.0
    assert e["abstain_auroc"] > 0.75 and e["n_non_standard"] > 0  # chance is 0.5
    # The saved file reads back, for the weights it was fitted for only.
    calibration.model, calibration.model_fingerprint = "fetalclip-tiny", "ab" * 32
    path = calibration.save(tmp_path / "calibration.json")
    again = load_calibration(path, fingerprint="ab" * 32)
    assert again.to_dict() == calibration.to_dict()
    np.testing.assert_allclose(again.probabilities(logits[:4]), calibration.probabilities(logits[:4]))
    with pytest.raises(CalibrationError, match="calibrate again"):
        load_calibration(path, fingerprint="cd" * 32)
    for broken in ([1, 2], {"format": "fetalclip-calibration", "version": 1, "temperature": "hot"}):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(CalibrationError, match="bad.json"):
            load_calibration(tmp_path / "bad.json")


def test_calibrate_command_on_fetal_planes(fpdb_dir, tmp_path):
    out = tmp_path / "calibration.json"
    args = ["calibrate", "-m", "fetalclip-tiny", "-d", f"fpdb:{fpdb_dir}", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output and "coverage" in result.output and "AUROC" in result.output
    saved = json.loads(out.read_text())
    assert saved["format"] == "fetalclip-calibration" and saved["model"] == "fetalclip-tiny"
    assert saved["evaluation"]["n_non_standard"] > 0  # FETAL_PLANES_DB's Other measures abstention
    assert saved["fit"]["n_images"] > 0 and saved["evaluation"]["n_images"] > 0
    again = CliRunner().invoke(app, args)  # never replaced without being asked (the CLI prints it, exit 2)
    assert isinstance(again.exception, OutputError) and "--overwrite" in str(again.exception)
