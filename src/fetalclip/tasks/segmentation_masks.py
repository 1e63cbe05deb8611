"""Label maps of samples and the two geometries they live in: the original image and the model's square input.

Masks are trained on in the model's input geometry (centred zero padding to a square, nearest-neighbour resize)
and every prediction goes back to the original image (bilinear on probabilities, crop the padding, argmax), so
metrics and measurements are always taken at the image's own size. Labels are ``0`` background and ``1..K``
structures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError


def sample_mask(sample: dict[str, Any]) -> np.ndarray:
    """The label map (uint8 HxW, 0 = background) of a sample.

    The data layer's ``mask`` key first (HC18: the outline filled to the middle of its line; manifests: the
    ``mask`` column). Without one, an HC18-style outline annotation becomes the rasterised ellipse through it.
    The two agree on HC18 to Dice 0.9999 and 0.006 mm of HC on average.
    """
    if sample.get("mask") is not None:
        return np.asarray(sample["mask"]).astype(np.uint8)
    annotation = (sample.get("metadata") or {}).get("annotation")
    if annotation:
        from ..data.readers import image_to_array, open_image
        from .ellipse import head_mask_from_outline

        outline = image_to_array(open_image(annotation))
        return head_mask_from_outline(outline if outline.ndim == 2 else outline[..., 0])
    raise FetalCLIPError(f"{sample.get('source')}: no segmentation mask (needs a mask, e.g. an HC18 annotation or a mask column)")


def mask_to_model(mask: np.ndarray, size: int = 224) -> np.ndarray:
    """Label map in the model's input geometry: centred zero padding to a square, nearest resize."""
    from PIL import Image

    height, width = mask.shape
    side = max(height, width)
    canvas = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = mask
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.NEAREST))


def probabilities_to_original(probs: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``[K+1, S, S]`` probabilities in model geometry -> label map ``[H, W]`` of the original image."""
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    full = F.interpolate(probs[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]
    return full[:, top : top + height, left : left + width].argmax(dim=0).to(torch.uint8).numpy()


__all__ = ["mask_to_model", "probabilities_to_original", "sample_mask"]
