"""The model a run starts from: a registered architecture, randomly initialised or warm-started.

``--init`` accepts whatever ``fetalclip.load`` opens (our checkpoint folders, a published-format ``.pt``).
The run's own architecture is the init's, with the recipe's overrides applied; when the text context length
differs, the text position embeddings are resampled (linear interpolation along positions, the end points
kept), the usual way to reuse learned absolute positions at another length. SigLIP needs a learnable logit
bias, which a CLIP-trained init lacks: it is then added with SigLIP's published starting values
(temperature 10, bias -10), and dropped again if a SigLIP init is trained with the CLIP loss.

With ``lora_rank > 0`` (``adapt_for_training``) the towers are frozen and LoRA adapters (``models.lora``)
train instead, bound to the weights the run starts from. The run's ``model/`` is then the adapters merged in
(a plain checkpoint every command opens) and ``adapter/`` the adapters alone, small, for
``fetalclip.load(BASE, adapter=...)`` with BASE the run's ``init`` (``save_trained_model``).
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..models import FetalCLIP, get_model_config, load
from ..models.checkpoint import describe_mismatches, state_dict_mismatches, write_checkpoint_dir
from ..models.lora import apply_lora, count_trainable, lora_config_of, merged_state_dict, save_adapter
from ..models.registry import architecture_of, build_clip
from ..provenance import base_provenance

log = logging.getLogger("fetalclip.train")

SIGLIP_INIT_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resize_text_positions(embedding: torch.Tensor, length: int) -> torch.Tensor:
    """``[L, D]`` position embeddings resampled to ``[length, D]`` (linear, first and last positions kept)."""
    if embedding.shape[0] == length:
        return embedding
    resized = F.interpolate(embedding.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=True)
    return resized[0].T.to(embedding.dtype).contiguous()


def build_model(
    model: str,
    init: str | None = None,
    context_length: int | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    loss: str = "clip",
) -> FetalCLIP:
    """The model to train, on CPU; its ``config`` records where it came from."""
    source = None
    if init:
        # A published .pt names no architecture: take the recipe's, as ``fetalclip.load`` would infer it.
        model_name = model if Path(init).suffix in (".pt", ".pth", ".bin") else None
        source = load(init, model_name=model_name)
        config = copy.deepcopy(source.config)
        config.pop("provenance", None)
        if source.name != model:
            log.warning("--init %s is a %s; training that architecture, not %s", init, source.name, model)
    else:
        config = get_model_config(model)
        config["model_name"] = model

    overrides = dict(model_overrides or {})
    config = deep_merge(config, overrides)
    vision_size = config["vision_cfg"].get("image_size")
    if "image_size" in overrides.get("vision_cfg", {}) and "image_size" not in overrides.get("preprocess", {}):
        config.setdefault("preprocess", {})["image_size"] = vision_size
    if context_length is not None:
        config["text_cfg"]["context_length"] = int(context_length)
    if loss == "siglip":
        config["init_logit_bias"] = SIGLIP_INIT_BIAS
    else:
        config.pop("init_logit_bias", None)

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clip = build_clip(architecture_of(config))
    finally:
        torch.random.set_rng_state(generator_state)
    if loss == "siglip":
        with torch.no_grad():
            clip.logit_scale.fill_(SIGLIP_INIT_SCALE)

    if source is not None:
        _load_init_weights(clip, source.clip.state_dict(), init)
        provenance = base_provenance(weights="fine-tuned", init=str(init), seed=seed)
    else:
        provenance = base_provenance(weights="pretrained-from-scratch", seed=seed)
    config["provenance"] = provenance
    return FetalCLIP(clip, config)


def _load_init_weights(clip: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    target = clip.state_dict()
    state = dict(state_dict)
    for key in ("logit_bias",):
        if key in state and key not in target:
            log.info("%s: dropping %s (not used by this loss)", source, key)
            state.pop(key)
        elif key in target and key not in state:
            state[key] = target[key]  # SigLIP's starting value
    if "positional_embedding" in state and state["positional_embedding"].shape != target["positional_embedding"].shape:
        old, new = state["positional_embedding"].shape[0], target["positional_embedding"].shape[0]
        log.info("%s: text context %d -> %d, interpolating position embeddings", source, old, new)
        state["positional_embedding"] = resize_text_positions(state["positional_embedding"], new)
    expected = {key: value.shape for key, value in target.items()}
    problems = describe_mismatches(*state_dict_mismatches(expected, state))
    if problems:
        raise CheckpointError(f"{source}: init weights do not fit the configured model: {problems}")
    clip.load_state_dict(state, strict=True)


ADAPTER_DIR = "adapter"  # beside the run's model/: the LoRA adapters alone


def adapt_for_training(model: FetalCLIP, lora) -> int | None:
    """Freeze the towers and add LoRA adapters per ``lora`` (a ``models.lora.LoraConfig``; ``None``: no-op).

    Returns the number of trainable parameters (``None`` when nothing was changed).
    """
    if lora is None:
        return None
    apply_lora(model, lora)
    trainable = count_trainable(model)
    log.info("LoRA rank %d on %s of the %s tower(s): %d trainable parameters of %d", lora.rank, "+".join(lora.targets),
             "+".join(lora.towers), trainable, sum(p.numel() for p in model.parameters()))
    return trainable


def save_trained_model(model: FetalCLIP, out_dir: Path, provenance: Mapping[str, Any], overwrite: bool = False) -> Path:
    """The trained model in our checkpoint format; with adapters, merged there and also saved alone beside it."""
    lora = lora_config_of(model)
    if lora is None:
        return model.save(out_dir, provenance=dict(provenance), overwrite=overwrite)
    out_dir = Path(out_dir)
    # The base the adapter binds to is what the run started from: its init (None: the seeded random weights).
    save_adapter(model, out_dir.parent / ADAPTER_DIR, info={"base_reference": model.config.get("provenance", {}).get("init"),
                                                            "training": dict(provenance).get("training")})
    config = copy.deepcopy(model.config)
    config["context_length"] = model.context_length
    config["provenance"] = {**config.get("provenance", {}), **provenance, "lora": {**lora.to_dict(), "merged": True}}
    return write_checkpoint_dir(out_dir, merged_state_dict(model), config, overwrite=overwrite)
