"""The model object every task uses: an open_clip ``CLIP`` plus its tokenizer, preprocessing and config.

``FetalCLIP`` is a thin ``nn.Module`` wrapper, so ``.to()``, ``.eval()``, ``.parameters()`` and DDP work as
usual while the towers stay plain open_clip modules (``model.clip``) whose state dict is the published layout.
``encode_image``/``encode_text`` accept raw inputs (images, strings) as well as ready tensors, because most
callers have one or the other and converting in one place keeps that logic from being written twice.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .checkpoint import write_checkpoint_dir
from .preprocess import ImageLike, Preprocessor
from .registry import architecture_of
from .tokenizer import tokenize as _tokenize


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
        if not isinstance(images, torch.Tensor):
            if not isinstance(images, (list, tuple)):
                images = [images]
            images = self.preprocess.batch(images)
        images = images.to(self.device, dtype=self._input_dtype())
        features = self.clip.encode_image(images)
        return F.normalize(features, dim=-1) if normalize else features

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

    def _input_dtype(self) -> torch.dtype:
        return self.clip.visual.conv1.weight.dtype if hasattr(self.clip.visual, "conv1") else torch.float32

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, out_dir, provenance: dict[str, Any] | None = None, overwrite: bool = False):
        """Write our checkpoint format (``model.safetensors`` + ``config.json``)."""
        config = copy.deepcopy(self.config)
        config["context_length"] = self.context_length
        config["provenance"] = {**config.get("provenance", {}), **(provenance or {})}
        return write_checkpoint_dir(out_dir, self.clip.state_dict(), config, overwrite=overwrite)

    def architecture(self) -> dict[str, Any]:
        return architecture_of(self.config)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, context_length={self.context_length}"
