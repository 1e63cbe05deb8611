"""Pretraining augmentation: the mild photometric/geometric one, and one that imitates other scanners (issue 20).

The features a foundation model learns must carry to machines, presets and hospitals it never saw. On ~1,000
training images the cheapest shortcuts are the look of each source (its gain curve, its sector shape, its
burned-in text, its zoom). ``UltrasoundAugmentation`` varies exactly those, each independently and seeded by
the sample's position like everything else in the data order:

- framing: a random resized crop (scale and aspect jitter), a left-right flip (probe orientation is arbitrary;
  none of the planes changes meaning in a mirror) and a small rotation;
- the scanner's grey-level curve: gain, gamma and contrast;
- image quality: multiplicative speckle-like noise (smoothed, so it is grainy rather than per-pixel) and a
  loss of resolution (down- and up-sampling), the two ways a cheaper or older machine differs;
- the frame: a random fan-shaped sector mask (apex, opening angle and depth jittered) and a few bright marks
  of burned-in text and calipers at random places, so neither the sector outline nor the overlay identifies a
  source.

Every operation works on the grey level (one channel) and the result is replicated to RGB at the end; all are
PIL/numpy operations on a 224-pixel image, ~2 ms per sample on one core, so augmenting does not slow a CPU step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from ..sim.burn import overlay_font

AUGMENTS = ("none", "mild", "ultrasound")


def augment_name(value) -> str:
    """The recipe's ``augment`` value as one of :data:`AUGMENTS` (old recipes said ``true``/``false``)."""
    text = str(value).strip().lower()
    if text in ("false", "0", "no", "off", "none", ""):
        return "none"
    if text in ("true", "1", "yes", "on", "mild"):
        return "mild"
    return text


@dataclass(frozen=True)
class Augmentation:
    """Mild, label-preserving pretraining augmentation, applied to the padded square before resizing."""

    crop_scale: tuple[float, float] = (0.75, 1.0)
    max_rotation_deg: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2

    def source_side(self, size: int) -> int:
        """Side of the square to augment from: the smallest crop still has ``size`` pixels, so none is upsampled."""
        return int(np.ceil(size / np.sqrt(self.crop_scale[0])))

    def __call__(self, square, rng: np.random.Generator, size: int, resample):
        side = square.size[0]
        scale = rng.uniform(*self.crop_scale)
        crop = max(1, int(round(side * np.sqrt(scale))))
        left, top = (int(rng.integers(0, side - crop + 1)) for _ in range(2))
        image = square.crop((left, top, left + crop, top + crop)).resize((size, size), resample)
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
        image = ImageEnhance.Brightness(image).enhance(1.0 + rng.uniform(-self.brightness, self.brightness))
        return ImageEnhance.Contrast(image).enhance(1.0 + rng.uniform(-self.contrast, self.contrast))


_OVERLAY_CHARS = "0123456789ABCDEFGHKLMNPRSTUVWXYZ.:/- "


@dataclass(frozen=True)
class UltrasoundAugmentation:
    """Other scanners' looks on our images: framing, grey-level curve, quality, sector and overlay (see module)."""

    crop_scale: tuple[float, float] = (0.45, 1.0)
    aspect: tuple[float, float] = (0.8, 1.25)
    flip_p: float = 0.5
    max_rotation_deg: float = 15.0
    gain: tuple[float, float] = (0.6, 1.4)
    gamma: tuple[float, float] = (0.65, 1.5)
    contrast: tuple[float, float] = (0.7, 1.3)
    noise_p: float = 0.5
    noise_sigma: tuple[float, float] = (0.05, 0.3)
    lowres_p: float = 0.3
    lowres_factor: tuple[float, float] = (1.5, 3.0)
    sector_p: float = 0.3
    overlay_p: float = 0.4

    def source_side(self, size: int) -> int:
        return int(np.ceil(size / np.sqrt(self.crop_scale[0])))

    def __call__(self, square, rng: np.random.Generator, size: int, resample):
        image = self._frame(square.convert("L"), rng, size, resample)
        pixels = self._grey_curve(np.asarray(image, dtype=np.float32) / 255.0, rng)
        if rng.random() < self.noise_p:
            pixels = self._speckle(pixels, rng)
        image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if rng.random() < self.lowres_p:
            small = max(8, int(round(size / rng.uniform(*self.lowres_factor))))
            image = image.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < self.sector_p:
            image = self._sector(image, rng)
        if rng.random() < self.overlay_p:
            image = self._overlay(image, rng)
        return image.convert("RGB")

    def _frame(self, square, rng, size, resample):
        side = square.size[0]
        area = rng.uniform(*self.crop_scale) * side * side
        ratio = math.exp(rng.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        width = min(side, max(1, int(round(math.sqrt(area * ratio)))))
        height = min(side, max(1, int(round(math.sqrt(area / ratio)))))
        left, top = int(rng.integers(0, side - width + 1)), int(rng.integers(0, side - height + 1))
        image = square.crop((left, top, left + width, top + height)).resize((size, size), resample)
        if rng.random() < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)

    def _grey_curve(self, x: np.ndarray, rng) -> np.ndarray:
        x = np.power(x, rng.uniform(*self.gamma), dtype=np.float32) * rng.uniform(*self.gain)
        mean = float(x.mean())
        return np.clip((x - mean) * rng.uniform(*self.contrast) + mean, 0.0, 1.0)

    def _speckle(self, x: np.ndarray, rng) -> np.ndarray:
        # Multiplicative, as speckle is; a 2x2 box over the noise makes it grain of ~2 pixels at 224 px.
        noise = rng.standard_normal(x.shape).astype(np.float32)
        grain = noise + np.roll(noise, 1, 0)
        grain = grain + np.roll(grain, 1, 1)
        grain = grain / max(float(grain.std()), 1e-6)
        return np.clip(x * (1.0 + rng.uniform(*self.noise_sigma) * grain), 0.0, 1.0)

    def _sector(self, image, rng):
        size = image.size[0]
        mask = Image.new("L", image.size, 0)
        apex = (size * rng.uniform(0.4, 0.6), -size * rng.uniform(0.0, 0.3))
        half_angle = rng.uniform(30.0, 50.0)
        radius = size * rng.uniform(1.0, 1.4)
        start, end = 90.0 - half_angle, 90.0 + half_angle  # PIL angles: 0 = +x, clockwise, y down
        box = (apex[0] - radius, apex[1] - radius, apex[0] + radius, apex[1] + radius)
        ImageDraw.Draw(mask).pieslice(box, start, end, fill=255)
        return Image.composite(image, Image.new("L", image.size, 0), mask)

    def _overlay(self, image, rng):
        size = image.size[0]
        draw = ImageDraw.Draw(image)
        level = int(rng.integers(180, 256))
        for _ in range(int(rng.integers(1, 4))):  # lines of scanner text
            text = "".join(rng.choice(list(_OVERLAY_CHARS), size=int(rng.integers(4, 12))))
            draw.text((int(rng.integers(0, size - 40)), int(rng.integers(0, size - 10))), text, fill=level, font=overlay_font())
        for _ in range(int(rng.integers(0, 3))):  # caliper crosses
            x, y, arm = int(rng.integers(10, size - 10)), int(rng.integers(10, size - 10)), int(rng.integers(2, 5))
            draw.line((x - arm, y, x + arm, y), fill=level)
            draw.line((x, y - arm, x, y + arm), fill=level)
        return image


def make_augmentation(name: str):
    """The augmentation a recipe's ``augment`` names (``None`` for ``none``)."""
    name = augment_name(name)
    if name == "none":
        return None
    if name == "mild":
        return Augmentation()
    if name == "ultrasound":
        return UltrasoundAugmentation()
    raise ValueError(f"augment must be one of {AUGMENTS}, not {name!r}")


__all__ = ["AUGMENTS", "Augmentation", "UltrasoundAugmentation", "augment_name", "make_augmentation"]
