"""AdamW with weight decay only where it regularises: matrices, not gains, biases, temperature or embeddings.

Decaying norms' gains, biases, the temperature (``logit_scale``/``logit_bias``) or the positional and class
embeddings pulls them towards zero for no benefit; CLIP-style training excludes them. Parameters are
selected by name and shape so the rule holds for any open_clip tower, and frozen parameters (a locked tower)
are left out entirely.
"""

from __future__ import annotations

import torch

_NO_DECAY_NAMES = ("logit_scale", "logit_bias", "positional_embedding", "class_embedding", "bias")


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    # Every norm gain and bias is 1-D; the embeddings are caught by name because they are 2-D.
    return param.ndim < 2 or leaf in _NO_DECAY_NAMES or leaf.endswith("_bias")


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_weight_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(
    module: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with the fused kernel where this torch has one for the device.

    The fused step is one kernel over all tensors: on CPU it measured ~6x faster than torch's default
    per-tensor loop for fetalclip-tiny (whose 6M-entry token embedding makes the optimiser a real share of a
    step), and it is the fastest choice on GPUs too.
    """
    groups = parameter_groups(module, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):  # older torch without fused CPU kernels, or unusual dtypes
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
