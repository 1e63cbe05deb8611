import math

import numpy as np
import pytest

from fetalclip.growth import WHO_HC_COEFFICIENTS, ga_from_hc, who_hc, who_hc_weeks


def test_formula_uses_weeks_and_the_published_coefficients():
    b0, b1, b2, b3 = WHO_HC_COEFFICIENTS[0.5]
    t = 140 / 7
    assert who_hc(140) == pytest.approx(math.exp(b0 + b1 * t + b2 * t**2 + b3 * t**3), rel=1e-12)
    # Kiserud et al. 2017: median HC at 20 weeks is about 175 mm, at 40 weeks about 335 mm.
    assert 170 < float(who_hc_weeks(20)) < 180
    assert 325 < float(who_hc_weeks(40)) < 345


def test_quantiles_are_ordered_over_the_chart():
    days = np.arange(98, 281)
    low, mid, high = (who_hc(days, q) for q in (0.025, 0.5, 0.975))
    assert np.all(low < mid) and np.all(mid < high)
    assert np.all(np.diff(mid) > 0)


def test_inverse_round_trips_and_is_vectorised():
    days = np.array([100.0, 150.5, 200.0, 270.0])
    np.testing.assert_allclose(ga_from_hc(who_hc(days)), days, atol=0.02)
    assert ga_from_hc(who_hc(180.0, 0.975), 0.975) == pytest.approx(180.0, abs=0.02)


def test_unknown_quantile_is_an_error():
    with pytest.raises(ValueError, match="quantile"):
        who_hc(100, 0.33)
