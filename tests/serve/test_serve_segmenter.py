"""With a segmenter the service answers head biometry (the predictor's) and says which segmenter it runs."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")

BRAIN_ONLY = {"brain": ["Ultrasound image of the fetal brain"]}


def test_predict_carries_the_predictors_biometry(serve_client, tiny_model, tiny_segmenter, phantom_heads, encode_image):
    import json

    import numpy as np

    from fetalclip.tasks.predictor import Predictor

    predictor = Predictor(tiny_model, segmenter=tiny_segmenter, plane_prompts=BRAIN_ONLY)
    image = np.asarray(phantom_heads[0]["image"])
    with serve_client(predictor) as client:
        answer = client.post("/v1/predict", files={"file": ("head.png", encode_image(image))}, data={"spacing_mm": "0.2"})
        info = client.get("/v1/model").json()
    assert answer.status_code == 200, answer.text
    expected = predictor(image, spacing_mm=0.2, source="head.png").to_dict()
    assert answer.json() == json.loads(json.dumps(expected))
    assert answer.json()["biometry"] is not None and set(answer.json()["biometry"]) >= {"ellipse", "hc_mm", "reason"}
    assert info["segmenter"]["taps"] == list(predictor.segmenter.taps) and info["segmenter"]["size"] == 32
