"""Where inside an image tower the tapped layers are: the last transformer block class-activation maps hook, and
the stages a convolutional tower offers the segmentation probe.

Tasks ask the model layer instead of reaching into a tower's modules themselves (open_clip's ViT keeps its
blocks at ``transformer.resblocks``, a timm trunk at ``trunk.blocks``, open_clip's ModifiedResNet its stages at
``layer1`` ... ``layer4``); this module knows the three layouts.

A convolutional tower's stages are maps of different widths and sizes (for ``fetalclip-tiny-rn`` at 224 px:
128 channels at 56 x 56 ... 1,024 at 7 x 7), while the segmentation probe reads token grids of one width and
size (``[N, T, W, g, g]``, what a ViT's blocks are). ``conv_stage_grids`` makes them that: each stage is brought
to the grid a /16 ViT of the same input would have (average pooling down, bilinear up) and zero-padded to the
widest tapped stage. Padding loses nothing (the decoder's first layer is a 1x1 convolution: zero channels add
nothing to it) and keeps one contract for every encoder, at the cost of storing the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError

CONV_STAGES = 4  # layer1 ... layer4 (the stem is not offered: it is a few convolutions on the raw pixels)


def is_conv_tower(visual: torch.nn.Module) -> bool:
    """open_clip's ModifiedResNet (CLIP's RN50 family, ``fetalclip-tiny-rn``): a stem, four stages, attention pool."""
    return hasattr(visual, "attnpool") and all(hasattr(visual, f"layer{i}") for i in range(1, CONV_STAGES + 1))


def conv_stage_grids(visual: torch.nn.Module, images: torch.Tensor, stages: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, ``[N, len(stages), W, g, g]``) of a convolutional tower in one pass; ``stages`` 0-based."""
    # forward_intermediates counts the stem as block 0.
    result = visual.forward_intermediates(images, indices=[stage + 1 for stage in stages], output_fmt="NCHW")
    grid = max(1, images.shape[-1] // 16)
    maps = []
    for stage in result["image_intermediates"]:
        if stage.shape[-1] > grid:
            stage = F.adaptive_avg_pool2d(stage, grid)
        elif stage.shape[-1] < grid:
            stage = F.interpolate(stage, size=(grid, grid), mode="bilinear", align_corners=False)
        maps.append(stage)
    width = max(stage.shape[1] for stage in maps)
    padded = [F.pad(stage, (0, 0, 0, 0, 0, width - stage.shape[1])) for stage in maps]
    return result["image_features"], torch.stack(padded, dim=1)


def cam_layer(model) -> tuple[torch.nn.Module, int | None, tuple[int, int]]:
    """The module whose output is hooked, the number of prefix tokens (``None``: the output is already an
    ``[N, C, h, w]`` map), and the grid (h, w), of ``model``'s image tower (a ``FetalCLIP`` or an open_clip
    baseline wrapper: anything with ``.clip.visual``)."""
    visual = model.clip.visual
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        grid = tuple(int(g) for g in visual.grid_size)
        return visual.transformer.resblocks[-1].ln_1, 1, grid  # open_clip's ViT has one class token
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        return trunk.blocks[-1].norm1, int(getattr(trunk, "num_prefix_tokens", 1)), grid
    if is_conv_tower(visual):
        side = int(visual.image_size) // 32  # the stem and stages 2-4 halve it five times
        return getattr(visual, f"layer{CONV_STAGES}"), None, (side, side)  # the last stage, as CNN Grad-CAM
    raise FetalCLIPError(
        f"class-activation maps need a ViT or a ModifiedResNet image encoder; {type(visual).__name__} is neither"
    )
