"""LoRA in the model layer: what it adapts, that it starts as the base, merges exactly, and files round-trip."""

import json

import pytest
import torch

import fetalclip
from fetalclip.models import create_model
from fetalclip.models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterError,
    LoraConfig,
    adapter_parameters,
    adapter_state_dict,
    apply_lora,
    base_state_dict,
    count_trainable,
    load_adapter,
    lora_config_of,
    merge_lora,
    merged_state_dict,
    remove_lora,
    save_adapter,
)


@pytest.fixture
def model():
    return create_model("fetalclip-tiny", seed=0)


@pytest.fixture
def inputs(model):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return images, model.tokenize(["transventricular plane of the fetal brain", "fetal femur"])


def encode(model, inputs):
    images, tokens = inputs
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def randomise(params, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def test_adapters_cover_fused_qkv_out_proj_and_mlp_of_both_towers(model):
    params = apply_lora(model, LoraConfig(rank=4, alpha=8))
    names = set(adapter_state_dict(model))
    for prefix in ("visual.transformer.resblocks.5", "transformer.resblocks.3"):
        for weight in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            assert {f"{prefix}.{weight}.lora_A", f"{prefix}.{weight}.lora_B"} <= names
    # The fused in-projection has one rank-4 update per q, k and v block.
    qkv = model.clip.visual.transformer.resblocks[0].attn.parametrizations.in_proj_weight[0]
    assert qkv.lora_A.shape == (3, 4, 192) and qkv.lora_B.shape == (3, 192, 4)
    assert len(params) == 2 * 4 * (6 + 4)
    assert count_trainable(model) == sum(p.numel() for p in params)


def test_towers_and_targets_select_what_is_adapted(model):
    apply_lora(model, LoraConfig(rank=2, targets=("attn",), towers=("image",)))
    names = adapter_state_dict(model)
    assert names and all(k.startswith("visual.") and ".attn." in k for k in names)


def test_at_init_the_adapted_model_computes_the_base(model, inputs):
    base_image, base_text = encode(model, inputs)
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4))
    image, text = encode(model, inputs)
    # Equal up to kernel choice: torch picks other attention / matmul kernels for frozen or non-leaf weights
    # (measured ~1e-6); the weights the model computes with are the base's bit for bit.
    torch.testing.assert_close(image, base_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(text, base_text, rtol=0, atol=1e-5)
    assert torch.equal(model.clip.visual.transformer.resblocks[0].attn.in_proj_weight,
                       before["visual.transformer.resblocks.0.attn.in_proj_weight"])
    base = base_state_dict(model)
    assert base.keys() == before.keys() and all(torch.equal(base[k], before[k]) for k in before)


def test_the_unadapted_model_is_unchanged_bit_for_bit(model, inputs):
    """Taking adapters off again (or never adding them) leaves the base exactly as it was."""
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    reference = encode(create_model("fetalclip-tiny", seed=0), inputs)
    params = apply_lora(model, LoraConfig(rank=4), freeze_base=False)
    randomise(params)
    remove_lora(model)
    after = model.clip.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert lora_config_of(model) is None
    for got, want in zip(encode(model, inputs), reference):
        assert torch.equal(got, want)


def test_only_adapters_receive_gradients_and_every_adapter_does(model, inputs):
    params = apply_lora(model, LoraConfig(rank=4, alpha=8))
    randomise([p for p in params if p.shape[-1] == 4], seed=3)  # non-zero B, so A gets a gradient too
    images, tokens = inputs
    image, text, scale = model(images, tokens)
    (scale * image @ text.T).logsumexp(dim=1).sum().backward()
    adapters = {id(p) for p in params}
    for name, param in model.named_parameters():
        if id(param) in adapters:
            assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_extra_weights_train_beside_the_adapters(model):
    apply_lora(model, LoraConfig(rank=2, extra=("logit_scale", "image_proj")))
    trainable = {name for name, p in model.clip.named_parameters() if p.requires_grad}
    assert {"logit_scale", "visual.proj"} <= trainable and "text_projection" not in trainable
    assert {"logit_scale", "visual.proj"} <= set(adapter_state_dict(model))


def test_merged_equals_unmerged(model, inputs):
    params = apply_lora(model, LoraConfig(rank=4, alpha=8))
    randomise(params)
    adapted = encode(model, inputs)
    plain = merged_state_dict(model)
    merge_lora(model)
    assert lora_config_of(model) is None and not adapter_parameters(model)
    assert set(model.clip.state_dict()) == set(create_model("fetalclip-tiny").clip.state_dict()) == set(plain)
    for got, want in zip(encode(model, inputs), adapted):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert all(torch.equal(plain[k], v) for k, v in model.clip.state_dict().items())


def test_dropout_only_in_training_and_never_in_a_merge(model, inputs):
    params = apply_lora(model, LoraConfig(rank=4, dropout=0.5))
    randomise(params)
    model.eval()
    first, second = encode(model, inputs), encode(model, inputs)
    assert torch.equal(first[0], second[0])
    model.train()
    assert not torch.equal(encode(model, inputs)[0], first[0])
    model.eval()
    plain = merged_state_dict(model)
    merge_lora(model)
    torch.testing.assert_close(encode(model, inputs)[0], first[0], rtol=0, atol=1e-5)
    assert all(torch.equal(plain[k], v) for k, v in model.clip.state_dict().items())


def test_adapter_file_is_small_and_round_trips(model, inputs, tmp_path):
    params = apply_lora(model, LoraConfig(rank=4, alpha=8, extra=("logit_scale",)))
    randomise(params)
    with torch.no_grad():
        model.clip.logit_scale.fill_(3.0)
    adapted = encode(model, inputs)
    folder = save_adapter(model, tmp_path / "adapter", info={"note": "test"})
    meta = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert meta["lora"]["rank"] == 4 and meta["note"] == "test" and len(meta["base"]["fingerprint"]) == 64
    base_dir = create_model("fetalclip-tiny", seed=0).save(tmp_path / "base")
    base_size = (base_dir / "model.safetensors").stat().st_size
    assert (folder / ADAPTER_WEIGHTS).stat().st_size < 0.02 * base_size

    loaded = fetalclip.load(base_dir, adapter=folder)
    assert lora_config_of(loaded) == LoraConfig(rank=4, alpha=8, extra=("logit_scale",))
    assert loaded.clip.logit_scale.item() == 3.0
    for got, want in zip(encode(loaded, inputs), adapted):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert loaded.config["provenance"]["adapter"] == str(folder)


def test_an_adapter_refuses_another_base(model, tmp_path):
    apply_lora(model, LoraConfig(rank=2))
    folder = save_adapter(model, tmp_path / "adapter")
    other = create_model("fetalclip-tiny", seed=1)
    with pytest.raises(AdapterError, match="other base weights"):
        load_adapter(other, folder)
    assert lora_config_of(other) is None
    with pytest.raises(AdapterError, match="adapter.json is missing"):
        load_adapter(other, tmp_path)


def test_adapters_are_not_stacked(model):
    apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(AdapterError, match="already carries"):
        apply_lora(model, LoraConfig(rank=2))


@pytest.mark.parametrize("settings", [{"rank": 0}, {"alpha": 0}, {"targets": ("qkv",)}, {"towers": ()},
                                      {"dropout": 1.0}, {"extra": ("everything",)}])
def test_bad_configs_are_one_error(settings):
    with pytest.raises(AdapterError, match="LoRA config"):
        LoraConfig(**settings)


def test_saving_an_adapted_model_writes_it_merged(tmp_path):
    """``FetalCLIP.save`` on a model that still carries adapters writes the merged weights, which load plainly."""
    import fetalclip
    from fetalclip.models.lora import LoraConfig, adapter_parameters, apply_lora

    model = fetalclip.load("fetalclip-tiny", seed=0)
    apply_lora(model, LoraConfig(rank=2, alpha=4))
    with torch.no_grad():
        for parameter in adapter_parameters(model):
            parameter.add_(0.05)  # a trained adapter: the merged weights differ from the base
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = model.encode_image(images)
    model.save(tmp_path / "merged")
    reloaded = fetalclip.load(tmp_path / "merged")
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.encode_image(images), expected, rtol=1e-5, atol=1e-5)
