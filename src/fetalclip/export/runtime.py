"""An ONNX Runtime backend honouring the model contract the tasks use: ``OnnxModel``.

``OnnxModel`` reads an export folder (see ``manifest``) and offers what the tasks call on a ``FetalCLIP``:
``name``, ``embed_dim``, ``context_length``, ``device``, ``preprocess`` (the project's own ``Preprocessor``,
built from the manifest, so both backends see identical input tensors), ``tokenize``, ``encode_image`` and
``encode_text`` (tensors or raw inputs in, torch tensors out), plus ``fingerprint`` (the exported tower's) and
the precomputed zero-shot heads. It is not an ``nn.Module``: code that reaches into ``model.clip`` (prefix
sharing, feature taps, training) needs the PyTorch backend.

Sessions are created lazily, per tower and precision, so a deployment that only classifies images never loads
the text graph. ``precision`` picks the graphs: ``fp32`` (parity with PyTorch) or ``int8`` (when exported).
Providers: CUDA when the device asks for it and this onnxruntime build has it, else the CPU provider; the CPU
provider's thread count follows ``torch.get_num_threads()`` so one setting (``OMP_NUM_THREADS``) governs both
backends. onnxruntime is imported on first use, so importing this module costs nothing without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.preprocess import ImageLike, Preprocessor
from ..models.tokenizer import tokenize as _tokenize
from .graphs import IMAGE_INPUT, TEXT_INPUT
from .manifest import HEADS_NAME, PRECISIONS, ExportError, graph_file, read_manifest

BACKENDS = ("torch", "onnx")


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("the ONNX backend needs onnxruntime (pip install 'fetalclip[export]')") from None
    return onnxruntime


def providers_for(device: str | torch.device) -> list[str]:
    ort = require_onnxruntime()
    available = ort.get_available_providers()
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ExportError("device cuda asked for, but this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
    """An ONNX Runtime session on ``path`` with full graph optimisation."""
    ort = require_onnxruntime()
    if not Path(path).is_file():
        raise ExportError(f"{path}: graph file is missing")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are noise for users
    return ort.InferenceSession(str(path), sess_options=options, providers=providers_for(device))


class OnnxModel:
    """The model contract on ONNX Runtime sessions for one export folder and precision."""

    backend = "onnx"

    def __init__(self, folder: str | os.PathLike, precision: str = "fp32", device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if precision not in self.manifest["graphs"]:
            raise ExportError(f"{self.folder}: has no {precision} graphs (export again with --int8)")
        self.precision = precision
        self._device = torch.device(device)
        self.config = {"model_name": self.manifest["model_name"], "embed_dim": self.manifest["embed_dim"],
                       "preprocess": self.manifest["preprocess"], "backend": "onnx", "precision": precision}
        self.preprocess = Preprocessor(self.manifest["preprocess"])
        self._sessions: dict[str, Any] = {}
        self._heads: dict[str, np.ndarray] | None = None

    # -- identity -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest["model_name"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def device(self) -> torch.device:
        return self._device

    def eval(self) -> "OnnxModel":
        return self

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.folder)!r}, name={self.name!r}, precision={self.precision!r})"

    # -- sessions -------------------------------------------------------------------------------------------
    def session(self, tower: str):
        if tower not in self._sessions:
            self._sessions[tower] = open_session(self.folder / graph_file(tower, self.precision), self._device)
        return self._sessions[tower]

    # -- encoders -------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.LongTensor:
        return _tokenize(texts, self.context_length)

    def encode_image(self, images: torch.Tensor | ImageLike | Sequence[ImageLike], normalize: bool = False) -> torch.Tensor:
        """Image embeddings ``[N, E]`` from a preprocessed batch or from raw PIL images/arrays."""
        if not isinstance(images, torch.Tensor):
            if not isinstance(images, (list, tuple)):
                images = [images]
            images = self.preprocess.batch(images)
        pixels = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        features = torch.from_numpy(self.session("image").run(None, {IMAGE_INPUT: pixels})[0])
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, texts: torch.Tensor | str | Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Text embeddings ``[N, E]`` from token ids or from strings."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        ids = np.ascontiguousarray(tokens.detach().to("cpu", torch.int64).numpy())
        features = torch.from_numpy(self.session("text").run(None, {TEXT_INPUT: ids})[0])
        return F.normalize(features, dim=-1) if normalize else features

    def image_encoder(self):
        """Callable ``(batch, normalize) -> features``, the shape ``models.accelerate.image_encoder`` returns."""
        return self.encode_image

    # -- zero-shot heads ------------------------------------------------------------------------------------
    def heads(self) -> dict[str, np.ndarray]:
        if self._heads is None:
            from .heads import load_heads

            self._heads = load_heads(self.folder / HEADS_NAME)
        return self._heads

    def classifier(self, task: str) -> tuple[list[str], torch.Tensor]:
        """Class names and class embeddings ``[C, E]`` precomputed at export for ``planes`` or ``brain``."""
        heads = self.heads()
        if f"{task}_classifier" not in heads:
            raise ExportError(f"{self.folder / HEADS_NAME}: no {task!r} classifier (exported: planes, brain)")
        return [str(c) for c in heads[f"{task}_classes"]], torch.from_numpy(heads[f"{task}_classifier"])


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def load_backend(reference: str | os.PathLike, backend: str = "torch", device: str | torch.device = "cpu",
                 precision: str = "fp32"):
    """A model for ``backend``: ``torch`` loads as ``fetalclip.load``; ``onnx`` opens an export folder."""
    if check_backend(backend) == "onnx":
        require_onnxruntime()
        return OnnxModel(reference, precision=precision, device=device)
    from ..models import load
    from .manifest import is_export_dir

    if is_export_dir(reference):
        raise ExportError(f"{reference}: is an ONNX export; pass --backend onnx to run it")
    return load(reference, device=device)
