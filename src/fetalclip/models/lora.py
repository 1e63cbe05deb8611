"""LoRA for open_clip towers: low-rank updates of attention (q, k, v, out) and MLP weights, one mechanism.

open_clip's attention is ``nn.MultiheadAttention``, whose fused ``in_proj_weight`` goes straight into
``F.multi_head_attention_forward`` and whose ``out_proj.forward`` is never called, so wrapping ``nn.Linear``
modules (what PEFT and most LoRA code do) cannot reach query, key and value, and silently misses the output
projection. We adapt the *weights* instead, with ``torch.nn.utils.parametrize``: each adapted weight reads as
``W + (alpha / rank) * B @ A`` wherever the module uses it. The fused in-projection gets three independent
rank-``r`` updates, one per query / key / value block (as LoRA on separate q, k, v layers would); the output
projection and the MLP's ``c_fc`` / ``c_proj`` one each. ``B`` starts at zero, so an adapted model computes what
its base does until it trains; merging replaces each parametrized weight by its value (``remove_parametrizations
(leave_parametrized=True)``), giving a plain open_clip module whose state dict is the published layout again.

Why not PEFT (checked: peft 0.21.2): it reaches ``nn.MultiheadAttention`` only by swapping a merged
in-projection in before every forward and the original back after (its own docstring calls this hacky), with
one fused rank-r update over q, k and v together and no way to adapt ``out_proj`` or the in-projection alone;
its wrappers rename the state dict's keys; and it requires ``transformers`` and ``accelerate`` for what is a
few hundred lines here. A parametrization is autograd-native (DDP, autocast, gradient checkpointing see an
ordinary weight), never mutates the base weights, and covers attention and MLP alike.

Dropout (``dropout > 0``) is the one departure from LoRA as published: a weight-level update cannot see each
sample's input, so one dropout mask over the input features is drawn per forward pass and shared by the batch
(``B A diag(m)``), in training mode only. The update is recomputed wherever its weight is read (open_clip's
attention reads ``in_proj_weight`` up to four times a call, for torch's fast-path checks): O(rank x d^2) a
read, small beside the attention itself; merge for inference at full speed.

An adapter is saved alone (``adapter.safetensors`` + ``adapter.json``) and bound to its base by a sha256 of
the base weights of both towers (the same name|shape|dtype|bytes hashing as ``tasks.features.model_fingerprint``,
which hashes the vision tower only and lives in a layer above this one); loading it onto other weights is one
``AdapterError``. Weights trained beside the adapters (``extra``: the temperature, the projections) travel in
the same file, since they are changes to the base.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CheckpointError

TARGETS = ("attn", "mlp")
TOWERS = ("image", "text")
# Base weights a run may train beside the adapters, by the names users give them.
EXTRA_WEIGHTS = {"logit_scale": ("logit_scale", "logit_bias"), "image_proj": ("visual.proj",),
                 "text_proj": ("text_projection",)}
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT_NAME = "fetalclip-lora"
FORMAT_VERSION = 1


class AdapterError(CheckpointError):
    """An adapter that cannot be applied: another base model, a damaged file, a model without open_clip blocks."""


@dataclass(frozen=True)
class LoraConfig:
    """Where adapters go and how large they are; ``alpha / rank`` scales every update."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    towers: tuple[str, ...] = TOWERS
    dropout: float = 0.0
    extra: tuple[str, ...] = field(default=())  # names of EXTRA_WEIGHTS trained beside the adapters

    def __post_init__(self) -> None:
        for name in ("targets", "towers", "extra"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        problems = []
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank = {self.rank!r} must be a whole number >= 1")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            problems.append(f"alpha = {self.alpha!r} must be a positive number")
        for name, allowed in (("targets", TARGETS), ("towers", TOWERS), ("extra", tuple(EXTRA_WEIGHTS))):
            values = getattr(self, name)
            wrong = [v for v in values if v not in allowed]
            if wrong or (name != "extra" and not values) or len(set(values)) != len(values):
                problems.append(f"{name} = {list(values)!r} must be distinct names from {list(allowed)}"
                                + ("" if name == "extra" else " (at least one)"))
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            problems.append(f"dropout = {self.dropout!r} must be in [0, 1)")
        if problems:
            raise AdapterError("LoRA config: " + "; ".join(problems))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LoraConfig":
        known = {"rank", "alpha", "targets", "towers", "dropout", "extra"}
        return cls(**{key: value for key, value in values.items() if key in known})


class LowRankUpdate(nn.Module):
    """The parametrization ``W -> W + scale * B @ A``, per block of rows (q, k, v of a fused in-projection)."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float, blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        out_features, in_features = weight.shape
        if out_features % blocks:
            raise AdapterError(f"a {tuple(weight.shape)} weight does not split into {blocks} blocks")
        self.blocks, self.scale, self.dropout = blocks, float(scale), float(dropout)
        factory = {"dtype": torch.float32, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(blocks, rank, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(blocks, out_features // blocks, rank, **factory))
        for block in self.lora_A:  # LoRA's initialisation of A (that of a Linear); B = 0 makes the update zero
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        a = self.lora_A
        if self.training and self.dropout > 0:
            keep = torch.rand(a.shape[-1], device=a.device) >= self.dropout
            a = a * keep.to(a.dtype) / (1.0 - self.dropout)
        return torch.bmm(self.lora_B, a).reshape(-1, a.shape[-1]) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def _clip_of(model: nn.Module) -> nn.Module:
    """The open_clip ``CLIP`` of a ``FetalCLIP`` (or the module itself)."""
    return getattr(model, "clip", model)


def _tower_blocks(clip: nn.Module, tower: str) -> Sequence[nn.Module]:
    root = clip.visual if tower == "image" else clip
    blocks = getattr(getattr(root, "transformer", None), "resblocks", None)
    if blocks is None:
        raise AdapterError(f"the {tower} tower has no open_clip transformer blocks to adapt "
                           f"({type(root).__name__}); LoRA here covers open_clip ViT and text transformers")
    return blocks


def adapted_weights(clip: nn.Module, config: LoraConfig) -> Iterator[tuple[str, nn.Module, str, int]]:
    """(path of the module, module, weight name, q/k/v blocks) of every weight ``config`` adapts."""
    prefixes = {"image": "visual.transformer.resblocks", "text": "transformer.resblocks"}
    for tower in config.towers:
        for index, block in enumerate(_tower_blocks(clip, tower)):
            path = f"{prefixes[tower]}.{index}"
            if "attn" in config.targets:
                attn = block.attn
                if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                    raise AdapterError(f"{path}.attn is not a fused nn.MultiheadAttention; cannot adapt it")
                yield f"{path}.attn", attn, "in_proj_weight", 3
                yield f"{path}.attn.out_proj", attn.out_proj, "weight", 1
            if "mlp" in config.targets:
                yield f"{path}.mlp.c_fc", block.mlp.c_fc, "weight", 1
                yield f"{path}.mlp.c_proj", block.mlp.c_proj, "weight", 1


def _updates(clip: nn.Module) -> Iterator[tuple[str, nn.Module, str, LowRankUpdate]]:
    """(module path, module, weight name, its update) of every adapted weight of ``clip``."""
    for path, module in clip.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            for item in chain:
                if isinstance(item, LowRankUpdate):
                    yield path, module, name, item


def lora_config_of(model: nn.Module) -> LoraConfig | None:
    """The config the adapters of ``model`` were applied with (``None``: no adapters)."""
    return getattr(_clip_of(model), "lora_config", None)


def apply_lora(model: nn.Module, config: LoraConfig, freeze_base: bool = True,
               base_fingerprint: str | None = None) -> list[nn.Parameter]:
    """Add adapters per ``config`` to ``model`` (a ``FetalCLIP`` or open_clip ``CLIP``); returns their parameters.

    With ``freeze_base`` every other weight stops requiring gradients, except ``config.extra``. The base
    weights' fingerprint is taken first (pass ``base_fingerprint`` when it is already known), so a later
    ``save_adapter`` binds to the weights training started from.
    """
    clip = _clip_of(model)
    if lora_config_of(clip) is not None:
        raise AdapterError("the model already carries LoRA adapters; merge or rebuild it before adding more")
    fingerprint = base_fingerprint or weights_fingerprint(clip)
    targets = list(adapted_weights(clip, config))
    params: list[nn.Parameter] = []
    for _, module, name, blocks in targets:
        weight = getattr(module, name)
        update = LowRankUpdate(weight.detach(), config.rank, config.scale, blocks, config.dropout)
        parametrize.register_parametrization(module, name, update)
        params += [update.lora_A, update.lora_B]
    clip.lora_config, clip.lora_base_fingerprint = config, fingerprint
    if freeze_base:
        adapters = {id(p) for p in params}
        extra = set(extra_weight_names(clip, config))
        for name, param in clip.named_parameters():
            param.requires_grad_(id(param) in adapters or name in extra)
    return params


def extra_weight_names(clip: nn.Module, config: LoraConfig) -> list[str]:
    """State-dict names of the base weights ``config.extra`` trains (those the model has)."""
    own = dict(clip.named_parameters())
    return [name for key in config.extra for name in EXTRA_WEIGHTS[key] if name in own]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, _, _, update in _updates(_clip_of(model)) for p in (update.lora_A, update.lora_B)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (``<module>.<weight>.lora_A|B``) and the extra weights trained with them, detached."""
    clip = _clip_of(model)
    config = lora_config_of(clip)
    if config is None:
        raise AdapterError("the model carries no LoRA adapters")
    state = {}
    for path, _, name, update in _updates(clip):
        state[f"{path}.{name}.lora_A"] = update.lora_A.detach()
        state[f"{path}.{name}.lora_B"] = update.lora_B.detach()
    own = dict(clip.named_parameters())
    state.update({name: own[name].detach() for name in extra_weight_names(clip, config)})
    return state


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights without adapters, under their plain names (what the model was before ``apply_lora``)."""
    out = {}
    for key, value in _clip_of(model).state_dict().items():
        if ".parametrizations." not in key:
            out[key] = value
        elif key.endswith(".original"):
            module, rest = key.split(".parametrizations.", 1)
            out[f"{module}.{rest.removesuffix('.original')}"] = value
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict with every adapter folded into its weight, leaving ``model`` as it is."""
    clip = _clip_of(model)
    out = base_state_dict(clip)
    with torch.no_grad():
        for path, module, name, update in _updates(clip):
            was_training = update.training
            update.eval()  # no dropout mask in a merged weight
            try:
                original = module.parametrizations[name].original
                out[f"{path}.{name}"] = (original + update.delta().to(original.dtype)).detach()
            finally:
                update.train(was_training)
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight, in place: ``model`` becomes a plain open_clip model again."""
    clip = _clip_of(model)
    for _, module, name, update in list(_updates(clip)):
        update.eval()
        requires_grad = module.parametrizations[name].original.requires_grad
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        getattr(module, name).requires_grad_(requires_grad)
    for attribute in ("lora_config", "lora_base_fingerprint"):
        if hasattr(clip, attribute):
            delattr(clip, attribute)
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the base weights of both towers (names, shapes, dtypes, bytes), adapters left out."""
    from .checkpoint import hash_weights

    return hash_weights(base_state_dict(model)).hexdigest()


# -- files ---------------------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, folder: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` (config, base fingerprint and name, ``info``) into ``folder``."""
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json_atomic

    clip = _clip_of(model)
    state = adapter_state_dict(clip)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(tmp), metadata={"format": FORMAT_NAME})
    write_json_atomic(folder / ADAPTER_CONFIG, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "lora": lora_config_of(clip).to_dict(),
        "base": {"fingerprint": clip.lora_base_fingerprint, "model_name": getattr(model, "name", None)},
        "parameters": int(sum(v.numel() for v in state.values())), **dict(info or {}),
    })
    return folder


def read_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``adapter.json`` settings and the tensors of an adapter folder, checked to be our format."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    for required in (config_path, weights_path):
        if not required.is_file():
            raise AdapterError(f"{folder}: not a LoRA adapter folder ({required.name} is missing)")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_path}: cannot read it ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise AdapterError(f"{config_path}: not a {FORMAT_NAME} adapter description")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterError(f"{config_path}: format version {version!r} is not one this fetalclip reads ({FORMAT_VERSION})")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights_path}: cannot read weights ({exc}); the file may be truncated") from None
    return meta, tensors


def load_adapter(model: nn.Module, folder: str | os.PathLike, check_base: bool = True) -> nn.Module:
    """Apply the adapter in ``folder`` to ``model`` (in place); refuses a model whose base weights differ."""
    folder = Path(folder)
    meta, tensors = read_adapter(folder)
    clip = _clip_of(model)
    try:
        config = LoraConfig.from_dict(meta.get("lora") or {})
    except (AdapterError, TypeError) as exc:
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: {exc}") from None
    fingerprint = weights_fingerprint(clip)
    expected = (meta.get("base") or {}).get("fingerprint")
    if check_base and fingerprint != expected:
        base = (meta.get("base") or {}).get("model_name") or "another model"
        raise AdapterError(f"{folder}: adapter was trained on other base weights ({base}, fingerprint "
                           f"{str(expected)[:12]}), not these ({fingerprint[:12]}); load it onto the model it was trained from")
    apply_lora(clip, config, freeze_base=False, base_fingerprint=fingerprint)
    expected_state = adapter_state_dict(clip)
    missing, unexpected = sorted(set(expected_state) - set(tensors)), sorted(set(tensors) - set(expected_state))
    shapes = [k for k in set(expected_state) & set(tensors) if expected_state[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        remove_lora(clip)
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: tensors do not fit the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, shapes differ {sorted(shapes)[:3]})")
    non_finite = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if non_finite:
        remove_lora(clip)
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: {non_finite[0]!r} holds NaN or infinite values")
    with torch.no_grad():
        for key, value in expected_state.items():
            value.copy_(tensors[key])  # detached views of the live parameters
    return model


def remove_lora(model: nn.Module) -> None:
    """Take the adapters off without folding them in: the base weights come back exactly as they were."""
    clip = _clip_of(model)
    for _, module, name, _ in list(_updates(clip)):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    for attribute in ("lora_config", "lora_base_fingerprint"):
        if hasattr(clip, attribute):
            delattr(clip, attribute)


def count_trainable(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterError", "LoraConfig", "LowRankUpdate", "adapter_parameters",
    "adapter_state_dict", "apply_lora", "base_state_dict", "count_trainable", "load_adapter", "lora_config_of",
    "merge_lora", "merged_state_dict", "read_adapter", "remove_lora", "save_adapter", "weights_fingerprint",
]
