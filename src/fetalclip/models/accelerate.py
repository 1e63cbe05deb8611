"""Faster CPU inference for the image tower: fused fp32 kernels (exact) or int8 linear layers (deployment).

On a CPU a ViT spends ~80% of its time in the linear layers and most of the rest in attention glue, GELU
and copies. Compiling the whole graph costs minutes on a small machine (``torch.compile`` with inductor
freezing took 140 s to warm up ViT-B/16 on 2 cores) and won nothing measurable over eager PyTorch there,
nor did TorchScript trace+freeze (both keep MKL's fp32 GEMM, slower here than oneDNN's on packed weights).
So this module edits the module tree instead, once, in a few seconds, and picks the kernels itself:

- ``exact``: every ``nn.Linear`` and the ``nn.MultiheadAttention`` projections (whose input projection is
  a bare parameter, not an ``nn.Linear``) become oneDNN linear calls on weights pre-packed into the
  kernel's blocked layout, with the bias and the MLP's GELU fused into the matrix product's epilogue;
  self-attention runs through ``scaled_dot_product_attention`` (a fused kernel) on one fused QKV product.
  All arithmetic stays fp32, so embeddings match plain open_clip to float rounding (< 1e-5).
- ``int8``: the same linear layers, attention projections included, become dynamically quantised int8
  matrix products (per-output-channel symmetric weights, per-call activation scale; fbgemm kernels,
  which PyTorch still ships though it has announced the removal of its quantised tensor types).
  Normalisation, softmax, GELU and the residual stream stay fp32. Embeddings keep a cosine >= 0.999 to
  the exact ones on the registered architectures with random weights (checked by the tests and the
  benchmark); trained weights with outlier activations should be re-checked before deployment.
- ``eager``: the open_clip module untouched (the reference).

The edited tower is a structural copy of ``model.clip.visual`` whose parameters are shared with the
original (``copy.deepcopy`` with the parameters pre-seeded in its memo), so the original model is never
modified and only the packed/quantised weights cost extra memory. open_clip's own forward code still runs
unchanged around the replaced leaves, so every ViT option it supports keeps working; modules we do not
recognise are left as they are. When this PyTorch build lacks oneDNN or the quantised kernels the
corresponding layers fall back to plain ``F.linear`` (``exact``) or raise a clear error (``int8``).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FetalCLIPError

MODES = ("exact", "int8", "eager")

# Rows per matrix product the oneDNN weight layout is tuned for: a 32-image batch of 197 ViT-B/16 tokens.
_PACK_ROWS_HINT = 32 * 197


def _has_onednn_linear() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _gelu_algorithm(module: nn.Module) -> str | None:
    """oneDNN's name for a GELU module's formula, or ``None`` if ``module`` is not a plain GELU."""
    if type(module) is nn.GELU:
        return module.approximate  # "none" (erf) or "tanh", the names oneDNN's post-op uses too
    return None


class PackedLinear(nn.Module):
    """``act(x @ W.T + b)`` on a oneDNN pre-packed fp32 weight, the activation fused into the product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.gelu = gelu
        weight = weight.detach()
        self.fused = _has_onednn_linear() and weight.device.type == "cpu" and weight.dtype == torch.float32
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_ROWS_HINT) if self.fused else weight
        self.register_buffer("weight", packed, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.dtype == torch.float32 and x.device.type == "cpu":
            if self.gelu is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], self.gelu)
        y = F.linear(x, self.weight, self.bias)
        return y if self.gelu is None else F.gelu(y, approximate=self.gelu)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, gelu={self.gelu}, onednn={self.fused}"


class DynamicInt8Linear(nn.Module):
    """``act(x @ W.T + b)`` with int8 weights (per output channel) and activations quantised per call."""

    int8_original_dtype = torch.float32  # open_clip reads this to find a block's compute dtype

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None):
        super().__init__()
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise FetalCLIPError("int8 mode needs PyTorch's fbgemm quantised kernels (x86-64); use --mode exact")
        self.out_features, self.in_features = weight.shape
        self.gelu = gelu
        weight = weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
        previous = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "fbgemm"
            self._packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())
        finally:
            torch.backends.quantized.engine = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range keeps activations to 7 bits so the u8*s8 pair sums cannot saturate int16 on CPUs
        # without VNNI; the accuracy cost is well inside the 0.999-cosine budget.
        y = torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed, True)
        return y if self.gelu is None else F.gelu(y, approximate=self.gelu)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, gelu={self.gelu}, int8"


LinearFactory = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[str]], nn.Module]


class FusedSelfAttention(nn.Module):
    """Drop-in for a self-attention ``nn.MultiheadAttention``: one QKV product, fused SDPA, out projection.

    Calls it cannot serve identically (cross-attention, attention weights requested, key padding masks,
    training) go to the original module, which it keeps.
    """

    def __init__(self, mha: nn.MultiheadAttention, make_linear: LinearFactory):
        super().__init__()
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.batch_first = mha.batch_first
        self.qkv = make_linear(mha.in_proj_weight, mha.in_proj_bias, None)
        self.out = make_linear(mha.out_proj.weight, mha.out_proj.bias, None)
        self.original = mha

    @staticmethod
    def supports(mha: nn.MultiheadAttention) -> bool:
        return mha._qkv_same_embed_dim and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, **kwargs):
        if (
            key is not query or value is not query or need_weights or key_padding_mask is not None
            or kwargs.get("is_causal") or (self.training and self.original.dropout > 0)
        ):
            return self.original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                 attn_mask=attn_mask, **kwargs)
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # nn.MultiheadAttention: True = blocked; SDPA: True = attended
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = self.out(y.transpose(1, 2).reshape(batch, length, width))
        return (y if self.batch_first else y.transpose(0, 1)), None


class FusedMLP(nn.Module):
    """``Linear -> GELU -> Linear`` with the GELU fused into the first product.

    The children keep open_clip's names (``c_fc``, ``c_proj``) because open_clip's blocks look them up.
    """

    def __init__(self, fc: nn.Linear, gelu: str, proj: nn.Linear, make_linear: LinearFactory):
        super().__init__()
        self.c_fc = make_linear(fc.weight, fc.bias, gelu)
        self.c_proj = make_linear(proj.weight, proj.bias, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.c_fc(x))


def _as_fused_mlp(module: nn.Module, make_linear: LinearFactory) -> nn.Module | None:
    if not isinstance(module, nn.Sequential) or len(module) != 3:
        return None
    fc, act, proj = module
    gelu = _gelu_algorithm(act)
    if type(fc) is nn.Linear and type(proj) is nn.Linear and gelu is not None:
        return FusedMLP(fc, gelu, proj, make_linear)
    return None


def _rewrite(module: nn.Module, make_linear: LinearFactory) -> int:
    """Replace, in place, the children of ``module`` we have fast versions of; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        replacement: nn.Module | None = None
        if isinstance(child, nn.MultiheadAttention) and FusedSelfAttention.supports(child):
            replacement = FusedSelfAttention(child, make_linear)
        elif isinstance(child, nn.Sequential) and (fused := _as_fused_mlp(child, make_linear)) is not None:
            replacement = fused
        elif type(child) is nn.Linear:  # subclasses (e.g. MHA's out_proj) may carry other semantics
            replacement = make_linear(child.weight, child.bias, None)
        if replacement is not None:
            setattr(module, name, replacement)
            count += 1
        else:
            count += _rewrite(child, make_linear)
    return count


def _structural_copy(module: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares (does not copy) every parameter and buffer."""
    memo = {id(tensor): tensor for tensor in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def _int8_linear(weight, bias, gelu):
    with warnings.catch_warnings():
        # PyTorch announces the removal of quantised tensor dtypes in a future release; until then the
        # fbgemm kernels are the fastest int8 path shipped with torch itself. Say so once, not per layer.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return DynamicInt8Linear(weight, bias, gelu)


_FACTORIES: dict[str, LinearFactory] = {"exact": PackedLinear, "int8": _int8_linear}


def accelerate_module(module: nn.Module, mode: str = "exact") -> nn.Module:
    """A copy of ``module`` (sharing its parameters) with linear layers and attention replaced for ``mode``."""
    check_mode(mode)
    if mode == "eager":
        return module
    fast = _structural_copy(module).eval()
    _rewrite(fast, _FACTORIES[mode])
    return fast


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FetalCLIPError(f"unknown inference mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


class ImageEncoder(nn.Module):
    """Preprocessed image batch in, image features out, through an accelerated copy of the image tower.

    ``exact`` on a GPU is the unmodified tower (the fused kernels here are CPU kernels); ``int8`` is CPU only.
    """

    def __init__(self, model, mode: str = "exact"):
        super().__init__()
        self.mode = check_mode(mode)
        self.device = model.device
        if mode == "int8" and self.device.type != "cpu":
            raise FetalCLIPError(f"inference mode 'int8' runs on CPUs only; the model is on {self.device}")
        self.visual = accelerate_module(model.clip.visual, mode if self.device.type == "cpu" else "eager")
        self.input_dtype = model.input_dtype

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images.to(self.device, dtype=self.input_dtype))
        return F.normalize(features, dim=-1) if normalize else features


# model -> (weights fingerprint, {mode: encoder}). Weak keys: an encoder lives no longer than its model.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict[str, ImageEncoder]]]" = weakref.WeakKeyDictionary()


def _fingerprint(module: nn.Module) -> tuple | None:
    # In-place updates (optimiser steps, load_state_dict) bump a tensor's version counter, so a packed or
    # quantised copy made before them is detected as stale. Tensors made under inference_mode have no
    # counter; such models are simply not cached.
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((id(t), t._version, t.device, t.dtype) for t in tensors)


def image_encoder(model, mode: str = "exact", cache: bool = True) -> ImageEncoder:
    """The image encoder of ``model`` (a ``FetalCLIP``) for ``mode``: ``exact``, ``int8`` or ``eager``.

    Encoders are cached per model and mode while the model's weights stay untouched, so repeated calls
    (a service, several embedding runs) pay the weight packing once.
    """
    check_mode(mode)
    fingerprint = _fingerprint(model.clip.visual) if cache else None
    if fingerprint is None:
        return ImageEncoder(model, mode)
    stamp, encoders = _CACHE.get(model, (None, {}))
    if stamp != fingerprint:
        encoders = {}
        _CACHE[model] = (fingerprint, encoders)
    if mode not in encoders:
        encoders[mode] = ImageEncoder(model, mode)
    return encoders[mode]
