"""ONNX export of both towers with the zero-shot heads and measured parity, and an ONNX Runtime backend.

Layering: ``runtime`` (the backend) and ``manifest`` sit beside ``models`` and import nothing above it, so
``tasks`` may use the backend; ``onnx_export`` and ``heads`` compute the heads with the task functions and so
sit above ``tasks``. This package therefore imports neither eagerly: ``export_onnx`` is loaded on first use.
"""

from __future__ import annotations

from .manifest import ExportError, is_export_dir, read_manifest
from .runtime import BACKENDS, OnnxModel, load_backend

__all__ = ["BACKENDS", "ExportError", "OnnxModel", "export_onnx", "is_export_dir", "load_backend", "read_manifest"]


def __getattr__(name: str):
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
