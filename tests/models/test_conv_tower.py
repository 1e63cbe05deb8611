"""fetalclip-tiny-rn: the zoo's convolutional image tower works with the model contract, save/load and export."""

import pytest
import torch

import fetalclip
from fetalclip.errors import FetalCLIPError
from fetalclip.models import create_model, list_models
from fetalclip.models.model import NoImageBlocksError


@pytest.fixture(scope="module")
def rn_model():
    return create_model("fetalclip-tiny-rn", seed=3).eval()


def test_conv_tower_encodes_saves_and_reloads(rn_model, tmp_path):
    assert "fetalclip-tiny-rn" in list_models()
    assert type(rn_model.clip.visual).__name__ == "ModifiedResNet" and rn_model.image_block_count is None
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        first = rn_model.encode_image(images)
        again = fetalclip.load(rn_model.save(tmp_path / "rn")).eval().encode_image(images)
    assert first.shape == (2, 128)
    torch.testing.assert_close(first, again)
    with pytest.raises(NoImageBlocksError, match="no transformer blocks"):
        rn_model.encode_image_intermediates(images, [0])
    from fetalclip.models.layers import cam_layer

    with pytest.raises(FetalCLIPError, match="class-activation maps need a ViT"):
        cam_layer(rn_model)


def test_conv_tower_exports_with_parity(rn_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from fetalclip.export import export_onnx

    manifest = export_onnx(rn_model, tmp_path / "rn-onnx", ga_spacings=[])
    assert manifest["parity"]["fp32"]["passed"], manifest["parity"]["fp32"]
