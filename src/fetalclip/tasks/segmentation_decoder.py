"""The segmentation decoder (a light UNETR-style network on frozen ViT token grids), its files, and ``Segmenter``:
a trained decoder with the encoder blocks it taps, which turns images into label maps at their original size.

The decoder takes four evenly spaced transformer blocks (token grids) and the input image. Each block is
projected by a 1x1 convolution, brought to its scale (1/16 ... 1/2) by bilinear upsampling, and merged
bottom-up with depthwise-separable convolution blocks; a full-resolution image branch restores edges the
16-pixel tokens cannot carry. Token grids are first resized to 14x14 (ViT-L/14 gives 16x16, as published), so
one decoder shape serves every encoder. With the default widths it has about 1.6M parameters on ViT-L (width
1024) and far fewer on the tiny model.

A saved probe is a folder: ``decoder.safetensors`` + ``segmenter.json`` (decoder config, the encoder's name,
weight fingerprint and taps, the working size). ``fetalclip probe segment --save DIR`` writes one; the
benchmark keeps one per (encoder, data, options, seed) under its cache folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FetalCLIPError
from .segmentation_masks import probabilities_to_original

GRID = 14
DEFAULT_CHANNELS = (416, 256, 128, 64, 32)  # ~1.58M parameters on ViT-L (width 1024)
PREDICT_BATCH = 16


class SeparableBlock(nn.Module):
    """Two depthwise-separable 3x3 convolutions (depthwise, pointwise, norm, GELU)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        layers = []
        for cin in (in_channels, out_channels):
            layers += [
                nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                nn.Conv2d(cin, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.GELU(),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNETRLiteDecoder(nn.Module):
    """Four token grids (shallow -> deep) + image -> per-pixel logits for ``n_classes`` (background included)."""

    def __init__(self, width: int, n_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS, in_image_channels: int = 3):
        super().__init__()
        c_deep, c28, c56, c112, c_img = channels
        self.config = {"width": width, "n_classes": n_classes, "channels": list(channels), "in_image_channels": in_image_channels}
        self.project = nn.ModuleList(nn.Conv2d(width, c, 1) for c in (c112, c56, c28, c_deep))
        self.deep = SeparableBlock(c_deep, c_deep)
        self.up28 = SeparableBlock(c_deep + c28, c28)
        self.up56 = SeparableBlock(c28 + c56, c56)
        self.up112 = SeparableBlock(c56 + c112, c112)
        self.image = SeparableBlock(in_image_channels, c_img)
        self.up224 = SeparableBlock(c112 + c_img, c_img)
        self.head = nn.Conv2d(c_img, n_classes, 1)

    def forward(self, blocks: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``blocks`` ``[B, 4, W, 14, 14]`` (shallow first), ``image`` ``[B, 3, S, S]`` -> logits ``[B, K+1, S, S]``."""
        size = image.shape[-1]
        z1, z2, z3, z4 = (blocks[:, i].float() for i in range(4))

        def up(x: torch.Tensor, s: int) -> torch.Tensor:
            return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

        x = self.deep(self.project[3](z4))
        x = self.up28(torch.cat([up(x, size // 8), up(self.project[2](z3), size // 8)], 1))
        x = self.up56(torch.cat([up(x, size // 4), up(self.project[1](z2), size // 4)], 1))
        x = self.up112(torch.cat([up(x, size // 2), up(self.project[0](z1), size // 2)], 1))
        x = self.up224(torch.cat([up(x, size), self.image(image)], 1))
        return self.head(x)


def count_decoder_parameters(width: int, n_classes: int = 2, channels: Sequence[int] = DEFAULT_CHANNELS) -> int:
    return sum(p.numel() for p in UNETRLiteDecoder(width, n_classes, channels).parameters())


def to_grid(blocks: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """``[B, T, W, h, w]`` token grids resized to ``grid`` x ``grid`` (a no-op for 224/16 encoders)."""
    if blocks.shape[-1] == grid and blocks.shape[-2] == grid:
        return blocks
    b, t, w, h, ww = blocks.shape
    out = F.interpolate(blocks.reshape(b, t * w, h, ww).float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return out.reshape(b, t, w, grid, grid)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """1 - mean soft Dice over the foreground labels (batch-pooled, as the pooled test Dice)."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice_per_class = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice_per_class[1:].mean()


def normalise_images(images: np.ndarray, mean, std, size: int | None = None) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> normalised ``[N, 3, size, size]`` (antialiased resize when ``size`` differs)."""
    x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)



# -- saving and loading a trained probe ------------------------------------------------------------------------
def save_decoder(out_dir, decoder: UNETRLiteDecoder, encoder: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """``decoder.safetensors`` + ``segmenter.json`` (decoder config, encoder reference and fingerprint, taps)."""
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "decoder.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(tmp))
    write_json_atomic(out / "segmenter.json", {"format": "fetalclip-segmenter", "format_version": 1,
                                                "decoder": decoder.config, "encoder": encoder, **(extra or {})})
    return out


def load_decoder(run_dir) -> tuple[UNETRLiteDecoder, dict[str, Any]]:
    from safetensors.torch import load_file

    run = Path(run_dir)
    meta_path, weights = run / "segmenter.json", run / "decoder.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FetalCLIPError(f"{run}: not a segmentation probe run (needs segmenter.json and decoder.safetensors)")
    meta = json.loads(meta_path.read_text())
    config = meta["decoder"]
    decoder = UNETRLiteDecoder(config["width"], config["n_classes"], config["channels"], config.get("in_image_channels", 3))
    try:
        decoder.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise FetalCLIPError(f"{weights}: weights do not fit the decoder in segmenter.json ({exc})") from exc
    return decoder.eval(), meta


# -- a trained probe as a label-map predictor --------------------------------------------------------------------
@dataclass
class Segmenter:
    """A trained decoder, the encoder blocks it reads (``taps``) and its working resolution (``size``)."""

    decoder: UNETRLiteDecoder
    taps: list[int]
    size: int
    meta: dict[str, Any] | None = None  # segmenter.json of a loaded probe

    @classmethod
    def load(cls, folder, device: str | torch.device = "cpu") -> "Segmenter":
        decoder, meta = load_decoder(folder)
        return cls(decoder.to(device), list(meta["encoder"]["taps"]), int(meta.get("size", 224)), meta)

    @classmethod
    def for_model(cls, segmenter: "Segmenter | str | os.PathLike", model, fingerprint: str) -> "Segmenter":
        """``segmenter`` (a probe folder or a ``Segmenter``) for ``model``, whose weights have ``fingerprint``:
        refused when its decoder was trained on other weights or taps blocks the model does not have."""
        where = segmenter if isinstance(segmenter, (str, os.PathLike)) else "segmenter"
        if isinstance(segmenter, (str, os.PathLike)):
            segmenter = cls.load(segmenter, model.device)
        if segmenter.fingerprint is not None and segmenter.fingerprint != fingerprint:
            raise FetalCLIPError(f"{where}: its decoder was trained on other weights than {model.name}'s "
                                 f"(fingerprint {segmenter.fingerprint[:12]} vs {fingerprint[:12]})")
        count = model.image_block_count
        if count is None or max(segmenter.taps) >= count:
            raise FetalCLIPError(f"{where}: taps blocks {segmenter.taps}, which {model.name} does not have")
        return segmenter

    @property
    def fingerprint(self) -> str | None:
        """The weight fingerprint of the encoder the decoder was trained on (a loaded probe's)."""
        return ((self.meta or {}).get("encoder") or {}).get("fingerprint")

    @torch.no_grad()
    def probabilities(self, blocks: np.ndarray, images: np.ndarray, mean, std) -> Iterator[torch.Tensor]:
        """Per image, ``[K+1, size, size]`` probabilities in model geometry from cached blocks and model images."""
        self.decoder.eval()
        device = next(self.decoder.parameters()).device
        for start in range(0, len(blocks), PREDICT_BATCH):
            index = np.arange(start, min(start + PREDICT_BATCH, len(blocks)))
            grids = to_grid(torch.as_tensor(blocks[index])).to(device)
            logits = self.decoder(grids, normalise_images(images[index], mean, std, self.size).to(device))
            yield from logits.softmax(dim=1).cpu()

    def label_maps(self, cache, dataset) -> list[np.ndarray]:
        """The predicted label map (uint8, original size) of every record, from ``cache`` (the encoder's features)."""
        features = cache.blocks(dataset, self.taps)
        config = cache.model.preprocess.config
        shapes = [tuple(np.asarray(dataset[i]["image"]).shape[:2]) for i in range(len(dataset))]
        return [probabilities_to_original(probs, *shape)
                for probs, shape in zip(self.probabilities(features.blocks, features.images, config.mean, config.std), shapes)]


def load_segmenter(folder, device: str | torch.device = "cpu") -> Segmenter:
    """A saved segmentation probe (``probe segment --save DIR``), ready to predict label maps."""
    return Segmenter.load(folder, device)


__all__ = ["DEFAULT_CHANNELS", "GRID", "Segmenter", "load_segmenter", "SeparableBlock", "UNETRLiteDecoder", "count_decoder_parameters",
           "load_decoder", "normalise_images", "save_decoder", "soft_dice_loss", "to_grid"]
