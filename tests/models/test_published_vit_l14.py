"""The published architecture, end to end: random ViT-L/14 weights saved the way FetalCLIP_weights.pt is."""

import open_clip
import pytest
import torch

import fetalclip
from fetalclip.models import create_model, write_published_checkpoint


@pytest.mark.slow
def test_published_weights_match_plain_open_clip(tmp_path):
    source = create_model("fetalclip-vit-l14", seed=3)
    path = write_published_checkpoint(tmp_path / "FetalCLIP_weights.pt", source.clip.state_dict(), epoch=1)
    del source

    ours = fetalclip.load(path)
    assert ours.name == "fetalclip-vit-l14"

    # The same file through open_clip alone: its own ViT-L-14 config with the 117-token context.
    reference = open_clip.create_model("ViT-L-14", pretrained=None, force_context_length=117)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    reference.eval()
    tokenizer = open_clip.get_tokenizer("ViT-L-14", context_length=117)

    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    prompts = ["Ultrasound image at 20 weeks and 3 days showing the fetal brain, 0.42 mm/pixel.", "maternal cervix"]
    with torch.inference_mode():
        image_diff = (ours.encode_image(images) - reference.encode_image(images)).abs().max().item()
        text_diff = (ours.encode_text(prompts) - reference.encode_text(tokenizer(prompts))).abs().max().item()
    assert image_diff < 1e-5
    assert text_diff < 1e-5
