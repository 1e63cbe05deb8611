"""Class-activation maps for ViT and convolutional image encoders, conditioned on text prompts.

A map answers "where in this image is the evidence that it matches class C", with C given as prompts
(``{class: [prompt, ...]}``, the zero-shot class vector: normalised mean of normalised prompt embeddings).
Two methods work on the tokens entering the last transformer block (the output of its first LayerNorm, the
layer the published FetalCLIP figures used), reshaped to the patch grid:

- ``gradcam`` (default): each token's activations times their gradient of the target's margin over the
  other classes of the prompt set (zero-shot logits, 100 x cosine; see ``_margin``), summed over channels;
  one forward and one backward pass per batch, so it is cheap enough for reports.
- ``scorecam``: the published figures' method (Wang et al. 2020). Each channel, min-max scaled to [0, 1] and
  upsampled, masks the input; its weight is the gain in the target's margin over a fully masked input.
  Gradient-free, but it costs one forward pass per channel (1,024 for ViT-L).

Both keep the positive part of the map. Gradients are taken with respect to the hooked
activations only (``torch.autograd.grad``), so parameters' ``.grad`` stay untouched and frozen models work.
The hooked layer comes from the model layer (``models.layers.cam_layer``: open_clip's ViT or a timm trunk,
the last block's first norm, with the class/register tokens dropped before reshaping; open_clip's
ModifiedResNet, the output of its last stage, as CNN Grad-CAM hooks).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError
from ..models.layers import cam_layer

METHODS = ("gradcam", "scorecam")


@dataclass
class CamResult:
    """One image's map for one target class."""

    cam: np.ndarray  # [h, w] float32 on the patch grid, >= 0, scaled so its maximum is 1 (all zero: no evidence)
    target: str
    predicted: str
    scores: dict[str, float]  # class -> zero-shot logit (100 x cosine) of the unmasked image
    method: str
    model_image: np.ndarray | None = field(default=None, repr=False)  # the HxWx3 uint8 input the model saw


# -- prompts ---------------------------------------------------------------------------------------------------
def load_prompt_set(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a JSON prompt set ``{class: [prompt, ...]}`` (a single string per class is accepted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FetalCLIPError(f"{path}: prompt set not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetalCLIPError(f"{path}: not valid JSON ({exc})") from exc
    return validate_prompt_set(data, str(path))


def validate_prompt_set(data: Any, where: str = "prompt set") -> dict[str, list[str]]:
    if not isinstance(data, Mapping) or not data:
        raise FetalCLIPError(f"{where}: expected a non-empty JSON object {{class: [prompt, ...]}}")
    prompts: dict[str, list[str]] = {}
    for name, value in data.items():
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, str) and p.strip() for p in items):
            raise FetalCLIPError(f"{where}: class {name!r} needs a prompt or a non-empty list of prompts")
        prompts[str(name)] = list(items)
    return prompts


def class_embeddings(model, prompt_set: Mapping[str, Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """Class names and their zero-shot vectors ``[K, D]`` (normalised mean of normalised prompt embeddings)."""
    classes = list(prompt_set)
    flat = [prompt for name in classes for prompt in prompt_set[name]]
    with torch.inference_mode():
        text = model.encode_text(flat, normalize=True).float()
    vectors, start = [], 0
    for name in classes:
        count = len(prompt_set[name])
        vectors.append(F.normalize(text[start : start + count].mean(dim=0), dim=-1))
        start += count
    return classes, torch.stack(vectors).clone()


class _Capture:
    """Forward hook keeping the hooked layer's output (one tensor per forward pass)."""

    def __init__(self, module: torch.nn.Module):
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.output = output

    def close(self) -> None:
        self._handle.remove()


def _to_grid(tokens: torch.Tensor, prefix: int | None, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, prefix + h*w, C]`` tokens -> ``[B, C, h, w]`` maps (``prefix`` ``None``: already maps)."""
    if prefix is None:
        return tokens
    patches = tokens[:, prefix:, :]
    if patches.shape[1] != grid[0] * grid[1]:
        raise FetalCLIPError(f"expected {grid[0] * grid[1]} patch tokens, got {patches.shape[1]} (patch dropout active?)")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid[0], grid[1])


def _scale_max(cams: torch.Tensor) -> torch.Tensor:
    peak = cams.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cams / peak[:, None, None]


# -- the two methods -----------------------------------------------------------------------------------------
def _margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Target logit minus the log-sum-exp of the other classes' logits (the target logit alone for one class).

    Evidence shared by every class (background, text overlays) cancels, leaving what sets the target apart
    from the alternatives. Unlike log p(target), it does not saturate: with logits at 100 x cosine a
    confident model has p = 1.0 in float32, and gradients or score differences of log p vanish.
    """
    chosen = logits.gather(1, targets[:, None])[:, 0]
    if logits.shape[1] == 1:
        return chosen
    others = logits.masked_fill(F.one_hot(targets, logits.shape[1]).bool(), float("-inf"))
    return chosen - torch.logsumexp(others, dim=1)


def _gradcam(model, images: torch.Tensor, class_vectors: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layer, prefix, grid = cam_layer(model)
    capture = _Capture(layer)
    try:
        with torch.enable_grad():
            inputs = images.detach().clone().requires_grad_(True)  # builds the graph even when weights are frozen
            features = F.normalize(model.encode_image(inputs).float(), dim=-1)
            logits = 100.0 * features @ class_vectors.T
            chosen = _margin(logits, targets).sum()
            activations = capture.output
            (gradients,) = torch.autograd.grad(chosen, activations)
    finally:
        capture.close()
    maps = _to_grid(activations.detach().float(), prefix, grid)
    grads = _to_grid(gradients.float(), prefix, grid)
    # Each token weighted by its own gradient (not the channel-averaged gradient of CNN Grad-CAM): LayerNorm
    # outputs are zero-mean across channels, so one weight vector shared by all tokens gives maps whose sign
    # flips with small changes (often all-negative, hence all-zero after the ReLU). Per token, the product is
    # the first-order contribution of that token to the target's score.
    cams = F.relu((grads * maps).sum(dim=1))
    return _scale_max(cams), logits.detach()


def _scorecam(
    model, images: torch.Tensor, class_vectors: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    layer, prefix, grid = cam_layer(model)
    capture = _Capture(layer)
    try:
        with torch.inference_mode():
            features = F.normalize(model.encode_image(images).float(), dim=-1)
            maps = _to_grid(capture.output.float(), prefix, grid)
    finally:
        capture.close()
    logits = 100.0 * features @ class_vectors.T
    size = images.shape[-2:]
    low = maps.flatten(2).amin(dim=2)[:, :, None, None]
    high = maps.flatten(2).amax(dim=2)[:, :, None, None]
    masks_grid = (maps - low) / (high - low).clamp_min(1e-12)  # [B, C, h, w] in [0, 1]

    def target_score(batch: torch.Tensor, target: int) -> torch.Tensor:
        batch_features = F.normalize(model.encode_image(batch).float(), dim=-1)
        scores = 100.0 * batch_features @ class_vectors.T
        return _margin(scores, torch.full((scores.shape[0],), target, dtype=torch.long, device=scores.device))

    cams = []
    with torch.inference_mode():
        for index in range(images.shape[0]):
            target = int(targets[index])
            # Baseline: the image fully masked (zeros = the normalisation mean), so a weight is the increase in
            # the target's margin that a channel's region brings (the ScoreCAM paper uses the probability, which
            # saturates at 1.0 for 100 x cosine logits).
            baseline = target_score(torch.zeros_like(images[index][None]), target)
            weights = []
            for start in range(0, masks_grid.shape[1], batch_size):
                chunk = F.interpolate(masks_grid[index, start : start + batch_size, None], size=size, mode="bilinear", align_corners=False)
                weights.append(target_score(images[index][None] * chunk, target) - baseline)
            weight = torch.cat(weights)
            # Centred weights: LayerNorm channels are dense (every mask covers most of the image), so an
            # uncentred sum is nearly uniform; channels that help more than the average one show where.
            weight = weight - weight.mean()
            # Summing the [0, 1] masks rather than the raw (signed, zero-mean LayerNorm) activations keeps the
            # map's sign meaningful for transformers.
            cams.append(F.relu((weight[:, None, None] * masks_grid[index]).sum(dim=0)))
    return _scale_max(torch.stack(cams)), logits


# -- public API ------------------------------------------------------------------------------------------------
def compute_cams(
    model,
    images: Sequence[Any] | torch.Tensor,
    classes: Sequence[str],
    class_vectors: torch.Tensor,
    targets: Sequence[str | None] | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
    keep_images: bool = True,
) -> list[CamResult]:
    """Maps for a batch of images (raw PIL/arrays or a preprocessed tensor).

    ``targets`` names each image's class (``None`` = the zero-shot prediction). ``batch_size`` bounds the
    images per Grad-CAM pass and the masked copies per ScoreCAM pass.
    """
    if method not in METHODS:
        raise FetalCLIPError(f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")
    classes = list(classes)
    if isinstance(images, torch.Tensor):
        tensor, model_images = images, [None] * images.shape[0]
    else:
        images = list(images)
        tensor = model.preprocess.batch(images) if images else torch.zeros(0)
        model_images = [np.asarray(model.preprocess.to_model_image(i)) if keep_images else None for i in images]
    count = len(model_images)
    targets = list(targets) if targets is not None else [None] * count
    if len(targets) != count:
        raise ValueError(f"{count} images but {len(targets)} targets")
    unknown = sorted({t for t in targets if t is not None and t not in classes})
    if unknown:
        raise FetalCLIPError(f"target class(es) {unknown} not in the prompt set ({', '.join(classes)})")
    device = model.device
    vectors = class_vectors.to(device).float()
    results: list[CamResult] = []
    for start in range(0, count, batch_size if method == "gradcam" else 1):
        stop = min(count, start + (batch_size if method == "gradcam" else 1))
        batch = tensor[start:stop].to(device)
        with torch.inference_mode():
            predicted = (F.normalize(model.encode_image(batch).float(), dim=-1) @ vectors.T).argmax(dim=1)
        chosen = torch.tensor(
            [classes.index(t) if t is not None else int(p) for t, p in zip(targets[start:stop], predicted.tolist())],
            device=device,
        )
        if method == "gradcam":
            cams, logits = _gradcam(model, batch, vectors, chosen)
        else:
            cams, logits = _scorecam(model, batch, vectors, chosen, batch_size)
        for offset in range(stop - start):
            row = logits[offset].cpu().tolist()
            results.append(
                CamResult(
                    cam=cams[offset].cpu().numpy().astype(np.float32),
                    target=classes[int(chosen[offset])],
                    predicted=classes[int(np.argmax(row))],
                    scores={name: float(value) for name, value in zip(classes, row)},
                    method=method,
                    model_image=model_images[start + offset],
                )
            )
    return results


def compute_cam(model, image: Any, prompt_set: Mapping[str, Sequence[str]], target: str | None = None, method: str = "gradcam") -> CamResult:
    """The map of one image for ``target`` (default: the zero-shot prediction over ``prompt_set``)."""
    classes, vectors = class_embeddings(model, prompt_set)
    return compute_cams(model, [image], classes, vectors, [target], method=method)[0]


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map resized (bilinear) to ``size`` = (height, width) pixels."""
    tensor = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """The map (any grid size, values in [0, 1]) coloured and blended onto an HxW or HxWx3 uint8 image."""
    from matplotlib import colormaps

    base = np.asarray(image)
    if base.ndim == 2:
        base = np.repeat(base[:, :, None], 3, axis=2)
    heat = np.clip(upsample(cam, base.shape[:2]), 0.0, 1.0)
    coloured = colormaps[colormap](heat)[:, :, :3] * 255.0
    # Weak evidence is left transparent, so the anatomy stays readable where the map says nothing.
    weight = alpha * heat[:, :, None]
    return np.clip(base * (1.0 - weight) + coloured * weight, 0, 255).astype(np.uint8)


def mass_in_region(cam: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total mass inside a boolean ``region`` (any resolution; the map is resized to it)."""
    region = np.asarray(region, dtype=bool)
    heat = np.clip(upsample(cam, region.shape), 0.0, None)
    total = float(heat.sum())
    return float(heat[region].sum() / total) if total > 0 else 0.0


__all__ = [
    "METHODS",
    "CamResult",
    "class_embeddings",
    "compute_cam",
    "compute_cams",
    "load_prompt_set",
    "mass_in_region",
    "overlay",
    "upsample",
    "validate_prompt_set",
]
