"""The service's routes and every refusal, in process (TestClient) on fetalclip-tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
pytest.importorskip("prometheus_client", reason="the service needs the [serve] extra (prometheus-client)")


def _file(data: bytes, name: str = "scan.png") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def test_predict_is_the_predictors_json_for_one_scan(serve_client, predictor, scan_image, scan_png):
    with serve_client(predictor) as client:
        answer = client.post("/v1/predict", files=_file(scan_png, "dir/x/scan.png"))
    assert answer.status_code == 200, answer.text
    expected = predictor(scan_image, source="scan.png").to_dict()
    assert answer.json() == json.loads(json.dumps(expected))  # the same schema and values as `fetalclip predict`


def test_age_with_spacing_and_bad_spacing_is_400(serve_client, brain_predictor, scan_png):
    with serve_client(brain_predictor) as client:
        good = client.post("/v1/predict", files=_file(scan_png), data={"spacing_mm": "0.15"}).json()
        assert good["gestational_age"]["days"] is not None and good["brain_plane"]["label"]
        none = client.post("/v1/predict", files=_file(scan_png)).json()
        assert none["gestational_age"]["days"] is None and "spacing" in none["gestational_age"]["reason"]
        for bad in ("abc", "-1", "0", "nan", "inf"):
            refused = client.post("/v1/predict", files=_file(scan_png), data={"spacing_mm": bad})
            assert refused.status_code == 400 and "spacing_mm" in refused.json()["error"], bad


def test_the_operator_can_say_the_view(serve_client, predictor, scan_png):
    with serve_client(predictor) as client:
        told = client.post("/v1/predict", files=_file(scan_png), data={"spacing_mm": "0.15", "view": "brain"}).json()
        refused = client.post("/v1/predict", files=_file(scan_png), data={"view": "elbow"})
    assert told["gestational_age"]["days"] is not None and told["brain_plane"] is not None
    assert refused.status_code == 400 and "elbow" in refused.json()["error"]


def test_dicom_brings_its_spacing_and_no_patient_attribute_leaves(serve_client, brain_predictor, dicom_writer, phi,
                                                                   ramp_frames, tmp_path, caplog):
    import logging

    still = dicom_writer(tmp_path / "a.dcm", ramp_frames[0], pixel_spacing_mm=(0.2, 0.2)).read_bytes()
    cine = dicom_writer(tmp_path / "b.dcm", ramp_frames, pixel_spacing_mm=(0.2, 0.2)).read_bytes()
    caplog.set_level(logging.DEBUG)
    with serve_client(brain_predictor) as client:
        one = client.post("/v1/predict", files=_file(still, "study"))
        sweep = client.post("/v1/predict", files=_file(cine, "loop.bin"))
        embedded = client.post("/v1/embed", files=_file(cine, "loop.bin"))
        info = client.get("/v1/model")
    assert one.status_code == 200 and one.json()["gestational_age"]["days"] is not None
    body = sweep.json()
    assert sweep.status_code == 200 and len(body["frames"]) == len(ramp_frames) and "best_frames" in body
    assert len(embedded.json()["embeddings"]) == len(ramp_frames)
    seen = one.text + sweep.text + embedded.text + info.text + caplog.text
    for value in phi.values():
        assert value not in seen and value.split("^")[0] not in seen


def test_video_cine_is_a_sweep(serve_client, predictor, ramp_frames, video_writer, tmp_path):
    data = video_writer(tmp_path / "loop.mp4", list(ramp_frames)).read_bytes()
    with serve_client(predictor, max_frames=3) as client:
        answer = client.post("/v1/predict", files=_file(data, "loop.png"))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["frames"]) == 3  # evenly spaced over the loop, at most max_frames


def test_content_is_sniffed_not_the_name(serve_client, predictor, scan_png):
    with serve_client(predictor) as client:
        assert client.post("/v1/predict", files=_file(scan_png, "really.dcm")).status_code == 200
        cases = {415: b"%PDF-1.4 not a scan at all", 400: b"", 422: scan_png[: len(scan_png) // 2]}
        for status, data in cases.items():
            refused = client.post("/v1/predict", files=_file(data, "scan.png"))
            assert refused.status_code == status and refused.json()["status"] == status, refused.text
            assert refused.json()["error"]
        missing = client.post("/v1/predict", data={"spacing_mm": "0.2"})
        assert missing.status_code == 400 and "file" in missing.json()["error"]


def test_bodies_over_the_limit_are_413_declared_or_streamed(serve_client, predictor, scan_png):
    with serve_client(predictor, max_upload_bytes=len(scan_png) // 2) as client:
        declared = client.post("/v1/predict", files=_file(scan_png))
        assert declared.status_code == 413 and "limit" in declared.json()["error"]
        chunks = iter([b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n",
                       scan_png, b"\r\n--x--\r\n"])
        streamed = client.post("/v1/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413 and streamed.json()["status"] == 413
        assert client.get("/healthz").status_code == 200


def test_the_readers_pixel_budget_is_413(serve_client, predictor, bomb_png, scan_png, monkeypatch):
    with serve_client(predictor) as client:
        bomb = client.post("/v1/predict", files=_file(bomb_png(30000, 30000)))
        assert bomb.status_code == 413 and "limit" in bomb.json()["error"]
        monkeypatch.setenv("FETALCLIP_MAX_FRAME_PIXELS", "1000")
        small_budget = client.post("/v1/predict", files=_file(scan_png))
        assert small_budget.status_code == 413 and "FETALCLIP_MAX_FRAME_PIXELS" in small_budget.json()["error"]


def test_api_key_is_required_when_set(serve_client, predictor, scan_png):
    key = "k3y-" + "x" * 20
    with serve_client(predictor, api_key=key) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            refused = client.post("/v1/predict", files=_file(scan_png), headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "API key" in refused.json()["error"]
        assert client.get("/metrics").status_code == 401 and client.get("/v1/model").status_code == 401
        assert client.post("/v1/predict", files=_file(scan_png), headers={"X-API-Key": key}).status_code == 200
        assert client.get("/v1/model", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # the page loads


def test_model_info_and_a_calibrated_not_standard_answer(serve_client, scan_png):
    from fetalclip.models import create_model
    from fetalclip.tasks.calibration import Calibration
    from fetalclip.tasks.features import model_fingerprint
    from fetalclip.tasks.predictor import Predictor

    model = create_model("fetalclip-tiny", seed=0)
    model.config["license"] = "CC-BY-NC-4.0"
    fingerprint = model_fingerprint(model)
    classes = ["abdomen", "brain", "femur", "thorax"]
    calibration = Calibration(task="planes", classes=classes, temperature=2.0, coverage=0.9, conformal_threshold=0.5,
                              abstain_threshold=10.0, accept=0.95, model="fetalclip-tiny", model_fingerprint=fingerprint,
                              fit={"dataset": "sim:16", "images": 16})
    with serve_client(Predictor(model, calibration)) as client:
        info = client.get("/v1/model").json()
        answer = client.post("/v1/predict", files=_file(scan_png)).json()
    assert info["fingerprint"] == fingerprint and info["licence"] == "CC-BY-NC-4.0" and info["model"] == "fetalclip-tiny"
    assert info["calibration"]["fit"]["dataset"] == "sim:16" and info["calibration"]["classes"] == classes
    assert answer["plane"]["calibrated"] is True and answer["plane"]["standard_plane"] is False
    assert "not one of the standard planes" in answer["plane"]["reason"]


def test_embeddings_of_images_and_texts(serve_client, predictor, tiny_model, scan_image, scan_png):
    import torch

    with serve_client(predictor) as client:
        image = client.post("/v1/embed", files=_file(scan_png)).json()
        text = client.post("/v1/embed-text", json={"texts": ["fetal brain", "fetal femur"]}).json()
        assert client.post("/v1/embed-text", content=b"not json").status_code == 400
        assert client.post("/v1/embed-text", json={"texts": []}).status_code == 400
        assert client.post("/v1/embed-text", json={"texts": ["a"] * 65}).status_code == 413
    with torch.inference_mode():
        expected = tiny_model.encode_image([scan_image], normalize=True)[0].numpy()
        expected_text = tiny_model.encode_text(["fetal brain"], normalize=True)[0].numpy()
    assert image["dim"] == tiny_model.embed_dim and np.allclose(image["embeddings"][0], expected, atol=1e-5)
    assert len(text["embeddings"]) == 2 and np.allclose(text["embeddings"][0], expected_text, atol=1e-5)


def test_explain_gives_the_model_image_and_a_cam(serve_client, predictor, scan_png):
    with serve_client(predictor) as client:
        answer = client.post("/v1/explain", files=_file(scan_png)).json()
        assert client.post("/v1/explain", files=_file(scan_png), data={"frame": "3"}).status_code == 400
        assert client.post("/v1/explain", files=_file(scan_png), data={"target": "elbow"}).status_code == 400
    cam = np.asarray(answer["cam"])
    assert cam.ndim == 2 and cam.min() >= 0 and cam.max() <= 1 and answer["target"] in predictor.classes
    assert answer["image"].startswith("data:image/png;base64,")


def test_probes_metrics_page_and_cors(serve_client, predictor, scan_png):
    from fastapi.testclient import TestClient

    from fetalclip.serve import create_app

    unstarted = TestClient(create_app(predictor, warm_up=False))  # no lifespan: not ready
    assert unstarted.get("/readyz").status_code == 503 and unstarted.get("/healthz").json() == {"status": "ok"}
    with serve_client(predictor, warm_up=True) as client:
        assert client.get("/readyz").json()["ready"] is True
        client.post("/v1/predict", files=_file(scan_png))
        client.get("/no/such/page")
        text = client.get("/metrics").text
        page = client.get("/")
        script = client.get("/static/app.js")
        preflight = client.get("/healthz", headers={"Origin": "http://elsewhere.example"})
        chart = client.get("/v1/growth/hc").json()
    assert 'fetalclip_requests_total{route="/v1/predict",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text and "fetalclip_batch_size_count" in text
    assert "fetalclip_queue_depth" in text and "fetalclip_request_seconds_bucket" in text
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and script.status_code == 200
    assert "access-control-allow-origin" not in preflight.headers  # CORS is off unless asked for
    assert len(chart["weeks"]) == len(chart["centiles"]["0.5"]) and chart["weeks"][0] == 14.0
    with serve_client(predictor, cors_origins=["http://elsewhere.example"]) as client:
        allowed = client.get("/healthz", headers={"Origin": "http://elsewhere.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_timeout_is_504_and_a_bug_is_a_500_that_leaves_the_worker_alive(serve_client, predictor, scan_png):
    with serve_client(predictor, timeout_s=1e-4) as client:
        late = client.post("/v1/predict", files=_file(scan_png))
        assert late.status_code == 504 and "within" in late.json()["error"]
    with serve_client(predictor) as client:
        batcher = client.app.state.service.batcher
        working = batcher.handlers["predict"]
        batcher.handlers["predict"] = lambda jobs: 1 / 0
        broken = client.post("/v1/predict", files=_file(scan_png))
        assert broken.status_code == 500 and broken.json() == {"error": "internal error (logged on the server)", "status": 500}
        batcher.handlers["predict"] = working
        assert client.post("/v1/predict", files=_file(scan_png)).status_code == 200
