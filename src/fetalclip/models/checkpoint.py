"""Checkpoint formats: our safetensors folder, and the published ``FetalCLIP_weights.pt``.

Our format is a folder with ``model.safetensors`` (the open_clip ``CLIP`` state dict, unprefixed) and
``config.json`` (architecture, preprocessing, tokenizer context length and provenance). Loading it never
unpickles anything. The published format is an open_clip training checkpoint pickled by torch: a dict whose
``state_dict`` maps ``module.``-prefixed keys to tensors. We read it with ``torch.load(weights_only=True)``,
which refuses arbitrary code, and check every key and shape before loading, so a wrong or damaged file is a
clear error rather than a silently half-random model. Folders are written under a temporary name and renamed.

Everything read here is untrusted: a ``config.json`` must be an object with an integer ``format_version``, a
``.pt`` must look like a torch file before torch is handed it, and weights must be finite (a NaN would load
without complaint and give NaN embeddings), each failure one ``CheckpointError`` naming the file and key.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "fetalclip"
FORMAT_VERSION = 1
_MAX_LISTED = 8


def hash_weights(state: Mapping[str, torch.Tensor], digest=None):
    """``digest`` (a new sha256 when ``None``) updated with every tensor's name, shape, dtype and bytes, by name.

    The one way weights are fingerprinted (cached features, heads and segmenters bound to an encoder, LoRA's
    base): two models hash alike exactly when their tensors are equal.
    """
    import hashlib

    digest = hashlib.sha256() if digest is None else digest
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        # reshape(-1): a 0-d tensor (a temperature, BatchNorm's batch counter) cannot be viewed as bytes.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def write_checkpoint_dir(
    out_dir: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], overwrite: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` atomically (temporary folder, then rename)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        if any(out_dir.iterdir()):
            raise CheckpointError(f"{out_dir}: already exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
        save_file(tensors, str(tmp_dir / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def read_checkpoint_dir(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and config of one of our checkpoint folders."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"{path}: not a fetalclip checkpoint folder ({required.name} is missing)")
    config = parse_config(config_path)
    try:
        state_dict = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: cannot read weights ({exc}); the file may be truncated") from exc
    return state_dict, config


def parse_config(config_path: Path) -> dict[str, Any]:
    """The settings of a checkpoint's ``config.json``, checked to be an object of our format and version."""
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    except OSError as exc:
        raise CheckpointError(f"{config_path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of settings, found a {type(config).__name__}")
    if config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path}: 'format' is {config.get('format')!r}, expected {FORMAT_NAME!r}")
    version = config.get("format_version", 0)
    # bool is an int to Python; 1.0 or "1" would be guessing what the writer meant.
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{config_path}: 'format_version' is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format version {version} is newer than this fetalclip reads "
            f"({FORMAT_VERSION}); upgrade fetalclip"
        )
    return config


# What a torch.save file starts with: a zip archive (torch >= 1.6) or a raw pickle (protocol 2+).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def check_torch_file(path: Path) -> None:
    """Refuse a file that is plainly not from ``torch.save`` before torch's unpickler is given it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (starts with {head!r}; expected a zip archive or a pickle from torch.save)"
        )


def unpickling_reason(exc: BaseException) -> str:
    """The short reason inside torch's many-line load errors (its weights-only unpickler's own line if there is one)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def read_published_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The unprefixed state dict of a published-format ``.pt`` checkpoint, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load (it is damaged, or holds objects other than tensors and plain containers: "
            f"{unpickling_reason(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch's readers fail on damaged input with many types (struct.error, ...)
        raise CheckpointError(
            f"{path}: cannot read checkpoint, the file may be truncated or not a torch file ({unpickling_reason(exc)})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors under 'state_dict'; found {type(obj).__name__}")
    odd_keys = [key for key in obj if not isinstance(key, str)]
    if odd_keys:
        raise CheckpointError(f"{path}: the state dict has keys that are not names (first: {odd_keys[0]!r})")
    return {_strip_prefix(key): value for key, value in obj.items()}


def write_published_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], epoch: int = 0) -> Path:
    """Save weights the way the published FetalCLIP_weights.pt is laid out (for interoperability and tests)."""
    path = Path(path)
    payload = {"epoch": epoch, "state_dict": {f"module.{k}": v.detach().cpu() for k, v in state_dict.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _strip_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def state_dict_mismatches(
    expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and shape mismatches (as readable strings) between two layouts."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key}: checkpoint {tuple(found[key].shape)} vs model {tuple(expected[key])}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key])
    ]
    return missing, unexpected, shapes


def describe_mismatches(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
    return "; ".join(parts)


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """(first key holding a NaN or infinity, how many keys do), ``None`` when every weight is finite."""
    floating = ((key, value) for key, value in state_dict.items() if value.is_floating_point() or value.is_complex())
    bad = [key for key, value in floating if not bool(torch.isfinite(value).all())]
    return (bad[0], len(bad)) if bad else None


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load with every key and shape checked first, and every weight finite; a problem is a ``CheckpointError``
    naming ``source`` and the first key at fault."""
    expected = {key: value.shape for key, value in module.state_dict().items()}
    problems = describe_mismatches(*state_dict_mismatches(expected, state_dict))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: {problems}")
    non_finite = first_non_finite(state_dict)
    if non_finite is not None:
        key, count = non_finite
        raise CheckpointError(
            f"{source}: weight {key!r} holds NaN or infinite values ({count} tensor(s) do); the checkpoint is damaged"
        )
    module.load_state_dict(state_dict, strict=True)
