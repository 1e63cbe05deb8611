"""The two towers as ONNX graphs with a dynamic batch axis, and their int8 versions.

Exporter choice: PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). It traces
open_clip's towers, ``nn.MultiheadAttention`` included, in about a second for the tiny model (5 s for the
ViT-B/16 image tower) and gives embeddings equal to PyTorch's to float rounding (~3e-6 max abs). The
torch.export-based exporter needs the extra ``onnxscript`` package, took 22 s for the same tower and ran no
faster under ONNX Runtime (measured 2026-12-03), so it is not used. The deprecation warning is silenced below.
PyTorch's fused MHA inference kernel has no ONNX form, so it is switched off while tracing.

Each graph takes what the PyTorch tower takes: ``pixel_values`` ``[N, 3, S, S]`` float32 (the project's own
preprocessing, unchanged) or ``input_ids`` ``[N, context]`` int64 (the project's tokenizer), and returns the
unnormalised embeddings ``[N, E]``; normalising stays with the caller, as ``encode_image(normalize=...)`` does.

int8: ONNX Runtime's dynamic quantisation of the matrix products (weights int8 per output channel, activations
quantised per call), applied after ORT's own shape inference and graph optimisation pass, so the quantiser sees
the fused graph ORT will run (benchmarks/export.py: 3.2-4.3x the PyTorch tower, against 2.5-3.1x for
quantising the raw graph). Layer norms, softmax, GELU and the residual stream stay fp32. The activation scale
is per call, so an int8 embedding depends slightly on the other images in its batch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

OPSET_DEFAULT = 17
IMAGE_INPUT, TEXT_INPUT, OUTPUT = "pixel_values", "input_ids", "embeddings"
# The matrix products: where nearly all of a ViT's time goes, and what int8 pays for.
QUANTISED_OPS = ("MatMul", "Gemm")


class _ImageTower(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixel_values)


class _TextTower(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids)


@contextlib.contextmanager
def _traceable():
    """The exporter's conditions: PyTorch's fused MHA inference kernel off (it has no ONNX form), warnings quiet."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _quiet_exporter():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextlib.contextmanager
def _quiet_exporter():
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation, and warns about negative indices in
        # advanced indexing (the text tower's end-token gather uses argmax positions, never negative).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _export(module: torch.nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int) -> Path:
    with _traceable(), torch.no_grad():
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=[input_name], output_names=[OUTPUT],
            dynamic_axes={input_name: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    return path


def export_image_graph(model, path: str | os.PathLike, opset: int = OPSET_DEFAULT) -> Path:
    """``model.clip``'s image tower as an ONNX graph (CPU, fp32) at ``path``."""
    size = model.preprocess.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.float32)
    return _export(_ImageTower(_cpu_fp32(model.clip)), example, IMAGE_INPUT, Path(path), opset)


def export_text_graph(model, path: str | os.PathLike, opset: int = OPSET_DEFAULT) -> Path:
    """``model.clip``'s text tower as an ONNX graph at ``path``."""
    example = model.tokenize(["a fetal ultrasound image", "the fetal brain"])
    return _export(_TextTower(_cpu_fp32(model.clip)), example, TEXT_INPUT, Path(path), opset)


def _cpu_fp32(clip: torch.nn.Module) -> torch.nn.Module:
    """The tower as the exporter needs it: on the CPU in fp32 (a copy only when it is not already)."""
    first = next(clip.parameters())
    if first.device.type == "cpu" and first.dtype == torch.float32:
        return clip
    import copy

    return copy.deepcopy(clip).to("cpu", torch.float32)


def quantise_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike) -> dict:
    """Write the dynamically quantised int8 version of an fp32 graph; returns how it was quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(QUANTISED_OPS))
    return {"method": "onnxruntime dynamic", "weights": "int8 per output channel", "activations": "uint8 per call",
            "ops": list(QUANTISED_OPS), "pre_process": "onnxruntime quant_pre_process"}
