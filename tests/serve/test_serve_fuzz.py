"""A bounded fuzz: a few hundred malformed uploads, each answered with a 4xx; the server stays up, memory bounded."""

from __future__ import annotations

import resource

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")

MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"GIF89a", b"BM", b"\x00" * 128 + b"DICM",
          b"\x00\x00\x00\x18ftypmp42", b"\x1a\x45\xdf\xa3", b"RIFF\x00\x00\x00\x00AVI ", b"\x00\x00\x01\xba"]


def _malformed(rng: np.random.Generator, valid: list[bytes], bomb_png) -> list[tuple[str, dict, dict]]:
    """(what, files, form fields) for each malformed request."""
    cases = []
    for good in valid:  # truncated at random points
        for cut in sorted(set(rng.integers(1, len(good) - 1, 25).tolist())):
            cases.append(("truncated", {"file": ("x.png", good[:cut])}, {}))
    for magic in MAGICS:  # a real signature followed by junk
        for _ in range(8):
            junk = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
            cases.append(("magic+junk", {"file": ("x.bin", magic + junk)}, {}))
    for _ in range(30):  # no signature at all
        cases.append(("random", {"file": ("x.png", rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8).tobytes())}, {}))
    for width, height in [(30000, 30000), (1, 10**8), (65535, 65535), (0, 10), (10**6, 1)]:
        cases.append(("bomb", {"file": ("b.png", bomb_png(width, height))}, {}))
    for spacing in ["x" * 5000, "1e400", "-0", "0x10", "1,5", "\u00e9", "[]", "None"]:
        cases.append(("spacing", {"file": ("x.png", valid[0])}, {"spacing_mm": spacing}))
    cases.append(("huge field", {"file": ("x.png", valid[0])}, {"spacing_mm": "9" * (2 * 1024 * 1024)}))
    cases.append(("frame", {"file": ("x.png", valid[0])}, {"frame": "-1"}))
    return cases


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt EXIF in the truncated TIFFs
def test_malformed_uploads_are_4xx_and_the_server_stays_up(serve_client, predictor, scan_image, encode_image, bomb_png):
    rng = np.random.default_rng(0)
    valid = [encode_image(scan_image), encode_image(scan_image, "JPEG"), encode_image(scan_image, "TIFF")]
    cases = _malformed(rng, valid, bomb_png)
    assert len(cases) >= 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    statuses = {}
    with serve_client(predictor, max_upload_bytes=4 * 1024 * 1024) as client:
        for index, (what, files, data) in enumerate(cases):
            files_only = what in ("truncated", "magic+junk", "random", "bomb")
            route = "/v1/explain" if what == "frame" else ("/v1/embed" if files_only and index % 5 == 0 else "/v1/predict")
            answer = client.post(route, files=files, data=data)
            assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text[:200])
            assert answer.json()["status"] == answer.status_code and answer.json()["error"]
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        for body, kind in [(b"{}", "application/json"), (b"--nope\r\n", "multipart/form-data; boundary=nope"),
                           (b"a=b", "application/x-www-form-urlencoded")]:
            answer = client.post("/v1/predict", content=body, headers={"content-type": kind})
            assert 400 <= answer.status_code < 500, (kind, answer.status_code)
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.post("/v1/predict", files={"file": ("ok.png", valid[0])}).status_code == 200
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB over {len(cases)} malformed uploads"
    assert {413, 415, 422} <= set(statuses)
