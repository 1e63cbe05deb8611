"""Exact text embeddings for grids of prompts that share prefixes, computing each shared prefix once.

CLIP's text tower is causal and pools at the end-of-text token, so a token's hidden states depend only on
the tokens before it. Prompts that start alike (one template, one gestational age, many pixel spacings) can
therefore run their common prefix through the transformer once, keep each layer's attention keys and values
for it, and run only the differing tail of every prompt against that cache. The tails are short (a few
spacing digits, the words after them, the end token), so a grid of 875 prompts x S spacings costs roughly
875 prefixes + 875 x S short tails instead of 875 x S full 117-token sequences, and the padding after the end
token (which the plain encoder computes and throws away) is never computed at all.

The layer arithmetic restates open_clip's ``ResidualAttentionBlock`` (pre-norm attention and MLP, fused q/k/v
projection, additive causal mask); ``supports_prefix_sharing`` checks that a model is built that way, and
anything else falls back to the plain encoder, so the result is the same either way up to float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .model import FetalCLIP

# Suffix rows (prompt-tail tokens) per forward pass: large enough for efficient matrix products, small
# enough that activations stay in the low hundreds of MB for the widest published text tower (768).
DEFAULT_MAX_ROWS = 8192


def supports_prefix_sharing(clip: torch.nn.Module) -> bool:
    """True when ``clip`` is an open_clip ``CLIP`` whose text tower this module knows how to split."""
    from open_clip.transformer import ResidualAttentionBlock

    transformer = getattr(clip, "transformer", None)
    mask = getattr(clip, "attn_mask", None)
    if transformer is None or mask is None or not hasattr(clip, "token_embedding"):
        return False
    if getattr(clip, "text_pool_type", "argmax") not in ("argmax", "eos"):
        return False
    for block in transformer.resblocks:
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        attn = block.attn
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            return False
    n = mask.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isinf(mask) & (mask < 0), causal) and torch.all(mask[~causal] == 0))


def _end_positions(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Index of the token each prompt is pooled at (as ``open_clip.transformer.text_global_pool``)."""
    if getattr(clip, "text_pool_type", "argmax") == "eos":
        return (tokens == clip.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., L, W] -> [..., heads, L, W / heads]."""
    *lead, length, width = x.shape
    return x.reshape(*lead, length, heads, width // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., heads, L, d] -> [..., L, heads * d]."""
    *lead, heads, length, dim = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * dim)


def _qkv(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _split_heads(q, attn.num_heads), _split_heads(k, attn.num_heads), _split_heads(v, attn.num_heads)


def _finish_block(block: torch.nn.Module, x: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    x = x + block.ls_1(F.linear(_merge_heads(heads_out), attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _prefix_cache(clip: torch.nn.Module, prefix: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer keys and values ``[G, heads, P, d]`` of ``G`` prefixes of equal length ``P``."""
    dtype = clip.transformer.get_cast_dtype()
    length = prefix.shape[1]
    x = clip.token_embedding(prefix).to(dtype) + clip.positional_embedding[:length].to(dtype)
    blocks = clip.transformer.resblocks
    cache = []
    for index, block in enumerate(blocks):
        q, k, v = _qkv(block, x)
        cache.append((k, v))
        if index + 1 < len(blocks):  # the last layer's outputs at prefix positions are never read
            x = _finish_block(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return cache


def _extend(
    clip: torch.nn.Module,
    cache: list[tuple[torch.Tensor, torch.Tensor]],
    suffix: torch.Tensor,
    pool_index: torch.Tensor,
) -> torch.Tensor:
    """Pooled, projected features ``[G, S, E]`` of ``G`` cached prefixes each continued by ``S`` suffixes.

    ``suffix`` is ``[G, S, L]`` (right-padded; padding lies after the pooled token, so causality keeps it out of
    every position that matters) and ``pool_index`` ``[G, S]`` the pooled token's index within its suffix.
    """
    dtype = clip.transformer.get_cast_dtype()
    groups, columns, length = suffix.shape
    prefix_length = cache[0][0].shape[-2]
    context = clip.positional_embedding.shape[0]
    positions = (prefix_length + torch.arange(length, device=suffix.device)).clamp(max=context - 1)
    x = clip.token_embedding(suffix).to(dtype) + clip.positional_embedding[positions].to(dtype)
    mask = torch.full((length, length), float("-inf"), device=suffix.device, dtype=dtype).triu(1)
    blocks = clip.transformer.resblocks
    for number, (block, (k_prefix, v_prefix)) in enumerate(zip(blocks, cache)):
        q, k, v = _qkv(block, x)  # [G, S, H, L, d]
        heads, dim = q.shape[2], q.shape[-1]
        if number == len(blocks) - 1:
            # Only the pooled token's output is read after the last block: keep its query row alone (every
            # row still serves as a key), which skips the last MLP for all the other suffix tokens.
            q = q.gather(3, pool_index[:, :, None, None, None].expand(groups, columns, heads, 1, dim))
            x = x.gather(2, pool_index[:, :, None, None].expand(groups, columns, 1, x.shape[-1]))
            keys = torch.arange(length, device=suffix.device)
            mask = torch.zeros(groups, columns, 1, 1, length, device=suffix.device, dtype=dtype).masked_fill(
                keys > pool_index[:, :, None, None, None], float("-inf")
            )
        rows = q.shape[3]
        scale = 1.0 / math.sqrt(dim)
        # Every suffix of a group sees the same prefix keys: fold S into the query rows instead of copying them.
        q_rows = q.permute(0, 2, 1, 3, 4).reshape(groups, heads, columns * rows, dim)
        to_prefix = (q_rows @ k_prefix.transpose(-1, -2)) * scale  # [G, H, S*rows, P]
        to_prefix = to_prefix.reshape(groups, heads, columns, rows, prefix_length).permute(0, 2, 1, 3, 4)
        to_self = (q @ k.transpose(-1, -2)) * scale + mask  # [G, S, H, rows, L]
        weights = torch.softmax(torch.cat([to_prefix, to_self], dim=-1), dim=-1)
        w_prefix = weights[..., :prefix_length].permute(0, 2, 1, 3, 4).reshape(groups, heads, columns * rows, prefix_length)
        from_prefix = (w_prefix @ v_prefix).reshape(groups, heads, columns, rows, dim).permute(0, 2, 1, 3, 4)
        x = _finish_block(block, x, from_prefix + weights[..., prefix_length:] @ v)
    pooled = x.squeeze(2)
    pooled = clip.ln_final(pooled)
    projection = clip.text_projection
    if projection is None:
        return pooled
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection


def _common_prefix_length(tokens: torch.Tensor, ends: torch.Tensor) -> int:
    """Tokens shared by every row of ``tokens`` [S, ctx], capped so each row keeps its pooled token."""
    differs = (tokens != tokens[:1]).any(dim=0)
    first_difference = int(differs.int().argmax()) if bool(differs.any()) else tokens.shape[1]
    return max(1, min(first_difference, int(ends.min())))


@torch.inference_mode()
def encode_prompt_grid(
    model: FetalCLIP,
    prompts: Sequence[Sequence[str]],
    max_rows: int = DEFAULT_MAX_ROWS,
    share_prefixes: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Unnormalised text features ``[G, S, E]`` of a ``G x S`` grid of prompts (rows: prompts that start alike).

    Each row's common token prefix is encoded once; the result equals ``model.encode_text`` on every prompt
    up to float rounding. Rows may differ in length and prefix; they are bucketed by prefix length.
    """
    clip = getattr(model, "clip", None)  # None: a backend without the torch tower (ONNX): the plain path
    n_rows = len(prompts)
    n_cols = len(prompts[0]) if n_rows else 0
    if any(len(row) != n_cols for row in prompts):
        raise ValueError("encode_prompt_grid: every row needs the same number of prompts")
    if n_rows == 0 or n_cols == 0:
        return torch.zeros(n_rows, n_cols, model.embed_dim)
    flat = [text for row in prompts for text in row]
    tokens = model.tokenize(flat).to(model.device).view(n_rows, n_cols, -1)
    if not (share_prefixes and clip is not None and supports_prefix_sharing(clip)):
        chunk = max(1, max_rows // tokens.shape[-1])
        flat_tokens = tokens.view(n_rows * n_cols, -1)
        encode = clip.encode_text if clip is not None else model.encode_text
        out = torch.cat([encode(flat_tokens[i : i + chunk]) for i in range(0, len(flat_tokens), chunk)])
        return out.float().view(n_rows, n_cols, -1).cpu()

    from ..progress import progress_bar

    ends = _end_positions(clip, tokens)  # [G, S]
    prefix_lengths = [_common_prefix_length(tokens[g], ends[g]) for g in range(n_rows)]
    out = torch.empty(n_rows, n_cols, model.embed_dim)
    bar = progress_bar(total=n_rows * n_cols, unit="prompt", desc="prompts", disable=not progress)
    for prefix_length in sorted(set(prefix_lengths)):
        rows = [g for g in range(n_rows) if prefix_lengths[g] == prefix_length]
        tail = int(ends[rows].max()) - prefix_length + 1
        columns_per_pass = max(1, min(n_cols, max_rows // tail))
        rows_per_pass = max(1, max_rows // max(prefix_length, columns_per_pass * tail))
        for start in range(0, len(rows), rows_per_pass):
            chunk_rows = torch.tensor(rows[start : start + rows_per_pass], device=tokens.device)
            cache = _prefix_cache(clip, tokens[chunk_rows, 0, :prefix_length])
            for col in range(0, n_cols, columns_per_pass):
                block = tokens[chunk_rows, col : col + columns_per_pass]
                suffix = block[..., prefix_length : prefix_length + tail]
                pool_index = ends[chunk_rows, col : col + columns_per_pass] - prefix_length
                features = _extend(clip, cache, suffix, pool_index)
                out[chunk_rows.cpu(), col : col + columns_per_pass] = features.float().cpu()
                bar.update(features.shape[0] * features.shape[1])
    bar.close()
    return out
