import pytest
import torch

from fetalclip.errors import ModelNotFoundError
from fetalclip.models import count_parameters, create_model, get_model_config, list_models, register_model


def test_builtin_models_are_registered():
    assert {"fetalclip-vit-l14", "fetalclip-vit-b16", "fetalclip-tiny"} <= set(list_models())


def test_published_architecture_matches_the_paper():
    config = get_model_config("fetalclip-vit-l14")
    assert config["embed_dim"] == 768
    assert config["text_cfg"]["context_length"] == 117
    assert config["vision_cfg"] == {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}
    assert config["quick_gelu"] is False
    counts = count_parameters("fetalclip-vit-l14")
    # ~304M vision + ~124M text = ~427M parameters (PUBLISHED_PROTOCOL.md)
    assert 300e6 < counts["vision"] < 308e6
    assert 120e6 < counts["text"] < 128e6


def test_tiny_model_is_small():
    assert count_parameters("fetalclip-tiny")["total"] < 15e6


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelNotFoundError, match="fetalclip-tiny"):
        get_model_config("no-such-model")


def test_get_model_config_returns_a_copy():
    get_model_config("fetalclip-tiny")["embed_dim"] = -1
    assert get_model_config("fetalclip-tiny")["embed_dim"] == 128


def test_register_user_model():
    config = get_model_config("fetalclip-tiny")
    config["embed_dim"] = 64
    register_model("test-user-model", config)
    assert "test-user-model" in list_models()
    assert create_model("test-user-model", seed=0).embed_dim == 64
    with pytest.raises(ValueError, match="lacks"):
        register_model("broken", {"embed_dim": 8})


def test_seeded_creation_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("fetalclip-tiny", seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = create_model("fetalclip-tiny", seed=7)
    c = create_model("fetalclip-tiny", seed=8)
    pa, pb, pc = (dict(m.named_parameters())["clip.visual.conv1.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_forward_backward_reaches_every_parameter(tiny_model):
    model = create_model("fetalclip-tiny", seed=1).train()
    images = torch.randn(2, 3, 224, 224)
    tokens = model.tokenize(["fetal brain", "fetal femur"])
    image_features, text_features, scale = model(images, tokens)
    logits = scale * image_features @ text_features.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2)) + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []


def test_model_object_contract(tiny_model):
    assert tiny_model.context_length == 117
    assert tiny_model.tokenize(["a", "b"]).shape == (2, 117)
    with torch.inference_mode():
        text = tiny_model.encode_text(["fetal abdomen"], normalize=True)
    assert text.shape == (1, 128)
    assert torch.allclose(text.norm(dim=-1), torch.ones(1))
    assert tiny_model.preprocess.image_size == 224
