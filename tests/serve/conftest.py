"""Fixtures of the service tests: predictors on the tiny model, an in-process client, uploads as bytes.

Every test module here starts with ``pytest.importorskip("fastapi")``: without the ``[serve]`` extra the whole
folder skips with that reason.
"""

from __future__ import annotations

import io
import struct
import zlib
from contextlib import contextmanager

import numpy as np
import pytest

BRAIN_ONLY = {"brain": ["Ultrasound image of the fetal brain"]}


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def scan_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (180, 240), dtype=np.uint8)
    image[40:140, 60:180] += 120
    return image


@pytest.fixture(scope="session")
def scan_png(scan_image) -> bytes:
    return png_bytes(scan_image)


@pytest.fixture(scope="session")
def predictor(tiny_model):
    from fetalclip.tasks.predictor import Predictor

    return Predictor(tiny_model)


@pytest.fixture(scope="session")
def brain_predictor(tiny_model):
    """Every scan reads as a head view, so sub-plane and age are always answered."""
    from fetalclip.tasks.predictor import Predictor

    return Predictor(tiny_model, plane_prompts=BRAIN_ONLY)


@pytest.fixture
def serve_client():
    """``serve_client(predictor, **settings)``: a started app (lifespan run) behind a TestClient."""
    from fastapi.testclient import TestClient

    from fetalclip.serve import create_app

    @contextmanager
    def open_client(predictor, **settings):
        settings.setdefault("warm_up", False)
        app = create_app(predictor, **settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return open_client


@pytest.fixture(scope="session")
def encode_image():
    """``encode_image(array, fmt="PNG") -> bytes``."""
    return png_bytes


@pytest.fixture(scope="session")
def bomb_png():
    """``bomb_png(width, height) -> bytes``: a PNG header claiming that many pixels."""
    return png_declaring
