"""The export folder's layout and its manifest: what a deployment needs to know besides the graphs.

An export folder holds ``image.onnx`` and ``text.onnx`` (fp32, dynamic batch), optionally ``image.int8.onnx``
and ``text.int8.onnx``, ``heads.npz`` (the zero-shot class embeddings and the GA text bank) and
``manifest.json``. The manifest is the folder's mark: it names the model and its fingerprint (the same
sha256 of the image tower the feature cache and calibrations use, so a calibration fitted on the PyTorch
model is valid for its export), the preprocessing (which stays the project's own for both backends), the
tokenizer context length, the opset, which graphs are quantised and how, and the parity figures measured when
the graphs were written. It is read back strictly: a folder whose manifest is missing or malformed is one
``ExportError`` naming the file, never a half-configured session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import FetalCLIPError

MANIFEST_NAME = "manifest.json"
HEADS_NAME = "heads.npz"
FORMAT_NAME = "fetalclip-onnx"
FORMAT_VERSION = 1
GRAPH_FILES = {("image", "fp32"): "image.onnx", ("text", "fp32"): "text.onnx",
               ("image", "int8"): "image.int8.onnx", ("text", "int8"): "text.int8.onnx"}
PRECISIONS = ("fp32", "int8")
REQUIRED_KEYS = ("model_name", "fingerprint", "embed_dim", "context_length", "preprocess", "opset", "graphs")


class ExportError(FetalCLIPError):
    """An export that cannot be written, or an export folder that cannot be served."""


def graph_file(tower: str, precision: str) -> str:
    if (tower, precision) not in GRAPH_FILES:
        raise ExportError(f"no {precision} graph of the {tower} tower in the export format (precisions: {', '.join(PRECISIONS)})")
    return GRAPH_FILES[(tower, precision)]


def is_export_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export folder, checked for the keys a runtime needs."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{folder}: not a fetalclip ONNX export ({MANIFEST_NAME} is missing; write one with `fetalclip export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ExportError(f"{path}: not a {FORMAT_NAME} manifest (format is {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {manifest.get('format_version')!r} is not supported (this release reads {FORMAT_VERSION})")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}")
    return manifest
