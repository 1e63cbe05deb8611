"""The ONNX Runtime backend against PyTorch on real images and prompts: fp32 parity, int8 agreement."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'fetalclip[export]')")

from fetalclip.export import ExportError, OnnxModel, load_backend  # noqa: E402
from fetalclip.tasks.zeroshot import classify  # noqa: E402

PROMPTS = ["Ultrasound image of the fetal brain.", "Maternal cervix on a transvaginal scan.",
           "Ultrasound image at 20 weeks and 3 days gestation focusing on the fetal brain; pixel spacing 0.45 mm."]


def test_fp32_graphs_match_pytorch_on_real_images_and_prompts(tiny_export, tiny_model, hc18_images, fpdb_dir):
    from PIL import Image

    planes = sorted((fpdb_dir / "Images").glob("*.png"))[:3]
    images = hc18_images[1] + [Image.open(p).copy() for p in planes]
    model = OnnxModel(tiny_export)
    pixels = tiny_model.preprocess.batch(images)
    with torch.inference_mode():
        image_ref, text_ref = tiny_model.encode_image(pixels), tiny_model.encode_text(PROMPTS)
    assert float((model.encode_image(pixels) - image_ref).abs().max()) <= 1e-5
    assert float((model.encode_text(PROMPTS) - text_ref).abs().max()) <= 1e-5
    # Raw images go through the same preprocessing as the PyTorch model's.
    np.testing.assert_allclose(model.encode_image(images, normalize=True), F.normalize(image_ref, dim=-1), atol=1e-5, rtol=0)


def test_int8_graph_is_close_and_gives_the_same_plane(tiny_export, hc18_images, fpdb_dir):
    from PIL import Image

    images = hc18_images[1] + [Image.open(p).copy() for p in sorted((fpdb_dir / "Images").glob("*.png"))[:5]]
    fp32, int8 = OnnxModel(tiny_export), OnnxModel(tiny_export, precision="int8")
    a, b = fp32.encode_image(images, normalize=True), int8.encode_image(images, normalize=True)
    assert float((a * b).sum(1).min()) >= 0.999
    _, classifier = fp32.classifier("planes")
    assert (classify(fp32, images, classifier).argmax(1) == classify(int8, images, classifier).argmax(1)).all()


def test_contract_the_tasks_use(tiny_export, tiny_model):
    model = OnnxModel(tiny_export)
    assert model.name == "fetalclip-tiny" and model.embed_dim == 128 and model.context_length == 117
    assert model.device == torch.device("cpu") and model.eval() is model
    assert torch.equal(model.tokenize(PROMPTS), tiny_model.tokenize(PROMPTS))


def test_clear_errors(tiny_export, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="not a fetalclip ONNX export"):
        OnnxModel(tmp_path)
    with pytest.raises(ExportError, match="pass --backend onnx"):
        load_backend(tiny_export, "torch")
    with pytest.raises(ExportError, match="unknown backend"):
        load_backend(tiny_export, "tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ExportError, match="needs onnxruntime"):
        load_backend(tiny_export, "onnx")


def test_a_predictor_takes_the_onnx_model_for_planes(tiny_export, tiny_model):
    from fetalclip.sim.dataset import render_sample
    from fetalclip.tasks.predictor import Predictor

    image = render_sample(1)["image"]
    torch_plane = Predictor(tiny_model)(image).to_dict()["plane"]
    onnx_plane = Predictor(OnnxModel(tiny_export))(image).to_dict()["plane"]
    assert onnx_plane["label"] == torch_plane["label"]
    for name, probability in torch_plane["probabilities"].items():
        assert abs(onnx_plane["probabilities"][name] - probability) <= 1e-5


def test_an_onnx_predictor_gives_the_torch_age_and_opens_the_torch_calibration(tiny_export, tiny_model, tmp_path):
    """GA prompts run through the text graph (no torch tower to share prefixes in), and the exported model carries
    the fingerprint of the weights it came from, so a calibration fitted on them is accepted."""
    from fetalclip.sim.dataset import render_sample
    from fetalclip.tasks.features import model_fingerprint
    from fetalclip.tasks.predictor import Predictor

    onnx_model = OnnxModel(tiny_export)
    assert model_fingerprint(onnx_model) == model_fingerprint(tiny_model)
    image = render_sample(1)["image"]
    torch_age = Predictor(tiny_model)(image, spacing_mm=0.2, view="brain").to_dict()["gestational_age"]
    onnx_age = Predictor(onnx_model)(image, spacing_mm=0.2, view="brain").to_dict()["gestational_age"]
    assert torch_age["days"] is not None and onnx_age["days"] == torch_age["days"]
    assert onnx_age["range_days"] == torch_age["range_days"]
