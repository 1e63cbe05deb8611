"""fetalclip-tiny-rn: the zoo's convolutional image tower works with the model contract (its stages as token
grids, CAMs), save/load and export."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fetalclip
from fetalclip.errors import FetalCLIPError
from fetalclip.models import create_model, list_models
from fetalclip.tasks.explain import compute_cam
from fetalclip.tasks.features import default_taps


@pytest.fixture(scope="module")
def rn_model():
    return create_model("fetalclip-tiny-rn", seed=3).eval()


def test_conv_tower_encodes_saves_and_reloads(rn_model, tmp_path):
    assert "fetalclip-tiny-rn" in list_models()
    assert type(rn_model.clip.visual).__name__ == "ModifiedResNet"
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        first = rn_model.encode_image(images)
        again = fetalclip.load(rn_model.save(tmp_path / "rn")).eval().encode_image(images)
    assert first.shape == (2, 128)
    torch.testing.assert_close(first, again)


def test_conv_stages_are_token_grids_of_one_width(rn_model):
    assert rn_model.image_block_count == 4 and default_taps(4) == [0, 1, 2, 3]
    images = torch.randn(2, 3, 224, 224)
    visual = rn_model.clip.visual
    with torch.no_grad():
        out = rn_model.encode_image_intermediates(images, [0, 3])
        torch.testing.assert_close(out.embeddings, rn_model.encode_image(images))
        first_stage = visual.layer1(visual.stem(images))  # 128 channels at 56 x 56
    # The grid a /16 ViT would have; stage 1 pooled down to it and zero-padded to stage 4's 1,024 channels.
    assert out.blocks.shape == (2, 2, 1024, 14, 14)
    torch.testing.assert_close(out.blocks[:, 0, :128], F.adaptive_avg_pool2d(first_stage, 14))
    assert float(out.blocks[:, 0, 128:].abs().max()) == 0.0
    assert float(out.blocks[:, 1].abs().sum()) > 0  # stage 4 (7 x 7) brought up to the grid
    with pytest.raises(FetalCLIPError, match="out of range for a 4-block encoder"):
        rn_model.encode_image_intermediates(images, [4])


def test_conv_tower_class_activation_maps(rn_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (180, 200), dtype=np.uint8)
    prompts = {"brain": ["a fetal head"], "femur": ["a fetal femur"]}
    cams = {target: compute_cam(rn_model, image, prompts, target=target) for target in prompts}
    for result in cams.values():
        assert result.cam.shape == (7, 7) and result.cam.min() >= 0 and result.cam.max() == pytest.approx(1.0)
    assert not np.allclose(cams["brain"].cam, cams["femur"].cam)  # each class's own evidence


def test_conv_tower_exports_with_parity(rn_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from fetalclip.export import export_onnx

    manifest = export_onnx(rn_model, tmp_path / "rn-onnx", ga_spacings=[])
    assert manifest["parity"]["fp32"]["passed"], manifest["parity"]["fp32"]
