"""Fetal growth references: WHO fetal growth charts (Kiserud et al., PLoS Med 2017), head circumference.

Each quantile curve is ``HC(mm) = exp(b0 + b1 t + b2 t^2 + b3 t^3)`` with ``t`` the gestational age in weeks.
The coefficients are the published table's, to full precision, because the gestational-age validity metric
(VPR) is decided at the band's edges. The curves are strictly increasing in ``t`` (the derivative of the
cubic has no real root), so the inverse is computed by interpolation on a dense grid rather than root
finding per element, which keeps everything vectorised over numpy arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# quantile -> (b0, b1, b2, b3); t in weeks.
WHO_HC_COEFFICIENTS: dict[float, tuple[float, float, float, float]] = {
    0.025: (1.59317517131532, 0.29459800552433, -7.3860372566707e-3, 6.56951770216148e-5),
    0.5: (2.09924879247164, 0.253373656106037, -6.05647816678282e-3, 5.14256072059917e-5),
    0.975: (2.50074069629423, 0.220067854715719, -4.93623111462443e-3, 3.89066000946519e-5),
}

# The inverse is tabulated over a span wider than the charts' 14-40 weeks so that extreme measurements map
# to extreme (clipped) ages instead of failing; values outside are clipped to the span's ends.
_GRID_WEEKS = np.linspace(8.0, 45.0, 37 * 700 + 1)


def _coefficients(quantile: float) -> tuple[float, float, float, float]:
    for known, coefficients in WHO_HC_COEFFICIENTS.items():
        if abs(known - quantile) < 1e-9:
            return coefficients
    raise ValueError(f"no WHO head-circumference coefficients for quantile {quantile}; known: {sorted(WHO_HC_COEFFICIENTS)}")


def who_hc_weeks(ga_weeks: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Head circumference (mm) at gestational age ``ga_weeks`` for a WHO quantile."""
    b0, b1, b2, b3 = _coefficients(quantile)
    t = np.asarray(ga_weeks, dtype=np.float64)
    return np.exp(b0 + b1 * t + b2 * t**2 + b3 * t**3)


def who_hc(ga_days: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Head circumference (mm) at gestational age ``ga_days`` (days) for a WHO quantile."""
    return who_hc_weeks(np.asarray(ga_days, dtype=np.float64) / 7.0, quantile)


def ga_from_hc(hc_mm: ArrayLike, quantile: float = 0.5) -> np.ndarray:
    """Gestational age (days) at which the WHO ``quantile`` curve reaches ``hc_mm``; clipped to 8-45 weeks."""
    curve = who_hc_weeks(_GRID_WEEKS, quantile)
    return np.interp(np.asarray(hc_mm, dtype=np.float64), curve, _GRID_WEEKS) * 7.0


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
