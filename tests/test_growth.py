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


def test_all_published_quantiles_are_present_and_ordered_over_the_chart():
    from fetalclip.growth import WHO_HC_QUANTILES

    for q in (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975):
        assert q in WHO_HC_QUANTILES
    days = np.arange(14 * 7, 40 * 7 + 1)
    curves = np.stack([who_hc(days, q) for q in WHO_HC_QUANTILES])
    assert np.all(np.diff(curves, axis=0) > 0), "quantile curves cross inside 14-40 weeks"
    assert np.all(np.diff(curves, axis=1) > 0), "a quantile curve decreases with age"


def test_extra_quantiles_use_their_own_coefficients():
    b0, b1, b2, b3 = WHO_HC_COEFFICIENTS[0.1]
    t = 30.0
    assert who_hc(210, 0.1) == pytest.approx(math.exp(b0 + b1 * t + b2 * t**2 + b3 * t**3), rel=1e-12)
    # Inverse of a non-median quantile round-trips as well.
    assert ga_from_hc(who_hc(210, 0.9), 0.9) == pytest.approx(210, abs=0.02)


def test_hadlock_formula_and_its_exact_inverse():
    from fetalclip.growth import hadlock_ga_from_hc, hadlock_hc

    # Hadlock 1984: 8.96 + 0.540 HC + 0.0003 HC^3 weeks, HC in cm. HC 17.5 cm -> 20.018... weeks.
    assert hadlock_ga_from_hc(175.0) == pytest.approx((8.96 + 0.54 * 17.5 + 0.0003 * 17.5**3) * 7, rel=1e-12)
    days = np.array([98.0, 140.0, 203.5, 280.0])
    np.testing.assert_allclose(hadlock_ga_from_hc(hadlock_hc(days)), days, rtol=0, atol=1e-9)
    # It is a different reference from WHO's median, but not wildly so in mid-pregnancy.
    assert abs(float(hadlock_hc(140)) - float(who_hc(140))) < 10
    assert float(hadlock_hc(7 * 8)) == 0.0


def test_inverse_curve_is_built_once_per_quantile():
    from fetalclip.growth import _inverse_curve

    _inverse_curve.cache_clear()
    for _ in range(3):
        ga_from_hc(np.array([150.0, 250.0]))
        ga_from_hc(200.0, 0.5 + 1e-12)  # the same quantile, spelt differently
        ga_from_hc(200.0, 0.975)
    assert _inverse_curve.cache_info().misses == 2
    with pytest.raises(ValueError, match="quantile"):
        ga_from_hc(200.0, 0.33)


def test_who_band_is_one_inclusive_test_between_the_published_quantiles():
    from fetalclip.growth import WHO_HC_BAND, within_who_hc_band
    from fetalclip.metrics import vpr_mask

    days = np.array([140.0, 140.0, 140.0, 200.0, 200.0, 250.0])
    low, high = who_hc(days, 0.025), who_hc(days, 0.975)
    hc = np.array([low[0], high[1], np.nextafter(high[2], np.inf), np.nextafter(low[3], -np.inf), np.nan,
                   who_hc(250.0, 0.5)])
    expected = [True, True, False, False, False, True]
    assert WHO_HC_BAND == (0.025, 0.975)
    assert within_who_hc_band(days, hc).tolist() == expected
    assert vpr_mask(days, hc).tolist() == expected  # the metric asks the same function
    assert bool(within_who_hc_band(200.0, who_hc(200.0, 0.5))) is True  # scalars broadcast too
