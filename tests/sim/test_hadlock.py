"""Hadlock 1984 abdominal circumference and femur length (appended to fetalclip.growth for the phantom)."""

import numpy as np
import pytest

from fetalclip.growth import hadlock_ac, hadlock_fl


def test_abdominal_circumference_matches_the_published_table():
    # Hadlock et al., Radiology 1984, Table III means (cm); the printed quadratic runs up to ~0.2 cm low at 40 w.
    for weeks, ac_cm in ((14, 7.3), (20, 15.0), (30, 26.1), (40, 35.3)):
        assert float(hadlock_ac(weeks * 7)) / 10 == pytest.approx(ac_cm, abs=0.2)


def test_femur_length_formula_and_growth():
    assert float(hadlock_fl(140)) == pytest.approx(10 * (-3.91 + 0.427 * 20 - 0.0034 * 400))
    assert 31 < float(hadlock_fl(140)) < 35 and 56 < float(hadlock_fl(210)) < 60  # ~3.3 cm at 20 w, ~5.8 cm at 30 w
    days = np.arange(98, 281)
    assert np.all(np.diff(hadlock_ac(days)) > 0) and np.all(np.diff(hadlock_fl(days)) > 0)
