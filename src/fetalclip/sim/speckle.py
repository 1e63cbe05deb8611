"""The scanner's speckle: a fully developed complex Gaussian scattering field seen through a Gaussian PSF.

Numpy only (no SciPy): the PSF is a short separable kernel, applied as a sum of shifted slices, which for a few
taps matches a library convolution in speed. Kernel widths are quantised so their cache stays small.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def quantise_psf(sigma: float) -> float:
    """PSF widths on a 0.05 grid, capped at 4 samples: few distinct kernels, so their cache stays small."""
    return round(min(sigma, 4.0) * 20) / 20


@lru_cache(maxsize=128)
def _kernel(sigma: float) -> np.ndarray:
    """Gaussian PSF taps with unit L2 norm, so filtered white noise keeps unit variance."""
    half = max(1, math.ceil(2.5 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / np.sqrt(np.sum(k**2))).astype(np.float32)


def _correlate(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlate with a short symmetric kernel along ``axis``, edges extended (numpy only: no SciPy needed).

    A sum of shifted slices: for the few taps of a PSF this matches a library convolution in speed.
    """
    half = len(taps) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (half, half)
    padded = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    index = [slice(None)] * x.ndim
    out = None
    for k, weight in enumerate(taps):
        index[axis] = slice(k, k + n)
        term = padded[tuple(index)] * weight
        out = term if out is None else out + term
    return out


def smooth_profile(rng: np.random.Generator, n: int, strength: float) -> np.ndarray:
    x = _correlate(rng.standard_normal(n), _kernel(max(1.0, round(n / 10))), axis=0)
    return (strength * x / (np.std(x) + 1e-9)).astype(np.float32)


def speckle(
    echo: np.ndarray, specular: np.ndarray, psf_depth: float, psf_lateral: float, rng: np.random.Generator
) -> np.ndarray:
    """Envelope of a fully developed speckle field plus coherent specular echoes, on a (depth, line) grid.

    Many sub-resolution scatterers per cell make the received signal a circular complex Gaussian with power
    ``echo``; the PSF (separable Gaussian, ``psf_*`` in samples and lines, unit L2 norm so uniform tissue keeps
    its power) correlates it over the resolution cell. Specular echoes add in phase. Where ``specular`` is
    zero the magnitude is Rayleigh distributed (mean / std = 1.91).
    """
    z = rng.standard_normal((2, *echo.shape), dtype=np.float32)
    z *= np.sqrt(echo, dtype=np.float32)
    z = _correlate(z, _kernel(psf_depth), axis=1)
    z = _correlate(z, _kernel(psf_lateral), axis=2)
    z[0] += specular
    return np.sqrt(z[0] * z[0] + z[1] * z[1])  # np.hypot is several times slower
