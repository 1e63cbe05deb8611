"""Encoding one packing input into shard samples (run in the packer's worker processes).

An input is one record of one dataset; it becomes one sample per selected frame, each ``{key}.png`` (8-bit
grey or RGB, after cleaning when on), ``{key}.txt`` (its caption), ``{key}.json`` (``sample_fields``) and, when
there is one, ``{key}.mask.png``. Images that need no change are not re-encoded: an 8-bit grey or RGB PNG
read as is goes into the shard as its own compressed pixel data with every ancillary chunk (text, time,
colour profile) dropped, which is both faster and keeps no stray metadata. Captions are seeded per sample
(seed, input position, frame), so the same settings always give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ImageReadError
from ...io import json_default
from ..captions import CaptionFn, caption_ga_days, caption_sample
from ..readers import as_uint8
from . import rules

# zlib level for images that must be re-encoded: 1 is ~3x faster than PIL's default 6 for ~10% more bytes.
PNG_COMPRESS_LEVEL = 1
_PNG_KEEP = {b"IHDR", b"IDAT", b"IEND"}
_JSON_EXCLUDE = ("image", "mask", "caption")


@dataclass
class PackSettings:
    """What determines a shard set's content; a resumed run must match it exactly."""

    specs: list[str]
    seed: int = 0
    shard_size: int = 1000
    clean: bool = True
    frames: str = "all"
    masks: bool = True
    captions: str = "template"

    def as_dict(self) -> dict[str, Any]:
        return {"specs": list(self.specs), "seed": self.seed, "shard_size": self.shard_size, "clean": self.clean,
                "frames": self.frames, "masks": self.masks, "captions": self.captions}


# Worker state: set in the parent before the pool forks, so datasets and caption functions (even lambdas)
# reach the workers without pickling.
_STATE: dict[str, Any] = {}


def png_bytes(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def stripped_png(path: str | os.PathLike, height: int, width: int, channels: int) -> bytes | None:
    """The file's PNG with only IHDR/IDAT/IEND, if it is an 8-bit grey/RGB PNG of that size; else ``None``."""
    try:
        if os.stat(path).st_size > rules.MAX_IMAGE_MEMBER_BYTES:  # mostly not pixels, and over a member's bound
            return None
        data = Path(path).read_bytes()
    except OSError:
        return None
    signature = rules.PNG_SIGNATURE
    if not data.startswith(signature):
        return None
    chunks, offset = [], len(signature)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", data[offset + 8 : offset + 18])
            if (w, h, depth) != (width, height, 8) or colour != {1: 0, 3: 2}.get(channels):
                return None
        if kind in _PNG_KEEP:
            chunks.append(data[offset:end])
        offset = end
        if kind == b"IEND":
            break
    if not chunks or not chunks[0][4:8] == b"IHDR" or not chunks[-1][4:8] == b"IEND":
        return None
    return signature + b"".join(chunks)


def _stored_image(image: np.ndarray) -> np.ndarray:
    """8-bit grey or RGB, grey when an RGB image's channels agree (exported grey scans often are RGB)."""
    image = as_uint8(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        image = np.ascontiguousarray(image[..., 0])
    return image


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return json_default(value)
    except TypeError:
        return str(value)


def sample_fields(sample: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The JSON record of a packed sample: every field except image, mask and caption, plus dataset, the
    caption's gestational age and its source, height, width and the cleaning stats (or null)."""
    fields = {key: value for key, value in sample.items() if key not in _JSON_EXCLUDE}
    fields.setdefault("dataset", sample.get("metadata", {}).get("dataset") or dataset)
    ga, ga_source = caption_ga_days(sample)
    fields["caption_ga_days"] = None if ga is None else round(ga, 3)
    fields["caption_ga_source"] = ga_source
    fields["height"], fields["width"] = int(sample["image"].shape[0]), int(sample["image"].shape[1])
    fields["cleaning"] = sample.get("metadata", {}).get("cleaning")
    return _json_safe(fields)


def encode_input(task: tuple[int, int, int]) -> tuple[int, list[dict[str, Any]] | None, tuple[str, str] | None]:
    """(position, encoded samples, None) or (position, None, (source, reason)) for one input."""
    from ..cleaning import clean_sample
    from ..manifests import load_hc18_record
    from ..records import load_record_image

    position, dataset_index, record_index = task
    dataset = _STATE["datasets"][dataset_index]
    settings: PackSettings = _STATE["settings"]
    caption_fn: CaptionFn | None = _STATE["caption_fn"]
    scheme = settings.specs[dataset_index].split(":", 1)[0]
    plain_loader = dataset.loader in (load_record_image, load_hc18_record)
    encoded = []
    try:
        for sub, sample in enumerate(dataset.iter_record_samples(record_index, settings.frames)):
            stored = _stored_image(sample["image"])
            if settings.clean:
                sample = clean_sample({**sample, "image": stored})
                stored = sample["image"]
            sample = {**sample, "image": stored}
            data = None
            if plain_loader and not settings.clean and sample["frame_index"] is None and str(sample["source"]).lower().endswith(".png"):
                # Only when the file's own header says it holds exactly these pixels (8-bit, same size and
                # channels; an RGB file collapsed to grey does not qualify).
                data = stripped_png(sample["source"], stored.shape[0], stored.shape[1], 1 if stored.ndim == 2 else 3)
            if data is None:
                data = png_bytes(stored)
            rng = np.random.default_rng([settings.seed, position, sub])
            item = {
                "__key__": f"{position:08d}-{sub:04d}",
                "png": data,
                "txt": caption_sample(sample, rng, caption_fn).encode("utf-8"),
                "json": json.dumps(sample_fields(sample, scheme), sort_keys=True).encode("utf-8"),
            }
            mask = sample.get("mask")
            if settings.masks and mask is not None:
                item["mask.png"] = png_bytes(np.ascontiguousarray(mask.astype(np.uint8)))
            _check_member_sizes(item, sample["source"])
            encoded.append(item)
    except ImageReadError as exc:
        return position, None, (exc.path, exc.reason)
    return position, encoded, None


def _check_member_sizes(item: dict[str, Any], source: str) -> None:
    """Never write a shard that its own readers would refuse."""
    for extension, member in item.items():
        if extension != "__key__" and len(member) > rules.member_limit(extension):
            raise ImageReadError(source, f"its .{extension} would be {len(member)} bytes, "
                                         f"over the {rules.mib(rules.member_limit(extension))} a shard member may have")
