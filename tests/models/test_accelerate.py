"""The accelerated image towers: exact mode matches open_clip, int8 stays within a cosine of 0.999."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fetalclip.errors import FetalCLIPError
from fetalclip.models.accelerate import (
    DynamicInt8Linear,
    FusedSelfAttention,
    PackedLinear,
    accelerate_module,
    image_encoder,
)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 224, 224, generator=generator)


def _reference(model, images):
    with torch.inference_mode():
        return model.clip.encode_image(images, normalize=True)


def test_exact_mode_matches_open_clip_and_replaces_every_linear(tiny_model, batch):
    encoder = image_encoder(tiny_model, "exact", cache=False)
    blocks = len(tiny_model.clip.visual.transformer.resblocks)
    assert sum(isinstance(m, FusedSelfAttention) for m in encoder.visual.modules()) == blocks
    # qkv, out, fc(+gelu), proj per block.
    assert sum(type(m) is PackedLinear for m in encoder.visual.modules()) == 4 * blocks
    fused_gelu = [m for m in encoder.visual.modules() if type(m) is PackedLinear and m.gelu is not None]
    assert len(fused_gelu) == blocks
    np.testing.assert_allclose(encoder(batch, normalize=True), _reference(tiny_model, batch), atol=1e-5, rtol=0)
    raw = encoder(batch)
    np.testing.assert_allclose(raw, tiny_model.clip.encode_image(batch).detach(), atol=1e-5, rtol=1e-5)


def test_original_model_is_untouched_and_weights_are_shared(tiny_model):
    visual = tiny_model.clip.visual
    before = {name: type(m) for name, m in visual.named_modules()}
    fast = accelerate_module(visual, "exact")
    assert {name: type(m) for name, m in visual.named_modules()} == before
    assert fast.conv1.weight is visual.conv1.weight
    assert fast.positional_embedding is visual.positional_embedding


def test_int8_mode_quantises_attention_projections_and_keeps_cosine(tiny_model, batch):
    encoder = image_encoder(tiny_model, "int8", cache=False)
    blocks = len(tiny_model.clip.visual.transformer.resblocks)
    attention = [m for m in encoder.visual.modules() if isinstance(m, FusedSelfAttention)]
    assert len(attention) == blocks and all(isinstance(m.qkv, DynamicInt8Linear) for m in attention)
    assert sum(isinstance(m, DynamicInt8Linear) for m in encoder.visual.modules()) == 4 * blocks
    exact = image_encoder(tiny_model, "exact", cache=False)(batch, normalize=True)
    fast = encoder(batch, normalize=True)
    cosine = (fast * exact).sum(-1)
    assert cosine.min() >= 0.999
    assert (fast - exact).abs().max() > 1e-6  # it really is a different computation


def test_int8_cosine_on_real_ultrasound(hc18_dir, tiny_model):
    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:6]
    images = torch.stack([tiny_model.preprocess(Image.open(f)) for f in files])
    exact = image_encoder(tiny_model, "exact")(images, normalize=True)
    np.testing.assert_allclose(exact, _reference(tiny_model, images), atol=1e-5, rtol=0)
    cosine = (image_encoder(tiny_model, "int8")(images, normalize=True) * exact).sum(-1)
    assert cosine.min() >= 0.999, cosine


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_fused_attention_matches_multihead_attention(batch_first, mask):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    fused = FusedSelfAttention(mha, PackedLinear)
    x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    attn_mask = None
    if mask is not None:
        causal = torch.ones(7, 7, dtype=torch.bool).triu(1)  # MHA convention: True = blocked
        attn_mask = causal if mask == "bool" else torch.zeros(7, 7).masked_fill(causal, float("-inf"))
    with torch.inference_mode():
        expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        got, weights = fused(x, x, x, need_weights=False, attn_mask=attn_mask)
    assert weights is None
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_fused_attention_falls_back_for_calls_it_does_not_fuse():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    fused = FusedSelfAttention(mha, PackedLinear)
    q, kv = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    with torch.inference_mode():
        out, weights = fused(q, kv, kv)  # cross-attention, weights requested
        ref_out, ref_weights = mha(q, kv, kv)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-6)


def test_packed_linear_with_gelu_matches_and_handles_any_row_count():
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    packed = PackedLinear(linear.weight, linear.bias, "none")
    for shape in [(1, 24), (5, 3, 24), (300, 24)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            np.testing.assert_allclose(packed(x), F.gelu(linear(x)), atol=1e-5, rtol=0)


def test_encoder_cache_is_invalidated_by_weight_updates(batch):
    from fetalclip.models import create_model

    model = create_model("fetalclip-tiny", seed=3)
    first = image_encoder(model, "exact")
    assert image_encoder(model, "exact") is first
    before = first(batch[:1], normalize=True)
    with torch.no_grad():
        model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(2.0)
    second = image_encoder(model, "exact")
    assert second is not first
    after = second(batch[:1], normalize=True)
    assert (after - before).abs().max() > 1e-4
    np.testing.assert_allclose(after, _reference(model, batch[:1]), atol=1e-5, rtol=0)


def test_unknown_mode_is_a_clear_error(tiny_model):
    with pytest.raises(FetalCLIPError, match="unknown inference mode 'fp4'"):
        image_encoder(tiny_model, "fp4")
