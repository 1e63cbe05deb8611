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
    a = np.zeros((4, 4), bool); a[:2] = True
    b = np.zeros((4, 4), bool); b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    assert macro_f1(["x", "y"], ["x", "x"]) == pytest.approx((2 / 3 + 0) / 2)
