"""One scan in, one answer out: the predictor agrees with the task functions and says what it cannot answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.tasks.calibration import CalibrationError, fit_calibration
from fetalclip.tasks.gestational_age import decode_top_k_median, score_days
from fetalclip.tasks.predictor import Predictor, weeks_days
from fetalclip.tasks.zeroshot import build_classifier, classify, load_prompts

BRAIN_ONLY = {"brain": ["Ultrasound image of the fetal brain"]}


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (180, 240), dtype=np.uint8)
    image[40:140, 60:180] += 120  # a bright oval-ish blob
    return image


def test_uncalibrated_answer_says_so_and_matches_zero_shot(tiny_model, scan):
    predictor = Predictor(tiny_model)
    answer = predictor(scan)
    planes = load_prompts(None, "planes")
    classes = [c for c in planes if c != "other"]
    logits = classify(tiny_model, [scan], build_classifier(tiny_model, classes, planes))
    assert answer.plane.label == classes[int(logits.argmax())]
    assert answer.plane.calibrated is False and answer.plane.standard_plane is None and "calibrate" in answer.plane.reason
    assert sum(answer.plane.probabilities.values()) == pytest.approx(1.0)
    json.dumps(answer.to_dict(), allow_nan=False)  # valid JSON


def test_head_view_gets_sub_plane_and_the_published_ga(tiny_model, scan):
    predictor = Predictor(tiny_model, plane_prompts=BRAIN_ONLY)
    answer = predictor(scan, spacing_mm=0.15)
    assert answer.plane.label == "brain" and answer.brain_plane["label"] in answer.brain_plane["probabilities"]
    age = answer.gestational_age
    _, spacing_224 = tiny_model.preprocess.with_spacing(scan, 0.15)
    expected = int(decode_top_k_median(score_days(tiny_model, [scan], [spacing_224]))[0])
    assert age.days == expected and age.weeks_days == weeks_days(expected) and age.spacing_224_mm == spacing_224
    assert age.range_days[0] <= age.days <= age.range_days[1]
    assert predictor(scan, spacing_mm=0.15).gestational_age.days == expected  # from the cached text bank
    no_spacing = predictor(scan).gestational_age
    assert no_spacing.days is None and "spacing" in no_spacing.reason
    # An operator who knows the view gets its reading whatever the plane answer (which is still reported).
    other = Predictor(tiny_model, plane_prompts={"abdomen": ["Ultrasound image of the fetal abdomen"]})
    assert other(scan, spacing_mm=0.15).gestational_age is None
    told = other(scan, spacing_mm=0.15, view="brain")
    assert told.plane.label == "abdomen" and told.gestational_age.days == expected and "as asked" in told.notes[0]


def test_calibration_is_for_these_weights_only_and_flags_non_standard(tiny_model, scan):
    from fetalclip.models import create_model
    from fetalclip.tasks.features import model_fingerprint

    classes = ["brain", "abdomen"]
    rng = np.random.default_rng(1)
    logits = rng.normal(15, 1, (80, 2))
    labels = [classes[i % 2] for i in range(80)]
    features = rng.normal(0, 1, (80, tiny_model.embed_dim))
    calibration = fit_calibration(logits, labels, [f"p{i}" for i in range(80)], classes, features=features,
                                  junk_features=rng.normal(3, 1, (40, tiny_model.embed_dim)))
    calibration.model_fingerprint = model_fingerprint(create_model("fetalclip-tiny", seed=7))
    with pytest.raises(CalibrationError, match="calibrate again"):
        Predictor(tiny_model, calibration, plane_prompts={c: [f"fetal {c}"] for c in classes})
    calibration.model_fingerprint = model_fingerprint(tiny_model)
    predictor = Predictor(tiny_model, calibration, plane_prompts={c: [f"fetal {c}"] for c in classes})
    calibration.abstain_threshold = 1e9  # nothing passes: the answer must say "not a standard plane"
    answer = predictor(scan)
    assert answer.plane.calibrated and answer.plane.standard_plane is False and "not one of the standard" in answer.plane.reason
    assert answer.plane.label in answer.plane.prediction_set


def test_predict_command_json_csv_and_skips(tmp_path, scan):
    good, bad = tmp_path / "scan.png", tmp_path / "broken.png"
    Image.fromarray(scan).save(good)
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "answers.json"
    result = CliRunner().invoke(app, ["predict", str(good), "-m", "fetalclip-tiny", "--spacing", "0.15", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scan.png" in result.output and "uncalibrated" in result.output
    saved = json.loads(out.read_text())
    assert saved["schema"] == 1 and saved["predictions"][0]["source"] == str(good)
    skipped = CliRunner().invoke(app, ["predict", str(tmp_path), "-m", "fetalclip-tiny", "--skip-bad",
                                       "--out", str(tmp_path / "answers.csv")])
    assert skipped.exit_code == 0, skipped.output
    rows = (tmp_path / "answers.csv").read_text().splitlines()
    assert rows[0].startswith("source,plane,probability") and len(rows) == 2 and "skipped 1" in skipped.output


def test_sweep_phantom_peaks_at_its_best_frame():
    from fetalclip.sim.sweep import SweepConfig, render_sweep

    config = SweepConfig(seed=3, frames=12, size=96)
    sweep = render_sweep(config, 5)
    assert config.frames // 4 <= sweep.best_frame <= config.frames - 1 - config.frames // 4
    assert int(np.argmax(sweep.weights)) == sweep.best_frame and sweep.weights[sweep.best_frame] == 1.0
    again = render_sweep(config, 5)
    assert all(np.array_equal(a, b) for a, b in zip(sweep.frames, again.frames))  # a pure function of the index
    assert not np.array_equal(sweep.frames[0], sweep.frames[1])  # new speckle every frame
    with pytest.raises(ValueError, match="4 frames"):
        SweepConfig(frames=3)


def test_sweep_reports_every_frame_and_the_best_per_plane(tiny_model, tmp_path):
    from fetalclip.sim.sweep import SweepConfig, render_sweep

    sweep = render_sweep(SweepConfig(seed=1, frames=6, size=96), 0)
    prompts = {"brain": ["Ultrasound image of the fetal brain"], "abdomen": ["Ultrasound image of the fetal abdomen"]}
    predictor = Predictor(tiny_model, plane_prompts=prompts)
    result = predictor.sweep(sweep.frames, spacing_mm=sweep.spacing_mm, source="loop")
    one_by_one = [predictor(frame, spacing_mm=sweep.spacing_mm) for frame in sweep.frames]
    assert [f["plane"] for f in result.frames] == [a.plane.label for a in one_by_one]
    for plane, best in result.best_frames.items():  # the highest probability among the frames answering that plane
        frames = [i for i, a in enumerate(one_by_one) if a.plane.label == plane]
        assert best["frame"] == max(frames, key=lambda i: one_by_one[i].plane.probability)
    if "brain" in result.best_frames:
        assert result.head.gestational_age.days == one_by_one[result.best_frames["brain"]["frame"]].gestational_age.days
    json.dumps(result.to_dict(), allow_nan=False)
    # A frame folder is a sweep too, through the data layer; and through the command.
    folder = tmp_path / "loop"
    folder.mkdir()
    for i, frame in enumerate(sweep.frames):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    assert [f["plane"] for f in predictor.sweep(folder, spacing_mm=sweep.spacing_mm).frames] == [f["plane"] for f in result.frames]
    out = tmp_path / "sweeps.json"
    command = CliRunner().invoke(app, ["predict", str(folder), "--sweep", "-m", "fetalclip-tiny", "--out", str(out)])
    assert command.exit_code == 0, command.output
    saved = json.loads(out.read_text())
    assert len(saved["sweeps"]) == 1 and len(saved["sweeps"][0]["frames"]) == 6 and "best frame" in command.output
