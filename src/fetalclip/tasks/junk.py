"""Images that are no ultrasound view at all: the outlier exposure the abstain threshold is fitted against.

Noise, blanks, flat grey, gradients, stripes, checkerboards, blobs and speckle-free drawings, each of a random
size and aspect. They stand in for what reaches a deployed model by mistake (a photo of a screen, a test card,
an empty frame); seeded, so a calibration can be refitted exactly.
"""

from __future__ import annotations

import numpy as np

JUNK_KINDS = ("noise", "blank", "grey", "gradient", "stripes", "checkerboard", "blobs", "speckle-free")


def junk_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 images that are no ultrasound view at all, of ``JUNK_KINDS`` in turn (the outlier exposure),
    each of a random size and aspect (the model sees them resized, and small noise resizes to a blur)."""
    rng = np.random.default_rng([seed, 77])
    images = []
    for i in range(n):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        shape = h, w = int(rng.integers(48, 640)), int(rng.integers(48, 640))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        if kind == "noise":
            image = rng.integers(0, 256, shape)
        elif kind == "blank":
            image = np.zeros(shape)
        elif kind == "grey":
            image = np.full(shape, rng.integers(30, 256))
        elif kind == "gradient":
            angle = rng.uniform(0, np.pi)
            image = 255 * ((np.cos(angle) * xx + np.sin(angle) * yy) % 1.0)
        elif kind == "stripes":
            image = 255 * (np.sin(2 * np.pi * rng.uniform(3, 40) * (xx if rng.random() < 0.5 else yy)) > 0)
        elif kind == "checkerboard":
            k = rng.uniform(4, 30)
            image = 255 * ((np.floor(k * xx) + np.floor(k * yy)) % 2)
        elif kind == "blobs":
            image = np.zeros(shape)
            for _ in range(int(rng.integers(2, 8))):
                cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
                image += rng.uniform(80, 255) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
        else:  # smooth shapes without speckle: a drawing, not a scan
            image = 127 + 127 * np.sin(2 * np.pi * rng.uniform(1, 4) * xx) * np.cos(2 * np.pi * rng.uniform(1, 4) * yy)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images
