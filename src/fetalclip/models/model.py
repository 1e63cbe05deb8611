"""The model object every task uses: an open_clip ``CLIP`` plus its tokenizer, preprocessing and config.

``FetalCLIP`` is a thin ``nn.Module`` wrapper, so ``.to()``, ``.eval()``, ``.parameters()`` and DDP work as
usual while the towers stay plain open_clip modules (``model.clip``) whose state dict is the published layout.
``encode_image``/``encode_text`` accept raw inputs (images, strings) as well as ready tensors, because most
callers have one or the other and converting in one place keeps that logic from being written twice.

The contract every task relies on (our models and the benchmark's open_clip baselines alike): ``encode_image``,
``encode_text``, ``tokenize``, ``preprocess``, ``input_dtype``, and the intermediate image blocks
(``image_block_count``, ``encode_image_intermediates``) that the segmentation probe taps: a ViT's transformer
blocks, a convolutional tower's four stages (``models.layers`` says how they become token grids). No task
reaches into the towers' modules (``clip.visual.transformer.resblocks``) itself.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError
from .checkpoint import write_checkpoint_dir
from .layers import CONV_STAGES, conv_stage_grids, is_conv_tower
from .preprocess import ImageLike, Preprocessor
from .registry import architecture_of
from .tokenizer import tokenize as _tokenize


class NoImageBlocksError(FetalCLIPError):
    """An image tower without blocks to tap (a trunk that is neither a ViT nor open_clip's ModifiedResNet)."""


class ImageIntermediates(NamedTuple):
    """One forward pass: the projected (unnormalised) embeddings and the asked-for blocks as token grids."""

    embeddings: torch.Tensor  # [N, embed_dim]
    blocks: torch.Tensor  # [N, len(layers), width, grid, grid] (patch tokens; class/prefix tokens dropped)


class FetalCLIP(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module, config: dict[str, Any]):
        super().__init__()
        self.clip = clip
        self.config = copy.deepcopy(config)
        self.preprocess = Preprocessor(self.config.get("preprocess"))

    # -- identity -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.get("model_name", "custom")

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    # -- encoders -------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.LongTensor:
        return _tokenize(texts, self.context_length)

    def encode_image(self, images: torch.Tensor | ImageLike | Sequence[ImageLike], normalize: bool = False) -> torch.Tensor:
        """Image embeddings ``[N, embed_dim]`` from a preprocessed batch or from raw PIL images/arrays."""
        features = self.clip.encode_image(self._image_batch(images))
        return F.normalize(features, dim=-1) if normalize else features

    def _image_batch(self, images: torch.Tensor | ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """A preprocessed batch on the model's device in its input dtype (raw images are preprocessed first)."""
        if not isinstance(images, torch.Tensor):
            if not isinstance(images, (list, tuple)):
                images = [images]
            images = self.preprocess.batch(images)
        return images.to(self.device, dtype=self.input_dtype)

    @property
    def image_block_count(self) -> int | None:
        """How many blocks the image tower offers to tap (``None``: a tower without blocks to tap).

        open_clip's own ViT keeps them in ``transformer.resblocks``; a timm ViT trunk (BiomedCLIP) in
        ``trunk.blocks``. Both towers' ``forward_intermediates`` then return token grids of equal width.
        open_clip's ModifiedResNet offers its four stages (``models.layers.conv_stage_grids``).
        """
        visual = self.clip.visual
        if is_conv_tower(visual):
            return CONV_STAGES
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None:
            blocks = getattr(getattr(visual, "trunk", None), "blocks", None)
        if blocks is None or not hasattr(visual, "forward_intermediates"):
            return None
        return len(blocks)

    def image_taps(self, layers: Sequence[int]) -> list[int]:
        """``layers`` as 0-based block indices, checked against the image tower (at least one, each in range).

        The one check: feature caches run it before a cache hit could skip ``encode_image_intermediates``.
        """
        count = self.image_block_count
        if count is None:
            raise NoImageBlocksError(f"{self.name}: its image tower has no blocks to tap")
        layers = [int(layer) for layer in layers]
        if not layers or any(layer < 0 or layer >= count for layer in layers):
            raise FetalCLIPError(f"block taps {layers} out of range for a {count}-block encoder")
        return layers

    def encode_image_intermediates(self, images: torch.Tensor | ImageLike | Sequence[ImageLike],
                                   layers: Sequence[int]) -> ImageIntermediates:
        """Embeddings and the outputs of image blocks ``layers`` (0-based) as ``[N, T, W, g, g]`` grids, one pass."""
        layers = self.image_taps(layers)
        images = self._image_batch(images)
        if is_conv_tower(self.clip.visual):
            return ImageIntermediates(*conv_stage_grids(self.clip.visual, images, layers))
        result = self.clip.visual.forward_intermediates(images, indices=layers, output_fmt="NCHW")
        return ImageIntermediates(result["image_features"], torch.stack(result["image_intermediates"], dim=1))

    def encode_text(self, texts: torch.Tensor | str | Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Text embeddings ``[N, embed_dim]`` from token ids or from strings."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        features = self.clip.encode_text(tokens.to(self.device))
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the temperature, the inputs of a contrastive loss."""
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.clip.logit_scale.exp(),
        )

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype image batches must have (the patch embedding's: float16 for a half-precision tower)."""
        return self.clip.visual.conv1.weight.dtype if hasattr(self.clip.visual, "conv1") else torch.float32

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, out_dir, provenance: dict[str, Any] | None = None, overwrite: bool = False):
        """Write our checkpoint format (``model.safetensors`` + ``config.json``)."""
        config = copy.deepcopy(self.config)
        config["context_length"] = self.context_length
        config["provenance"] = {**config.get("provenance", {}), **(provenance or {})}
        from .lora import lora_config_of, merged_state_dict

        # A model still carrying LoRA adapters is written merged: a plain checkpoint every command can open.
        state = merged_state_dict(self.clip) if lora_config_of(self.clip) is not None else self.clip.state_dict()
        return write_checkpoint_dir(out_dir, state, config, overwrite=overwrite)

    def architecture(self) -> dict[str, Any]:
        return architecture_of(self.config)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, context_length={self.context_length}"
