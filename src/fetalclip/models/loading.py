"""``load(name_or_path)``: one entry point for every way a model arrives.

Resolution order: ``hf-hub:`` references (resolved to a local path first), our checkpoint folders, published
``.pt`` files (architecture inferred from the tensor shapes, or named explicitly), then registered names,
which give randomly initialised weights because no pretrained weights ship with the package; that case is
logged as a warning so a random model is never mistaken for a trained one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ModelNotFoundError
from ..provenance import base_provenance
from .checkpoint import (
    describe_mismatches,
    is_checkpoint_dir,
    load_state_dict_strict,
    read_checkpoint_dir,
    read_published_state_dict,
    state_dict_mismatches,
)
from .hub import PREFIX as HUB_PREFIX
from .hub import resolve_hub_reference
from .model import FetalCLIP
from .registry import architecture_of, build_clip, get_model_config, list_models

log = logging.getLogger("fetalclip")

PUBLISHED_DEFAULT_MODEL = "fetalclip-vit-l14"
PUBLISHED_SUFFIXES = (".pt", ".pth", ".bin")


def create_model(name: str, seed: int | None = None, device: str | torch.device = "cpu") -> FetalCLIP:
    """A registered architecture with random weights (``seed`` makes them reproducible)."""
    config = get_model_config(name)
    config["model_name"] = name
    config["provenance"] = base_provenance(weights="random-init", seed=seed)
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        clip = build_clip(architecture_of(config))
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return FetalCLIP(clip, config).to(device).eval()


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    model_name: str | None = None,
    seed: int | None = 0,
    adapter: str | os.PathLike | None = None,
) -> FetalCLIP:
    """Load a model by registered name, checkpoint folder, published ``.pt`` file or ``hf-hub:`` reference.

    ``model_name`` picks the architecture for a published ``.pt`` file when its shapes alone do not;
    ``seed`` applies only to registered names (random initialisation). ``adapter``: a LoRA adapter folder
    (``models.lora.save_adapter``) applied on top; it must have been trained on exactly these base weights.
    """
    model = _load_base(name_or_path, model_name, seed)
    if adapter is not None:
        from .lora import load_adapter

        load_adapter(model, adapter)
        model.config.setdefault("provenance", {})["adapter"] = os.fspath(adapter)
    return model.to(device).eval()


def _load_base(name_or_path: str | os.PathLike, model_name: str | None, seed: int | None) -> FetalCLIP:
    reference = os.fspath(name_or_path)
    if reference.startswith(HUB_PREFIX):
        path = resolve_hub_reference(reference)
        source = reference
    else:
        path, source = Path(reference).expanduser(), reference

    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise CheckpointError(f"{path}: folder is not a fetalclip checkpoint (needs config.json and model.safetensors)")
        model = _load_checkpoint_dir(path, source)
    elif path.is_file():
        if path.suffix == ".safetensors" and is_checkpoint_dir(path.parent):
            model = _load_checkpoint_dir(path.parent, source)
        elif path.name == "config.json" and is_checkpoint_dir(path.parent):
            model = _load_checkpoint_dir(path.parent, source)
        else:
            model = _load_published(path, source, model_name)
    elif reference in list_models():
        log.warning("%s: randomly initialised weights (seed %s); pass a checkpoint path for trained weights", reference, seed)
        return create_model(reference, seed=seed)
    else:
        raise ModelNotFoundError(
            f"{reference!r} is neither a file, a checkpoint folder, an hf-hub: reference nor a registered model "
            f"({', '.join(list_models())})"
        )
    return model


def _load_checkpoint_dir(path: Path, source: str) -> FetalCLIP:
    state_dict, config = read_checkpoint_dir(path)
    try:
        clip = build_clip(architecture_of(config))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}/config.json: architecture is incomplete or invalid ({exc})") from exc
    load_state_dict_strict(clip, state_dict, source)
    config.pop("format", None)
    config.pop("format_version", None)
    config.setdefault("provenance", {})["loaded_from"] = source
    return FetalCLIP(clip, config)


def _expected_layout(name: str) -> dict[str, torch.Size]:
    meta = build_clip(architecture_of(get_model_config(name)), device="meta")
    return {key: value.shape for key, value in meta.state_dict().items()}


def infer_model_name(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose keys and shapes match ``state_dict`` exactly, if any."""
    for name in list_models():
        if not any(state_dict_mismatches(_expected_layout(name), state_dict)):
            return name
    return None


def _closest_architecture(state_dict: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The registered architecture with the fewest key and shape mismatches, and those mismatches described.

    Compared against the nearest layout, one deleted or mis-shaped tensor is named as such, instead of being
    lost among hundreds of differences from an architecture the file never was.
    """
    def distance(name: str) -> tuple[int, bool]:
        missing, unexpected, shapes = state_dict_mismatches(_expected_layout(name), state_dict)
        return len(missing) + len(unexpected) + len(shapes), name != PUBLISHED_DEFAULT_MODEL  # ties: the published one

    closest = min(list_models(), key=distance)
    return closest, describe_mismatches(*state_dict_mismatches(_expected_layout(closest), state_dict))


def _load_published(path: Path, source: str, model_name: str | None) -> FetalCLIP:
    state_dict = read_published_state_dict(path)
    name = model_name or infer_model_name(state_dict)
    if name is None:
        closest, problems = _closest_architecture(state_dict)
        raise CheckpointError(f"{path}: weights match no registered architecture; closest is {closest}: {problems}")
    config: dict[str, Any] = get_model_config(name)
    config["model_name"] = name
    clip = build_clip(architecture_of(config))
    load_state_dict_strict(clip, state_dict, str(path))
    config["provenance"] = base_provenance(weights="published-format", loaded_from=source)
    return FetalCLIP(clip, config)
