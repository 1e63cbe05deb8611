"""Burning a scanner's overlay into the pixels: corner text, a depth ruler with 1 cm ticks, caliper crosses.

Drawn after scan conversion, as a scanner does, so cleaning (``data.cleaning``) meets the same burned-in
marks it meets on real exports.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def overlay_font():
    """PIL's built-in bitmap font (no font file to find): the scanner text here and in pretraining augmentation."""
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def burn_overlay(image: np.ndarray, plan: Any) -> np.ndarray:
    """Scanner text in the top corners, a depth ruler with 1 cm ticks and caliper crosses, burned into pixels.

    ``plan`` is a ``render.Plan`` with an ``overlay`` (typed loosely so this module does not import its caller).
    """
    from PIL import Image, ImageDraw

    ov = plan.overlay
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = overlay_font()
    for row, text in enumerate(ov.text_left):
        draw.text((2, 1 + 10 * row), text, fill=ov.brightness, font=font)
    for row, text in enumerate(ov.text_right):
        draw.text((plan.width - 2 - 6 * len(text), 1 + 10 * row), text, fill=ov.brightness, font=font)
    out = np.array(canvas)
    if ov.ruler:
        s = plan.sector
        step_cm = 1 if 10 / plan.spacing_mm >= 4 else 5
        x = plan.width - 4
        for k in range(int((s.r_max - s.r_min) * plan.spacing_mm / (10 * step_cm)) + 1):
            y = int(round(s.apex_y + s.r_min + k * 10 * step_cm / plan.spacing_mm))
            if 0 <= y < plan.height:
                out[y, x - (3 if k % 5 == 0 else 1): x + 1] = ov.brightness
    arm = max(2, plan.width // 128)
    for cx, cy in ov.calipers:
        x, y = int(round(cx)), int(round(cy))
        if arm <= x < plan.width - arm and arm <= y < plan.height - arm:
            out[y, x - arm: x + arm + 1] = ov.brightness
            out[y - arm: y + arm + 1, x] = ov.brightness
    return out
