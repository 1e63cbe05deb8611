"""``export_onnx`` and ``fetalclip export``: graphs, heads and manifest; atomic, refusing to overwrite."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'fetalclip[export]')")

from fetalclip.cli import app  # noqa: E402
from fetalclip.errors import OutputError  # noqa: E402
from fetalclip.export import OnnxModel, export_onnx, read_manifest  # noqa: E402
from fetalclip.export.heads import ga_day_features, parse_spacings  # noqa: E402
from fetalclip.tasks.features import model_fingerprint  # noqa: E402
from fetalclip.tasks.gestational_age import day_text_features, load_templates  # noqa: E402
from fetalclip.tasks.zeroshot import build_classifier, load_prompts  # noqa: E402

runner = CliRunner()


def test_folder_holds_graphs_heads_and_a_manifest_with_parity(tiny_export, tiny_model):
    names = sorted(p.name for p in tiny_export.iterdir())
    assert names == ["heads.npz", "image.int8.onnx", "image.onnx", "manifest.json", "text.int8.onnx", "text.onnx"]
    manifest = read_manifest(tiny_export)
    assert manifest["fingerprint"] == model_fingerprint(tiny_model)
    assert manifest["preprocess"] == tiny_model.preprocess.config.to_dict()
    assert manifest["opset"] == 17 and manifest["context_length"] == 117 and manifest["quantisation"]["ops"]
    parity = manifest["parity"]
    assert parity["fp32"]["passed"] and parity["fp32"]["image_max_abs"] <= 1e-5 and parity["fp32"]["text_max_abs"] <= 1e-5
    assert parity["fp32"]["batch_one_max_abs"] <= 1e-6  # the batch axis is dynamic
    assert parity["int8"]["image_min_cosine_to_fp32"] >= 0.999 and parity["int8"]["same_plane"] == 1.0


def test_heads_are_what_the_task_functions_compute(tiny_export, tiny_model):
    model = OnnxModel(tiny_export)
    for task in ("planes", "brain"):
        prompts = load_prompts(task=task)
        classes, matrix = model.classifier(task)
        assert classes == list(prompts)
        np.testing.assert_allclose(matrix, build_classifier(tiny_model, classes, prompts), atol=1e-6)
    templates = load_templates()
    with torch.inference_mode():
        reference = day_text_features(tiny_model, templates, ["0.30", "0.55"])
    # 0.30 comes from the exported bank, 0.55 (not exported) from the text graph on demand.
    bank = ga_day_features(model, ["0.30", "0.55"])
    assert bank.shape == reference.shape == (2, 175, 128)
    np.testing.assert_allclose(bank, reference, atol=1e-5)


def test_existing_folder_is_refused_unless_overwrite(tmp_path, tiny_model):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        export_onnx(tiny_model, out, ga_spacings=[])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export_onnx(tiny_model, out, ga_spacings=[], overwrite=True)
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary folder left behind


def test_export_command_writes_and_then_refuses(tmp_path):
    out = tmp_path / "exp"
    args = ["export", "--model", "fetalclip-tiny", "--out", str(out), "--ga-spacings", "0.40"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fp32  image max|d|" in result.output and "ok" in result.output
    assert json.loads((out / "manifest.json").read_text())["heads"]["ga_spacings"] == ["0.40"]
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception or again.output)


def test_spacing_grid_parsing():
    assert parse_spacings("0.10:0.13:0.01") == [0.1, 0.11, 0.12, 0.13]
    assert parse_spacings("0.3, 0.45") == [0.3, 0.45] and parse_spacings("") == []
    with pytest.raises(Exception, match="start:stop:step"):
        parse_spacings("0.5:0.1:0.01")


@pytest.mark.slow
def test_published_architecture_exports_with_parity(tmp_path):
    from fetalclip.models import create_model

    model = create_model("fetalclip-vit-l14", seed=1)
    manifest = export_onnx(model, tmp_path / "l14", ga_spacings=[])
    fp32 = manifest["parity"]["fp32"]
    assert fp32["passed"], fp32
    assert manifest["embed_dim"] == 768 and manifest["context_length"] == 117
