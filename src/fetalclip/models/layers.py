"""Where inside an image tower its last transformer block is: the layer class-activation maps hook.

Tasks ask the model layer instead of reaching into a tower's modules themselves (open_clip's ViT keeps its
blocks at ``transformer.resblocks``, a timm trunk at ``trunk.blocks``); one function knows both layouts.
"""

from __future__ import annotations

import torch

from ..errors import FetalCLIPError


def cam_layer(model) -> tuple[torch.nn.Module, int, tuple[int, int]]:
    """The module whose output is hooked, the number of prefix tokens, and the patch grid (h, w), of ``model``'s
    image tower (a ``FetalCLIP`` or an open_clip baseline wrapper: anything with ``.clip.visual``)."""
    visual = model.clip.visual
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        grid = tuple(int(g) for g in visual.grid_size)
        return visual.transformer.resblocks[-1].ln_1, 1, grid  # open_clip's ViT has one class token
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        return trunk.blocks[-1].norm1, int(getattr(trunk, "num_prefix_tokens", 1)), grid
    raise FetalCLIPError(
        f"class-activation maps need a ViT image encoder; {type(visual).__name__} has no transformer blocks"
    )
