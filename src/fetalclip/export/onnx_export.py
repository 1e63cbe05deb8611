"""``export_onnx``: a PyTorch ``FetalCLIP`` to an export folder, atomically, with its parity measured.

The folder is assembled under a temporary name beside the destination and renamed into place only once every
graph, the heads and the manifest are written and the parity figures measured, so an interrupted export leaves
nothing that looks like an export. An existing non-empty destination is refused unless ``overwrite`` is given
(then the old folder is swapped out and removed after the rename). Parity is measured by opening the written
graphs with the runtime a deployment will use (``runtime.OnnxModel``), not by re-running the exporter's trace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import OutputError
from ..io import write_json_atomic
from ..provenance import base_provenance
from . import graphs
from .heads import DEFAULT_GA_SPACINGS, compute_heads, save_heads
from .manifest import FORMAT_NAME, FORMAT_VERSION, HEADS_NAME, MANIFEST_NAME, graph_file
from .parity import measure_parity, parity_inputs
from .runtime import OnnxModel, require_onnxruntime


def export_onnx(
    model,
    out_dir: str | os.PathLike,
    opset: int = graphs.OPSET_DEFAULT,
    int8: bool = False,
    overwrite: bool = False,
    ga_spacings: Sequence[float] = DEFAULT_GA_SPACINGS,
    parity_images: Sequence[Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the export folder ``out_dir`` for ``model``; returns its manifest (parity figures included)."""
    require_onnxruntime()
    out_dir = Path(out_dir).expanduser()
    _check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        manifest = _build(model, tmp, opset, int8, ga_spacings, parity_images, log or (lambda message: None))
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(out_dir, "is a file, not a folder; --out names the export folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(out_dir, "already exists and is not empty (pass --overwrite to replace it)")


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the export gets the permissions of any new folder
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(model, folder: Path, opset: int, int8: bool, ga_spacings, parity_images, log) -> dict[str, Any]:
    from ..tasks.features import model_fingerprint

    seconds: dict[str, float] = {}
    precisions = ["fp32", "int8"] if int8 else ["fp32"]
    for tower, export in (("image", graphs.export_image_graph), ("text", graphs.export_text_graph)):
        log(f"exporting the {tower} tower (opset {opset})")
        started = time.perf_counter()
        export(model, folder / graph_file(tower, "fp32"), opset)
        seconds[f"{tower}_fp32"] = time.perf_counter() - started
    quantisation = None
    if int8:
        for tower in ("image", "text"):
            log(f"quantising the {tower} tower to int8")
            started = time.perf_counter()
            quantisation = graphs.quantise_int8(folder / graph_file(tower, "fp32"), folder / graph_file(tower, "int8"))
            seconds[f"{tower}_int8"] = time.perf_counter() - started
    log(f"computing zero-shot heads ({len(ga_spacings)} GA spacings)")
    started = time.perf_counter()
    heads = compute_heads(model, ga_spacings)
    save_heads(folder / HEADS_NAME, heads)
    seconds["heads"] = time.perf_counter() - started

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model.name,
        "fingerprint": model_fingerprint(model),
        "embed_dim": model.embed_dim,
        "context_length": model.context_length,
        "preprocess": model.preprocess.config.to_dict(),
        "opset": opset,
        "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
        "graphs": {p: {tower: graph_file(tower, p) for tower in ("image", "text")} for p in precisions},
        "inputs": {"image": [graphs.IMAGE_INPUT, "float32 [batch, 3, S, S], project preprocessing"],
                   "text": [graphs.TEXT_INPUT, "int64 [batch, context_length], project tokenizer"]},
        "output": [graphs.OUTPUT, "float32 [batch, embed_dim], unnormalised"],
        "quantisation": quantisation,
        "heads": {"file": HEADS_NAME, "planes": heads["planes_classes"].tolist(), "brain": heads["brain_classes"].tolist(),
                  "ga_spacings": heads["ga_spacings"].tolist()},
        "versions": _versions(),
        "provenance": {**(model.config.get("provenance") or {}), "exported": base_provenance()},
    }
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    log("measuring parity with PyTorch")
    pixels, prompts, described = parity_inputs(model, parity_images)
    runtimes = {p: OnnxModel(folder, precision=p) for p in precisions}
    manifest["parity"] = {"inputs": described, **measure_parity(model, runtimes, pixels, prompts, heads["planes_classifier"])}
    manifest["export_seconds"] = {key: round(value, 3) for key, value in seconds.items()}
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return manifest


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "open_clip": getattr(open_clip, "__version__", "unknown")}
