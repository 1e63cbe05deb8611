"""Fetal growth references: WHO fetal growth charts (Kiserud et al., PLoS Med 2017), head circumference.

Each quantile curve is ``HC(mm) = exp(b0 + b1 t + b2 t^2 + b3 t^3)`` with ``t`` the gestational age in weeks.
The coefficients are the published table's, to full precision, because the gestational-age validity metric
(VPR) is decided at the band's edges. The curves are strictly increasing in ``t`` (the derivative of the
cubic has no real root), so the inverse is computed by interpolation on a dense grid rather than root
finding per element, which keeps everything vectorised over numpy arrays.

The Hadlock (1984) regression of gestational age on HC is here too, as the classical single-formula
comparison; it is a mean age for a measured HC, not a quantile band.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

# quantile -> (b0, b1, b2, b3); t in weeks. Kiserud et al. 2017, global (not sex-specific) HC quantile
# regression, all eleven published quantiles (checked against an independent transcription of the same table,
# which agrees digit for digit on the three quantiles the FetalCLIP protocol uses).
WHO_HC_COEFFICIENTS: dict[float, tuple[float, float, float, float]] = {
    0.01: (1.51782795874402, 0.299296859125438, -7.52376152126206e-3, 6.7179373384666e-5),
    0.025: (1.59317517131532, 0.29459800552433, -7.3860372566707e-3, 6.56951770216148e-5),
    0.05: (1.74883945698398, 0.278405280785763, -6.77990950687641e-3, 5.83587774721548e-5),
    0.1: (1.83059537388222, 0.27244251174974, -6.59546864496838e-3, 5.63957469365128e-5),
    0.25: (1.94181945227701, 0.26584757167445, -6.44544904011178e-3, 5.54517813431795e-5),
    0.5: (2.09924879247164, 0.253373656106037, -6.05647816678282e-3, 5.14256072059917e-5),
    0.75: (2.20777451923048, 0.245212320927953, -5.78557948587613e-3, 4.83972618799514e-5),
    0.9: (2.31776999721364, 0.236651510200538, -5.50781288608926e-3, 4.53975879344267e-5),
    0.95: (2.39550106176494, 0.229586666082063, -5.25318141633775e-3, 4.23738937924844e-5),
    0.975: (2.50074069629423, 0.220067854715719, -4.93623111462443e-3, 3.89066000946519e-5),
    0.99: (2.50189533265806, 0.223785148311865, -5.14245402239348e-3, 4.20117020605557e-5),
}

WHO_HC_QUANTILES: tuple[float, ...] = tuple(sorted(WHO_HC_COEFFICIENTS))

# The gestational ages the WHO study measured; the curves are extrapolations outside them.
WHO_CHART_WEEKS = (14.0, 40.0)
# The published protocol computes VPR over images whose reference HC lies in this range (mm).
HC_RANGE_MM = (100.0, 342.0)
# The normal band of the validity test: between these WHO quantiles, edges included.
WHO_HC_BAND = (0.025, 0.975)

# The inverse is tabulated over a span wider than the charts' 14-40 weeks so that extreme measurements map
# to extreme (clipped) ages instead of failing; values outside are clipped to the span's ends.
_GRID_WEEKS = np.linspace(8.0, 45.0, 37 * 700 + 1)


def _quantile_key(quantile: float) -> float:
    """The table's own key for ``quantile`` (so 0.5 and 0.5000000001 share coefficients and cached curves)."""
    for known in WHO_HC_COEFFICIENTS:
        if abs(known - quantile) < 1e-9:
            return known
    raise ValueError(f"no WHO head-circumference coefficients for quantile {quantile}; known: {sorted(WHO_HC_COEFFICIENTS)}")


def _coefficients(quantile: float) -> tuple[float, float, float, float]:
    return WHO_HC_COEFFICIENTS[_quantile_key(quantile)]


# -- Hadlock et al. 1984 (Radiology 152:497-501), for comparison --------------------------------------------
# Mean menstrual age (weeks) for a head circumference (cm): 8.96 + 0.540 HC + 0.0003 HC^3.
HADLOCK_HC_COEFFICIENTS = (8.96, 0.540, 0.0, 0.0003)


def hadlock_ga_from_hc(hc_mm: ArrayLike) -> np.ndarray:
    """Gestational age (days) that Hadlock's 1984 regression assigns to a head circumference (mm)."""
    a0, a1, a2, a3 = HADLOCK_HC_COEFFICIENTS
    hc_cm = np.asarray(hc_mm, dtype=np.float64) / 10.0
    return (a0 + a1 * hc_cm + a2 * hc_cm**2 + a3 * hc_cm**3) * 7.0


def hadlock_hc(ga_days: ArrayLike) -> np.ndarray:
    """Head circumference (mm) whose Hadlock age is ``ga_days``: the regression inverted exactly.

    ``a3 x^3 + a1 x + (a0 - weeks) = 0`` has one real root because the cubic is increasing (``a1, a3 > 0``),
    so Cardano's formula gives it in closed form, vectorised. Ages below the intercept (8.96 weeks) give 0 mm.
    """
    a0, a1, _, a3 = HADLOCK_HC_COEFFICIENTS
    p = a1 / a3
    q = (a0 - np.asarray(ga_days, dtype=np.float64) / 7.0) / a3
    root = np.sqrt(q**2 / 4.0 + p**3 / 27.0)
    hc_cm = np.cbrt(-q / 2.0 + root) + np.cbrt(-q / 2.0 - root)
    return np.maximum(hc_cm, 0.0) * 10.0


# -- WHO curves and their inverse ------------------------------------------------------------------------------
def who_hc_weeks(ga_weeks: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Head circumference (mm) at gestational age ``ga_weeks`` for a WHO quantile."""
    b0, b1, b2, b3 = _coefficients(quantile)
    t = np.asarray(ga_weeks, dtype=np.float64)
    return np.exp(b0 + b1 * t + b2 * t**2 + b3 * t**3)


def who_hc(ga_days: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Head circumference (mm) at gestational age ``ga_days`` (days) for a WHO quantile."""
    return who_hc_weeks(np.asarray(ga_days, dtype=np.float64) / 7.0, quantile)


@lru_cache(maxsize=None)
def _inverse_curve(quantile: float) -> np.ndarray:
    """The tabulated WHO curve of ``quantile`` on ``_GRID_WEEKS``: built once per quantile (26k points), read-only."""
    curve = who_hc_weeks(_GRID_WEEKS, quantile)
    curve.flags.writeable = False
    return curve


def ga_from_hc(hc_mm: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Gestational age (days) at which the WHO ``quantile`` curve reaches ``hc_mm``; clipped to 8-45 weeks."""
    return np.interp(np.asarray(hc_mm, dtype=np.float64), _inverse_curve(_quantile_key(quantile)), _GRID_WEEKS) * 7.0


def within_who_hc_band(ga_days: ArrayLike, hc_mm: ArrayLike) -> np.ndarray:
    """Per element: does ``hc_mm`` lie inside the WHO 2.5-97.5% band at ``ga_days``? (edges count; NaN is outside)

    The one test behind VPR and every per-image "within the WHO band" flag. Arguments broadcast as numpy's do.
    """
    ga, hc = np.asarray(ga_days, dtype=np.float64), np.asarray(hc_mm, dtype=np.float64)
    low, high = WHO_HC_BAND
    return (hc >= who_hc(ga, low)) & (hc <= who_hc(ga, high))


# -- Hadlock abdominal circumference and femur length --------------------------------------------------------
# Hadlock FP, Deter RL, Harrist RB, Park SK. Estimating fetal age: computer-assisted analysis of multiple fetal
# growth parameters. Radiology 1984;152:497-501, Table III footnotes (means in cm, MA = menstrual age in weeks):
#   AC = -13.3 + 1.61 MA - 0.00998 MA^2 (1 SD = 1.34 cm);  FL = -3.91 + 0.427 MA - 0.0034 MA^2.
# The WHO charts above have no abdominal or femur curves that the synthetic phantom could share with the head,
# so these fill that gap; they are means only (no quantiles) and were fitted on 14-42 weeks.
HADLOCK_AC_CM: tuple[float, float, float] = (-13.3, 1.61, -0.00998)
HADLOCK_FL_CM: tuple[float, float, float] = (-3.91, 0.427, -0.0034)


def _hadlock_mm(ga_days: ArrayLike, coefficients: tuple[float, float, float]) -> np.ndarray:
    c0, c1, c2 = coefficients
    t = np.asarray(ga_days, dtype=np.float64) / 7.0
    return 10.0 * (c0 + c1 * t + c2 * t**2)


def hadlock_ac(ga_days: ArrayLike) -> np.ndarray:
    """Mean abdominal circumference (mm) at gestational age ``ga_days`` (Hadlock 1984)."""
    return _hadlock_mm(ga_days, HADLOCK_AC_CM)


def hadlock_fl(ga_days: ArrayLike) -> np.ndarray:
    """Mean femur length (mm) at gestational age ``ga_days`` (Hadlock 1984)."""
    return _hadlock_mm(ga_days, HADLOCK_FL_CM)
