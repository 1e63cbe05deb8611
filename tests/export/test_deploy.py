"""Deploying the exported model: ``predict --backend onnx`` and the service answer as the torch model does."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fetalclip.cli import app, main


def test_predict_with_the_onnx_backend_gives_the_torch_answer(tiny_export, tmp_path, hc18_images, capsys):
    files, _ = hc18_images
    runner = CliRunner()
    for backend, model, out in (("torch", "fetalclip-tiny", "t.json"), ("onnx", str(tiny_export), "o.json")):
        result = runner.invoke(app, ["predict", str(files[0]), "--model", model, "--backend", backend, "--view", "brain",
                                     "--spacing", "0.2", "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    torch_answer, onnx_answer = (json.loads((tmp_path / name).read_text())["predictions"][0] for name in ("t.json", "o.json"))
    assert onnx_answer["plane"]["label"] == torch_answer["plane"]["label"]
    assert onnx_answer["gestational_age"]["days"] == torch_answer["gestational_age"]["days"]
    for name, probability in torch_answer["plane"]["probabilities"].items():
        assert onnx_answer["plane"]["probabilities"][name] == pytest.approx(probability, abs=1e-5)
    with pytest.raises(SystemExit) as info:
        main(["predict", str(files[0]), "--model", str(tiny_export), "--backend", "onnx", "--segmenter", str(tmp_path)])
    assert info.value.code == 2 and "use --backend torch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(files[0]), "--model", str(tiny_export)])  # an export folder needs --backend onnx
    assert "--backend onnx" in capsys.readouterr().err


def test_the_service_runs_the_exported_model(tiny_export, hc18_images):
    pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
    from fastapi.testclient import TestClient

    from fetalclip.serve.app import create_app
    from fetalclip.serve.settings import ServeSettings

    files, _ = hc18_images
    with TestClient(create_app(ServeSettings(model=str(tiny_export), backend="onnx", warm_up=False))) as client:
        answer = client.post("/v1/predict", files={"file": ("scan.png", files[0].read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["plane"]["label"] and client.get("/v1/model").status_code == 200
