"""Opening a predictor for deployment from references: one function ``fetalclip predict`` and the service share.

A deployment names a model (a checkpoint for the torch backend, an export folder for ONNX Runtime), optionally a
calibration, a segmenter and probe heads. Each of those is bound to the weights it was fitted on and is refused
for others; the check runs here, once, before any scan is read. The ONNX backend serves the zero-shot answers
(plane, sub-plane, GA, heads); the segmenter taps the torch tower's intermediate blocks, so it needs ``torch``.
"""

from __future__ import annotations

import os
from typing import Sequence

from .errors import FetalCLIPError

BACKENDS = ("torch", "onnx")


def open_model(reference: str | os.PathLike, backend: str = "torch", device: str = "cpu"):
    """The model behind a predictor: ``fetalclip.load`` for ``torch``, an ``export.OnnxModel`` for ``onnx``."""
    if backend not in BACKENDS:
        raise FetalCLIPError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    from .export.runtime import load_backend

    return load_backend(reference, backend, device=device)


def open_predictor(reference: str | os.PathLike, *, backend: str = "torch", calibration: str | os.PathLike | None = None,
                   segmenter: str | os.PathLike | None = None, heads: Sequence[str | os.PathLike] = (),
                   head_mask: bool = False, device: str = "cpu"):
    """A ``Predictor`` with its calibration, segmenter and heads, each checked against the model's weights."""
    from .tasks.calibration import load_calibration
    from .tasks.features import model_fingerprint
    from .tasks.predictor import Predictor

    if segmenter is not None and backend != "torch":
        raise FetalCLIPError(f"--segmenter {segmenter}: the segmenter reads the torch tower's blocks; use --backend torch")
    model = open_model(reference, backend, device)
    fitted = load_calibration(calibration, model_fingerprint(model)) if calibration is not None else None
    return Predictor(model, fitted, segmenter=segmenter, heads=list(heads), head_mask=head_mask)


__all__ = ["BACKENDS", "open_model", "open_predictor"]
