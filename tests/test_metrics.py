import numpy as np
import pytest

from fetalclip.growth import who_hc
from fetalclip.metrics import auroc, bootstrap_ci, classification_report, dice, macro_f1, vpr


def test_macro_f1_ignores_distractors_without_ground_truth():
    y_true = ["brain", "brain", "femur", "femur"]
    y_pred = ["brain", "spine", "femur", "brain"]  # "spine" is a distractor class
    report = classification_report(y_true, y_pred, labels=["brain", "femur", "spine"], ci=False)
    # brain: tp1 fp1 fn1 -> F1 0.5; femur: tp1 fp0 fn1 -> P1 R0.5 F1 2/3; spine gets no F1 of its own.
    assert report["eval_labels"] == ["brain", "femur"]
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert report["balanced_accuracy"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]


def test_top_k_from_scores():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
    report = classification_report(["a", "b"], ["a", "c"], labels=["a", "b", "c"], scores=scores, ci=False)
    assert report["top_k"] == {"top1": 0.5, "top2": 1.0, "top3": 1.0}


def test_bootstrap_is_reproducible_and_uses_per_resample_draws():
    values = np.arange(25, dtype=float)
    first = bootstrap_ci(np.mean, values, n=500, seed=42)
    assert first == bootstrap_ci(np.mean, values, n=500, seed=42)
    assert first != bootstrap_ci(np.mean, values, n=500, seed=7)
    rng = np.random.default_rng(42)
    stats = [values[rng.choice(25, 25, replace=True)].mean() for _ in range(500)]
    assert first == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))


def test_vpr_counts_only_the_hc_range():
    ga = np.array([140.0, 140.0, 200.0, 100.0])
    hc = np.array([float(who_hc(140)), float(who_hc(140, 0.975)) + 5.0, 50.0, 400.0])
    result = vpr(ga, hc, n_bootstrap=200)
    # Image 3 (50 mm) and 4 (400 mm) are outside [100, 342]; of the other two one is within the band.
    assert result["n_evaluated"] == 2 and result["n_valid"] == 1 and result["vpr"] == pytest.approx(50.0)


def test_auroc_and_dice():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    assert macro_f1(["x", "y"], ["x", "x"]) == pytest.approx((2 / 3 + 0) / 2)


def test_per_class_scores_by_hand_with_distractor_predictions():
    # Five images of two true classes; the classifier also offers the distractors "kidney" and "spine".
    y_true = ["abdomen", "abdomen", "abdomen", "femur", "femur"]
    y_pred = ["abdomen", "kidney", "femur", "femur", "spine"]
    report = classification_report(y_true, y_pred, labels=["abdomen", "femur", "kidney", "spine"], ci=False)
    abdomen, femur = report["per_class"]["abdomen"], report["per_class"]["femur"]
    # abdomen: tp 1, fp 0, fn 2 -> P 1, R 1/3, F1 0.5.  femur: tp 1, fp 1, fn 1 -> P R F1 all 0.5.
    assert (abdomen["precision"], abdomen["recall"], abdomen["f1"]) == pytest.approx((1.0, 1 / 3, 0.5))
    assert (femur["precision"], femur["recall"], femur["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert abdomen["support"] == 3 and femur["support"] == 2
    assert set(report["per_class"]) == {"abdomen", "femur"}
    assert report["macro_f1"] == pytest.approx(0.5)
    assert report["accuracy"] == pytest.approx(2 / 5)
    # Offering the distractors changes nothing but the predictions: the average stays over true classes.
    assert macro_f1(y_true, y_pred) == pytest.approx(0.5)


def test_macro_f1_matches_sklearn_over_the_evaluated_labels():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels = ["a", "b", "c", "d", "e"]
    y_true = rng.choice(labels[:3], 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.choice(labels, 300))
    expected = f1_score(y_true, y_pred, labels=labels[:3], average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred, labels[:3]) == pytest.approx(expected, abs=1e-12)
    assert classification_report(y_true, y_pred, labels, ci=False)["macro_f1"] == pytest.approx(expected, abs=1e-12)


def test_classification_ci_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(5)
    y_true = rng.choice(["x", "y", "z"], 200)
    y_pred = np.where(rng.random(200) < 0.8, y_true, rng.choice(["x", "y", "z", "w"], 200))
    first = classification_report(y_true, y_pred, ["x", "y", "z", "w"], n_bootstrap=300)
    second = classification_report(y_true, y_pred, ["x", "y", "z", "w"], n_bootstrap=300)
    assert first["macro_f1_ci"] == second["macro_f1_ci"]
    low, high = first["macro_f1_ci"]
    assert low < first["macro_f1"] < high
    # The same interval as the slow definition: F1 recomputed from labels on each per-resample draw.
    manual = bootstrap_ci(lambda t, p: macro_f1(t, p, ["x", "y", "z"]), y_true, y_pred, n=300, seed=42)
    assert tuple(first["macro_f1_ci"]) == pytest.approx(manual, abs=1e-12)


def test_unknown_labels_are_errors():
    with pytest.raises(ValueError, match="not among"):
        classification_report(["brain", "moon"], ["brain", "brain"], labels=["brain", "femur"], ci=False)
    with pytest.raises(ValueError, match="not among"):
        classification_report(["brain"], ["moon"], labels=["brain", "femur"], ci=False)
    with pytest.raises(ValueError, match="shape"):
        classification_report(["brain"], ["brain"], labels=["brain", "femur"], scores=np.zeros((1, 3)), ci=False)


def test_vpr_band_and_range_edges_are_inclusive_and_its_ci_reproducible():
    low_edge = float(who_hc(150, 0.025))
    high_edge = float(who_hc(150, 0.975))
    ga = np.full(6, 150.0)
    # In range: exactly the lower band edge (valid), exactly the upper (valid), just above it (invalid),
    # and HC exactly 100 and 342 mm (in range; 100 mm is far below the band at 150 days). Out of range: 99.9.
    hc = np.array([low_edge, high_edge, high_edge + 1e-6, 100.0, 342.0, 99.9])
    result = vpr(ga, hc, n_bootstrap=500)
    assert result["n_total"] == 6 and result["n_evaluated"] == 5 and result["n_valid"] == 2
    assert result["vpr"] == pytest.approx(40.0)
    assert result["ci"] == vpr(ga, hc, n_bootstrap=500)["ci"]
    valid = np.array([1, 1, 0, 0, 0], dtype=float)
    assert tuple(result["ci"]) == pytest.approx(bootstrap_ci(lambda v: 100 * v.mean(), valid, n=500, seed=42))
