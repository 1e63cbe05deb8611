"""``fetalclip serve`` as a user starts it: settings, the API key file, loopback by default, graceful shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
pytest.importorskip("uvicorn", reason="the service needs the [serve] extra (uvicorn)")
pytest.importorskip("httpx", reason="the service tests talk to the server with httpx")


def test_settings_build_the_app_and_openapi_documents_the_routes(tmp_path):
    from fastapi.testclient import TestClient

    from fetalclip.errors import FetalCLIPError
    from fetalclip.serve import ServeSettings, create_app
    from fetalclip.serve.settings import read_api_key

    app = create_app(ServeSettings(model="fetalclip-tiny", warm_up=False))
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
        assert client.get("/v1/model").json()["reference"] == "fetalclip-tiny"
    assert {"/v1/predict", "/v1/embed", "/v1/embed-text", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "ScanPrediction" in schema["paths"]["/v1/predict"]["post"]["description"]
    documented = schema["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/ScanPrediction"} in documented["anyOf"]
    assert {"plane", "gestational_age", "biometry"} <= set(schema["components"]["schemas"]["ScanPrediction"]["properties"])
    key = tmp_path / "key"
    key.write_text("s3cret-" + "k" * 20 + "\n")
    assert read_api_key(key) == "s3cret-" + "k" * 20
    key.write_text("short\n")
    with pytest.raises(FetalCLIPError, match="at least 16"):
        read_api_key(key)
    with pytest.raises(FetalCLIPError, match="max_batch"):
        ServeSettings(max_batch=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_binds_loopback_needs_its_key_and_finishes_requests_in_flight(tmp_path, scan_png):
    import httpx

    key = "serve-test-" + "k" * 16
    (tmp_path / "key").write_text(key)
    port = _free_port()
    command = [sys.executable, "-m", "fetalclip.cli", "serve", "--model", "fetalclip-tiny", "--port", str(port),
               "--max-wait-ms", "800", "--api-key-file", str(tmp_path / "key")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the service never became ready")
        assert httpx.post(f"{base}/v1/predict", files={"file": ("a.png", scan_png)}).status_code == 401
        answer = {}

        def in_flight():  # sits in the batcher for up to --max-wait-ms while the server is told to stop
            answer["reply"] = httpx.post(f"{base}/v1/predict", files={"file": ("a.png", scan_png)},
                                         headers={"X-API-Key": key}, timeout=60)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        thread.join(60)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (the shell's convention: killed by TERM).
        assert server.wait(60) in (0, -signal.SIGTERM)
        assert answer["reply"].status_code == 200 and answer["reply"].json()["plane"]["label"]
        output = server.stdout.read()
        assert f"http://127.0.0.1:{port}/" in output and "API key required" in output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
