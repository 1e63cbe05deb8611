"""Saved probe heads: a trained linear probe kept as one small file, so a prediction can add its score.

A head is one linear layer (``weight [C, K]``, ``bias [C]``) and softmax. It is stored as a single safetensors
file: the two tensors, and a JSON description in the file's metadata header (name, input kind, classes, the
embedding width and frame count it expects, the encoder it was trained on, how it was trained). One file keeps
the weights and the facts about them from drifting apart, and the JSON stays readable with any safetensors
reader.

What a head takes is exactly what the encoder gives: ``image`` heads take ``[N, D]`` image embeddings as
``FetalCLIP.encode_image`` returns them (projected, *not* L2-normalised: the probes train on the feature cache's
raw embeddings, and a probe trained with ``standardize`` has its z-scoring folded into the weights, so there is
no transform to repeat); ``clip`` heads take ``[N, frames, D]`` frame embeddings in temporal order (the clip
probe's concatenation is a reshape). A head is bound to its encoder's weight fingerprint
(``features.model_fingerprint``): weights of another encoder give other embeddings, and ``load_head(path,
encoder)`` refuses them with an error naming both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FetalCLIPError

HEAD_FORMAT = 1
METADATA_KEY = "fetalclip_head"
INPUTS = ("image", "clip")


class HeadEncoderMismatch(FetalCLIPError):
    """A head loaded for an encoder whose weights are not the ones it was trained on."""


@dataclass(frozen=True, eq=False)
class ProbeHead:
    """A trained probe head: ``predict(features)`` gives class probabilities, columns in ``classes`` order."""

    name: str
    input: str  # "image" ([N, D] embeddings) or "clip" ([N, frames, D] frame embeddings in temporal order)
    classes: list[str]
    weight: np.ndarray  # [C, D] or [C, frames * D], float32, on raw embeddings
    bias: np.ndarray  # [C]
    embed_dim: int
    encoder: dict[str, str]  # {"name": ..., "fingerprint": ...}
    frames: int | None = None  # clip heads only
    info: dict[str, Any] = field(default_factory=dict)  # how it was trained (data, recipe, best epoch, ...)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise FetalCLIPError(f"head {self.name!r}: input must be one of {', '.join(INPUTS)}, not {self.input!r}")
        width = self.embed_dim * (self.frames if self.input == "clip" else 1)
        if self.weight.shape != (len(self.classes), width) or self.bias.shape != (len(self.classes),):
            raise FetalCLIPError(f"head {self.name!r}: weight {self.weight.shape} / bias {self.bias.shape} do not fit "
                                 f"{len(self.classes)} classes x {width} features")

    @property
    def fingerprint(self) -> str:
        return self.encoder["fingerprint"]

    def predict(self, features: Any) -> np.ndarray:
        """Probabilities ``[N, C]`` (float32) of ``features`` (numpy or torch; see the module for the shapes)."""
        x = _as_array(features)
        if self.input == "image":
            if x.ndim == 1:
                x = x[None]
            if x.ndim != 2 or x.shape[1] != self.embed_dim:
                raise FetalCLIPError(f"head {self.name!r} takes [N, {self.embed_dim}] image embeddings; got shape {list(x.shape)}")
        else:
            if x.ndim != 3 or x.shape[1:] != (self.frames, self.embed_dim):
                raise FetalCLIPError(f"head {self.name!r} takes [N, {self.frames}, {self.embed_dim}] frame embeddings in "
                                     f"temporal order; got shape {list(x.shape)}")
            x = x.reshape(len(x), self.frames * self.embed_dim)
        # The same arithmetic as the probe's TrainedHead.probabilities, so a saved head scores exactly as it did.
        logits = x @ self.weight.T + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def check_encoder(self, encoder: Any, source: str | os.PathLike | None = None) -> None:
        """Raise ``HeadEncoderMismatch`` unless ``encoder`` (a model, a ``FeatureCache`` or a fingerprint) is the
        encoder this head was trained on."""
        fingerprint = encoder_fingerprint(encoder)
        if fingerprint != self.fingerprint:
            where = f"{source}: " if source is not None else ""
            raise HeadEncoderMismatch(
                f"{where}head {self.name!r} was trained on encoder {self.encoder.get('name')!r} (weights {self.fingerprint[:12]}); "
                f"this encoder's weights are {fingerprint[:12]}: train the head again on it")

    def metadata(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, "name": self.name, "input": self.input, "classes": list(self.classes),
                "embed_dim": self.embed_dim, "frames": self.frames, "encoder": dict(self.encoder), "info": self.info}


def _as_array(features: Any) -> np.ndarray:
    if hasattr(features, "detach"):  # a torch tensor, possibly half precision or on a GPU
        features = features.detach().float().cpu().numpy()
    return np.asarray(features, dtype=np.float32)


def encoder_fingerprint(encoder: Any) -> str:
    """The weight fingerprint of a model, of a ``FeatureCache`` (its model's), or a fingerprint given as text."""
    if isinstance(encoder, str):
        return encoder
    if hasattr(encoder, "fingerprint") and isinstance(encoder.fingerprint, str):
        return encoder.fingerprint
    from .features import model_fingerprint

    return model_fingerprint(encoder)


def head_from_probe(trained: Any, *, name: str, input: str, classes: Sequence[str], encoder_name: str, fingerprint: str,
                    embed_dim: int, frames: int | None = None, info: dict[str, Any] | None = None) -> ProbeHead:
    """A ``ProbeHead`` of a probe's ``TrainedHead`` (its weight and bias; they already act on raw embeddings)."""
    return ProbeHead(name=str(name), input=input, classes=[str(c) for c in classes],
                     weight=np.asarray(trained.weight, dtype=np.float32), bias=np.asarray(trained.bias, dtype=np.float32),
                     embed_dim=int(embed_dim), encoder={"name": str(encoder_name), "fingerprint": str(fingerprint)},
                     frames=None if frames is None else int(frames),
                     info={"best_epoch": int(trained.best_epoch), "val_loss": float(trained.val_loss), "lr": float(trained.lr),
                           "weight_decay": float(trained.weight_decay), **(info or {})})


def save_head(head: ProbeHead, path: str | os.PathLike) -> Path:
    """Write ``head`` to ``path`` (one safetensors file, written atomically); returns the path."""
    from safetensors.numpy import save_file

    from ..io import atomic_path

    path = Path(path)
    tensors = {"weight": np.ascontiguousarray(head.weight), "bias": np.ascontiguousarray(head.bias)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(head.metadata(), sort_keys=True)})
    return path


def load_head(path: str | os.PathLike, encoder: Any = None) -> ProbeHead:
    """The head saved at ``path``; with ``encoder`` (a model, a ``FeatureCache`` or a fingerprint), a head trained
    on other weights is refused (``HeadEncoderMismatch``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FetalCLIPError(f"{path}: no such head file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FetalCLIPError(f"{path}: not a safetensors file ({exc})") from None
    if text is None or "weight" not in tensors or "bias" not in tensors:
        raise FetalCLIPError(f"{path}: not a fetalclip probe head (no {METADATA_KEY!r} metadata or weights)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FetalCLIPError(f"{path}: damaged head description ({exc})") from None
    if meta.get("format") != HEAD_FORMAT:
        raise FetalCLIPError(f"{path}: head format {meta.get('format')!r}; this version reads format {HEAD_FORMAT}")
    try:
        head = ProbeHead(name=meta["name"], input=meta["input"], classes=list(meta["classes"]),
                         weight=tensors["weight"].astype(np.float32), bias=tensors["bias"].astype(np.float32),
                         embed_dim=int(meta["embed_dim"]), encoder=dict(meta["encoder"]), frames=meta.get("frames"),
                         info=dict(meta.get("info") or {}))
    except (KeyError, TypeError) as exc:
        raise FetalCLIPError(f"{path}: head description lacks {exc}") from None
    except FetalCLIPError as exc:
        raise FetalCLIPError(f"{path}: {exc}") from None
    if encoder is not None:
        head.check_encoder(encoder, source=path)
    return head


__all__ = ["HEAD_FORMAT", "HeadEncoderMismatch", "ProbeHead", "encoder_fingerprint", "head_from_probe", "load_head", "save_head"]
