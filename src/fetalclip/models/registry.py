"""Model registry: named architectures kept as data (JSON files beside this module).

Each entry holds an open_clip ``CLIP`` architecture (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)
and the preprocessing that belongs to it. Models are built by instantiating ``open_clip.CLIP`` directly from
that dictionary, so nothing is written into open_clip's own model table and an open_clip upgrade cannot
silently change what a name means. Users can register their own entries at run time.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from ..errors import ModelNotFoundError

# init_logit_bias: SigLIP-trained models carry a learnable logit bias, which must exist to load their weights.
_ARCH_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_bias")
_user_models: dict[str, dict[str, Any]] = {}


@lru_cache(maxsize=None)
def _builtin_models() -> dict[str, dict[str, Any]]:
    models = {}
    for entry in resources.files(__package__).joinpath("configs").iterdir():
        if entry.name.endswith(".json"):
            models[entry.name.removesuffix(".json")] = json.loads(entry.read_text())
    return models


def list_models() -> list[str]:
    """Names of all registered models, built-in first."""
    return sorted(_builtin_models()) + sorted(set(_user_models) - set(_builtin_models()))


def register_model(name: str, config: dict[str, Any]) -> None:
    """Register an architecture under ``name`` (same shape as the built-in JSON files)."""
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"model config for {name!r} lacks {missing}")
    _user_models[name] = copy.deepcopy(config)


def get_model_config(name: str) -> dict[str, Any]:
    """A deep copy of the registered config for ``name`` (architecture, preprocessing, description)."""
    config = _user_models.get(name) or _builtin_models().get(name)
    if config is None:
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return copy.deepcopy(config)


def architecture_of(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a model config that ``open_clip.CLIP`` takes as keyword arguments."""
    arch = {key: copy.deepcopy(config[key]) for key in _ARCH_KEYS if key in config}
    arch.setdefault("quick_gelu", False)
    return arch


def build_clip(architecture: dict[str, Any], device: torch.device | str | None = None) -> torch.nn.Module:
    """Instantiate an open_clip ``CLIP`` with random weights from an architecture dictionary."""
    import open_clip

    with torch.device(device or "cpu"):
        return open_clip.CLIP(**architecture)


@lru_cache(maxsize=None)
def count_parameters(name: str) -> dict[str, int]:
    """Parameter counts (total, vision, text) computed on the meta device, so no memory is allocated."""
    clip = build_clip(architecture_of(get_model_config(name)), device="meta")
    total = sum(p.numel() for p in clip.parameters())
    vision = sum(p.numel() for p in clip.visual.parameters())
    return {"total": total, "vision": vision, "text": total - vision}
