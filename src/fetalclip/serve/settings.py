"""What one service instance runs with, and how it opens its predictor.

``ServeSettings`` is plain data (the ``serve`` command fills it from its options; tests build it directly), so
``create_app`` takes either settings or a ready ``Predictor``. Limits default to what a single scan needs: a
64 MB body (a short DICOM cine), 64 frames of a loop (evenly spaced over a longer one), 30 s per request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FetalCLIPError

API_KEY_ENV = "FETALCLIP_API_KEY"


@dataclass
class ServeSettings:
    model: str = "fetalclip-tiny"
    calibration: str | None = None
    segmenter: str | None = None
    heads: list[str] = field(default_factory=list)  # saved probe heads (probe classify|clips --save-head)
    backend: str = "torch"  # or "onnx": model is a `fetalclip export` folder
    device: str = "cpu"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_upload_bytes: int = 64 * 1024 * 1024
    max_frames: int = 64
    timeout_s: float = 30.0
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all (same-origin only)
    warm_up: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_frames < 1 or self.max_wait_ms < 0:
            raise FetalCLIPError("max_batch, max_queue and max_frames must be >= 1, max_wait_ms >= 0")
        if self.max_upload_bytes < 1 or not self.timeout_s > 0:
            raise FetalCLIPError("max_upload_bytes and timeout_s must be positive")


def read_api_key(path: str | os.PathLike | None) -> str | None:
    """The key in ``path`` (first line, stripped), else ``FETALCLIP_API_KEY``, else None (no key required)."""
    if path is None:
        return os.environ.get(API_KEY_ENV) or None
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FetalCLIPError(f"{path}: cannot read the API key ({exc.__class__.__name__})") from None
    if not key or len(key[0].strip()) < 16:
        raise FetalCLIPError(f"{path}: the API key must be one line of at least 16 characters")
    return key[0].strip()


def open_predictor(settings: ServeSettings) -> Any:
    """The model, its calibration, segmenter and heads (each refused when fitted for other weights), as a predictor."""
    from ..deploy import open_predictor as open_deployed

    return open_deployed(settings.model, backend=settings.backend, calibration=settings.calibration,
                         segmenter=settings.segmenter, heads=settings.heads, device=settings.device)


__all__ = ["API_KEY_ENV", "ServeSettings", "open_predictor", "read_api_key"]
