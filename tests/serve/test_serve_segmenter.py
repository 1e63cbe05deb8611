"""With a segmenter the service answers head biometry (the predictor's) and says which segmenter it runs."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")

BRAIN_ONLY = {"brain": ["Ultrasound image of the fetal brain"]}


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory, tiny_model):
    """A decoder trained for a few epochs on phantom heads, saved the way `probe segment --save` does."""
    import torch

    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.segmentation import run_segmentation, save_decoder, segmentation_data

    heads = open_dataset("sim:12,size=96,per_patient=2,classes=brain")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = FeatureCache(tiny_model, None)
        data, originals = segmentation_data(cache, heads, size=32, merge_labels=True)
        _, best, _ = run_segmentation(data, originals, epochs=4, lr=1e-2, channels=[8] * 5, seed=3)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("segmenter")
    save_decoder(folder, best.decoder, {"model": "fetalclip-tiny", "name": tiny_model.name, "fingerprint": cache.fingerprint,
                                        "taps": cache.blocks(heads).taps}, extra={"size": 32})
    return folder, heads


def test_predict_carries_the_predictors_biometry(serve_client, tiny_model, segmenter_folder, encode_image):
    import json

    import numpy as np

    from fetalclip.tasks.predictor import Predictor

    folder, heads = segmenter_folder
    predictor = Predictor(tiny_model, segmenter=folder, plane_prompts=BRAIN_ONLY)
    image = np.asarray(heads[0]["image"])
    with serve_client(predictor) as client:
        answer = client.post("/v1/predict", files={"file": ("head.png", encode_image(image))}, data={"spacing_mm": "0.2"})
        info = client.get("/v1/model").json()
    assert answer.status_code == 200, answer.text
    expected = predictor(image, spacing_mm=0.2, source="head.png").to_dict()
    assert answer.json() == json.loads(json.dumps(expected))
    assert answer.json()["biometry"] is not None and set(answer.json()["biometry"]) >= {"ellipse", "hc_mm", "reason"}
    assert info["segmenter"]["taps"] == list(predictor.segmenter.taps) and info["segmenter"]["size"] == 32
