"""The page in a real browser: Chromium driven by Selenium (Debian's chromium-driver) against a real uvicorn on
127.0.0.1 serving fetalclip-tiny. Upload a scan through the file input, wait for the answer, check it is the
API's, toggle the CAM, no console errors, a screenshot that is not blank.

Skips without Chromium, chromedriver or selenium, unless ``FETALCLIP_REQUIRE_CHROMIUM`` is set (CI), then fails.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
pytest.importorskip("uvicorn", reason="the service needs the [serve] extra (uvicorn)")
pytest.importorskip("httpx", reason="the service tests talk to the server with httpx")


def _need_browser():
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        message = "real-browser test needs " + " and ".join(missing)
        if os.environ.get("FETALCLIP_REQUIRE_CHROMIUM"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(predictor):
    """A uvicorn server in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    from fetalclip.serve import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, warm_up=False), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def live_server(brain_predictor):
    with serving(brain_predictor) as url:
        yield url


def _scan_file(tmp_path: Path, scan_image, encode_image) -> tuple[Path, str]:
    """A real HC18 image with its spacing when the shared data is here, else the synthetic test scan."""
    root = Path(os.environ.get("FETALCLIP_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    hc18 = root / "hc18" / "training_set" / "000_HC.png"
    if hc18.is_file():
        return hc18, "0.0691358041432"
    path = tmp_path / "scan.png"
    path.write_bytes(encode_image(scan_image))
    return path, "0.15"


def _browser(chromium: str, driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def _answered(browser, wait):
    from selenium.webdriver.common.by import By

    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("answered", "error"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "answered", \
        browser.find_element(By.ID, "error").text


def test_the_page_answers_an_uploaded_scan_like_the_api(live_server, tmp_path, scan_image, encode_image):
    chromium, driver_path = _need_browser()
    import httpx
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    path, spacing = _scan_file(tmp_path, scan_image, encode_image)
    api = httpx.post(f"{live_server}/v1/predict", files={"file": (path.name, path.read_bytes())},
                     data={"spacing_mm": spacing}, timeout=60).json()
    browser = _browser(chromium, driver_path)
    try:
        browser.get(live_server + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
        browser.find_element(By.ID, "spacing-input").send_keys(spacing)
        browser.find_element(By.ID, "file-input").send_keys(str(path.resolve()))
        _answered(browser, wait)
        chart = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#plane-chart svg")))
        assert chart.get_attribute("data-plane") == api["plane"]["label"]
        assert browser.find_element(By.ID, "plane-line").text.startswith(api["plane"]["label"])
        assert api["gestational_age"]["weeks_days"] in browser.find_element(By.ID, "age-line").text
        assert browser.find_elements(By.CSS_SELECTOR, "#ga-chart svg polyline")  # the WHO centiles are drawn
        toggle = wait.until(ready.element_to_be_clickable((By.ID, "cam-toggle")))
        toggle.send_keys(" ")  # by keyboard: the toggle is a focusable checkbox
        wait.until(lambda b: b.find_element(By.ID, "cam-canvas").is_displayed())
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=float)
        assert shot.std() > 10, "the screenshot is blank"
    finally:
        browser.quit()


class _WithHead:
    """An answer with head biometry added, in the form ``ScanPrediction.biometry`` (``HeadBiometry``) takes."""

    def __init__(self, answer):
        self.answer = answer

    def __getattr__(self, name):  # plane, notes, ...: what a sweep reads of each frame's answer
        return getattr(self.answer, name)

    def to_dict(self):
        ellipse = {"cx": 120.0, "cy": 90.0, "a": 60.0, "b": 45.0, "angle": 0.3}
        return {**self.answer.to_dict(), "biometry": {"ellipse": ellipse, "pixel_spacing_mm": 0.15, "hc_mm": 166.2,
                                                      "bpd_mm": 13.5, "ofd_mm": 18.0, "ga_who_weeks_days": "19w3d",
                                                      "hc_percentile": 48.0, "reason": None}}


def test_the_page_shows_head_biometry_its_ellipse_and_a_sweeps_best_frames(tmp_path, tiny_model, scan_image,
                                                                            encode_image, dicom_writer, ramp_frames):
    chromium, driver_path = _need_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fetalclip.tasks.predictor import Predictor

    class MeasuringPredictor(Predictor):
        def predict_many(self, *args, **kwargs):
            return [_WithHead(answer) for answer in super().predict_many(*args, **kwargs)]

    path = tmp_path / "head.png"
    path.write_bytes(encode_image(scan_image))
    predictor = MeasuringPredictor(tiny_model, plane_prompts={"brain": ["Ultrasound image of the fetal brain"]})
    with serving(predictor) as url:
        browser = _browser(chromium, driver_path)
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            browser.find_element(By.ID, "file-input").send_keys(str(path))
            _answered(browser, wait)
            text = browser.find_element(By.ID, "biometry-list").text
            assert "166.2 mm" in text and "BPD" in text and "OFD" in text and "19w3d" in text
            ellipse = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#ellipse-layer ellipse"))[0]
            # 240x180 original in a 240 square, drawn at 448 px: centre (120, 90 + 30) * 448 / 240
            assert float(ellipse.get_attribute("cx")) == pytest.approx(224.0)
            assert float(ellipse.get_attribute("cy")) == pytest.approx(120 * 448 / 240)
            cine = dicom_writer(tmp_path / "loop.dcm", ramp_frames, pixel_spacing_mm=(0.2, 0.2))
            browser.execute_script("document.body.dataset.state = 'ready'")
            browser.find_element(By.ID, "file-input").send_keys(str(cine))
            _answered(browser, wait)
            rows = browser.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr")
            assert browser.find_element(By.ID, "sweep-box").is_displayed() and rows and rows[0].text.startswith("brain")
            assert "of 5" in browser.find_element(By.ID, "frame-line").text
            assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        finally:
            browser.quit()
