"""WebDataset shards for pretraining: pack datasets into tar shards, check them, read them back.

Format (the training side reads exactly this; change it only together with that reader):

* ``DIR/shard-000000.tar``, ``shard-000001.tar``, ... written with ``webdataset.TarWriter``. Per sample,
  under one key: ``{key}.png`` (the image as stored: 8-bit grey or RGB, after cleaning when on),
  ``{key}.txt`` (the caption), ``{key}.json`` (every sample field except image and mask: source, dataset,
  label, brain_plane, view, patient, split, frame_index, pixel_spacing_mm, pixel_spacing_224_mm, ga_days,
  hc_mm, caption_ga_days/caption_ga_source, width, height, cleaning stats or null, metadata) and, when the
  sample has one, ``{key}.mask.png`` (uint8 label map).
* ``DIR/manifest.json``: the settings (specs, seed, shard size, cleaning, frames, captions), one entry per
  shard (name, samples, bytes, sha256, input range), totals, and every skipped input with its reason.

Design choices. Inputs are shuffled once by the seed, so shards mix datasets and patients, and the same
settings always produce the same shards (tar times are fixed, captions are seeded per sample): a re-run
resumes after the last shard the manifest lists and rewrites nothing already there. Each shard is written
under a temporary name and renamed, then the manifest is rewritten, so a crash loses at most the shard in
progress. Shards close at input boundaries (a cine loop is never split across shards), so a shard can hold
a few more than ``shard_size`` samples. Decoding, cleaning and PNG encoding run in worker processes, results
are written in input order. Images that need no change are not re-encoded: an 8-bit grey or RGB PNG read
as is goes into the shard as its own compressed pixel data with every ancillary chunk (text, time, colour
profile) dropped, which is both faster and keeps no stray metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import struct
import tarfile
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import FetalCLIPError, ImageReadError
from ..io import atomic_path, json_default
from .captions import CaptionFn, caption_ga_days, caption_sample
from .frames import FrameSelection
from .readers import as_uint8

MANIFEST = "manifest.json"
FORMAT = "fetalclip-shards"
FORMAT_VERSION = 1
SHARD_NAME = "shard-{:06d}.tar"
# Fixed tar member time: identical inputs give byte-identical shards (and checksums).
_TAR_MTIME = 0
# zlib level for images that must be re-encoded: 1 is ~3x faster than PIL's default 6 for ~10% more bytes.
PNG_COMPRESS_LEVEL = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = {b"IHDR", b"IDAT", b"IEND"}
_JSON_EXCLUDE = ("image", "mask", "caption")


# -- encoding one sample ----------------------------------------------------------------------------------------
def png_bytes(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def stripped_png(path: str | os.PathLike, height: int, width: int, channels: int) -> bytes | None:
    """The file's PNG with only IHDR/IDAT/IEND, if it is an 8-bit grey/RGB PNG of that size; else ``None``."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(_PNG_SIGNATURE):
        return None
    chunks, offset = [], len(_PNG_SIGNATURE)
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
    return _PNG_SIGNATURE + b"".join(chunks)


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
    """The JSON record of a packed sample (see the module docstring)."""
    fields = {key: value for key, value in sample.items() if key not in _JSON_EXCLUDE}
    fields.setdefault("dataset", sample.get("metadata", {}).get("dataset") or dataset)
    ga, ga_source = caption_ga_days(sample)
    fields["caption_ga_days"] = None if ga is None else round(ga, 3)
    fields["caption_ga_source"] = ga_source
    fields["height"], fields["width"] = int(sample["image"].shape[0]), int(sample["image"].shape[1])
    fields["cleaning"] = sample.get("metadata", {}).get("cleaning")
    return _json_safe(fields)


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


def _encode_input(task: tuple[int, int, int]) -> tuple[int, list[dict[str, Any]] | None, tuple[str, str] | None]:
    """(position, encoded samples, None) or (position, None, (source, reason)) for one input."""
    from .cleaning import clean_sample
    from .datasets import load_hc18_record, load_record_image

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
            encoded.append(item)
    except ImageReadError as exc:
        return position, None, (exc.path, exc.reason)
    return position, encoded, None


def _ordered(tasks: Sequence[tuple[int, int, int]], workers: int) -> Iterator[tuple]:
    """Results of ``_encode_input`` in task order, at most a small window of tasks ahead."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        # Workers inherit datasets and caption functions by forking; without fork, work in this process.
        for task in tasks:
            yield _encode_input(task)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque = deque()
        iterator = iter(tasks)
        for task in islice(iterator, workers * 8):
            pending.append(pool.submit(_encode_input, task))
        while pending:
            result = pending.popleft().result()
            for task in islice(iterator, 1):
                pending.append(pool.submit(_encode_input, task))
            yield result


# -- the shard set ----------------------------------------------------------------------------------------------
@dataclass
class PackResult:
    out: Path
    shards: int
    samples: int
    inputs: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_shard: int = 0
    written_shards: int = 0


def _input_order(datasets: Sequence[Any], seed: int) -> tuple[list[tuple[int, int, int]], str]:
    pairs = [(d, r) for d, dataset in enumerate(datasets) for r in range(len(dataset))]
    permutation = np.random.default_rng(seed).permutation(len(pairs)) if pairs else []
    ordered = [pairs[i] for i in permutation]
    digest = hashlib.sha256()
    for d, r in ordered:
        record = datasets[d].records[r]
        digest.update(f"{d}\t{record['source']}\t{record.get('frame_index')}\n".encode())
    return [(position, d, r) for position, (d, r) in enumerate(ordered)], digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_shard(path: Path, items: list[dict[str, Any]]) -> tuple[int, str]:
    from webdataset import TarWriter

    with atomic_path(path) as tmp:
        with TarWriter(str(tmp), encoder=False, mtime=_TAR_MTIME, user="fetalclip", group="fetalclip") as writer:
            for item in items:
                writer.write(item)
        size, digest = tmp.stat().st_size, _sha256(tmp)
        tmp.chmod(0o644)  # temp files are private; shards are data others (training jobs) read
    return size, digest


def _write_readable_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.chmod(0o644)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FetalCLIPError(f"{path}: no manifest (not a shard folder, or packing never finished a shard)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FetalCLIPError(f"{path}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise FetalCLIPError(f"{path}: not a {FORMAT} manifest")
    return manifest


def pack_shards(
    specs: Sequence[str],
    out: str | os.PathLike,
    shard_size: int = 1000,
    clean: bool = True,
    frames: "FrameSelection | str | None" = None,
    seed: int = 0,
    skip_bad: bool = False,
    masks: bool = True,
    caption_fn: CaptionFn | None = None,
    caption_name: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> PackResult:
    """Pack the datasets named by ``specs`` into ``out`` (see the module docstring); resumes a partial run.

    ``caption_fn``: a ``CaptionFn`` (default: template captions); ``caption_name`` names it in the manifest
    (a resumed run must use the same). ``workers``: processes for decoding/cleaning/encoding (default: the
    machine's cores; 0 or 1 runs in this process).
    """
    from ..progress import progress_bar

    from .datasets import open_dataset

    if shard_size < 1:
        raise FetalCLIPError(f"shard size must be >= 1 (got {shard_size})")
    if not specs:
        raise FetalCLIPError("no dataset to pack: give at least one --dataset SPEC")
    if caption_fn is not None and caption_name is None:
        caption_name = f"{getattr(caption_fn, '__module__', '?')}:{getattr(caption_fn, '__qualname__', repr(caption_fn))}"
    settings = PackSettings(list(specs), int(seed), int(shard_size), bool(clean), str(FrameSelection.parse(frames)),
                            bool(masks), caption_name or "template")
    out = Path(out)
    datasets = [open_dataset(spec) for spec in specs]
    tasks, order_digest = _input_order(datasets, settings.seed)

    shards: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        previous = read_manifest(out)
        if previous.get("settings") != settings.as_dict() or previous.get("input_digest") != order_digest:
            raise FetalCLIPError(
                f"{out} holds shards packed with other settings or inputs ({previous.get('settings')}); "
                "pack into a new folder or delete this one"
            )
        # Keep listed shards that are still there, up to the first one that is not.
        for entry in previous.get("shards", []):
            path = out / entry["name"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                break
            shards.append(entry)
        done = shards[-1]["inputs"][1] if shards else 0
        skipped = [s for s in previous.get("skipped", []) if s["input"] < done]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.tmp"):  # temp files of a run that was killed mid-shard
        stale.unlink()
    resumed_from = len(shards)
    start = shards[-1]["inputs"][1] if shards else 0

    def write_manifest(complete: bool) -> None:
        _write_readable_json(manifest_path, {
            "format": FORMAT, "version": FORMAT_VERSION, "settings": settings.as_dict(), "input_digest": order_digest,
            "complete": complete, "shards": shards, "skipped": skipped,
            "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards), "inputs": len(tasks),
                       "inputs_done": shards[-1]["inputs"][1] if shards else 0, "skipped": len(skipped)},
        })

    _STATE.update(datasets=datasets, settings=settings, caption_fn=caption_fn)
    if workers is None:
        workers = os.cpu_count() or 1
    pending: list[dict[str, Any]] = []
    shard_start = start
    written = 0
    try:
        with progress_bar(total=len(tasks), initial=start, unit="img", desc="pack", disable=not progress) as bar:
            for position, items, bad in _ordered(tasks[start:], workers):
                if bad is not None:
                    if not skip_bad:
                        raise ImageReadError(bad[0], f"{bad[1]} (use --skip-bad to skip unreadable inputs)")
                    skipped.append({"input": position, "source": bad[0], "reason": bad[1]})
                else:
                    pending.extend(items)
                bar.update(1)
                if len(pending) >= shard_size:
                    name = SHARD_NAME.format(len(shards))
                    size, digest = _write_shard(out / name, pending)
                    shards.append({"name": name, "samples": len(pending), "bytes": size, "sha256": digest,
                                   "inputs": [shard_start, position + 1]})
                    written += 1
                    write_manifest(False)
                    pending, shard_start = [], position + 1
            if pending:
                name = SHARD_NAME.format(len(shards))
                size, digest = _write_shard(out / name, pending)
                shards.append({"name": name, "samples": len(pending), "bytes": size, "sha256": digest,
                               "inputs": [shard_start, len(tasks)]})
                written += 1
            elif shards and shards[-1]["inputs"][1] < len(tasks):
                # Trailing inputs were all skipped: the last shard's range covers them so resuming ends here.
                shards[-1]["inputs"][1] = len(tasks)
    finally:
        _STATE.clear()
    write_manifest(True)
    return PackResult(out, len(shards), sum(s["samples"] for s in shards), len(tasks), skipped, resumed_from, written)


# -- reading back and checking ----------------------------------------------------------------------------------
def shard_urls(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard paths from a packed folder (its manifest order), a single tar, or a list of paths/URLs."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    path = Path(source)
    if path.is_dir():
        return [str(path / entry["name"]) for entry in read_manifest(path)["shards"]]
    return [str(source)]


def decode_packed(raw: dict[str, Any]) -> dict[str, Any]:
    """One WebDataset sample (bytes per extension) -> the packed sample dict."""
    def image(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            return np.asarray(decoded)

    sample = json.loads(raw["json"])
    sample["key"] = raw["__key__"]
    sample["image"] = image(raw["png"])
    sample["caption"] = raw["txt"].decode("utf-8") if isinstance(raw["txt"], bytes) else raw["txt"]
    if raw.get("mask.png") is not None:
        sample["mask"] = image(raw["mask.png"])
    return sample


def iter_shard_samples(source: str | os.PathLike | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every packed sample, in shard order: the JSON fields plus ``key``, ``image``, ``caption`` and
    ``mask`` (when packed). ``source``: a shard folder, a tar file, or a list of shard paths/URLs."""
    import webdataset as wds

    dataset = wds.WebDataset(shard_urls(source), shardshuffle=False, empty_check=False)
    for raw in dataset:
        yield decode_packed(raw)


@dataclass
class CheckResult:
    folder: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shards(folder: str | os.PathLike, decode: bool = True, progress: bool = False) -> CheckResult:
    """Verify a shard folder against its manifest: files, sizes, checksums, sample counts, that every sample
    has png/txt/json, and (``decode``) that images, masks and JSON decode."""
    from ..progress import progress_bar

    folder = Path(folder)
    manifest = read_manifest(folder)
    result = CheckResult(folder)
    if not manifest.get("complete"):
        result.problems.append("manifest says packing did not finish (run pack again to resume)")
    listed = {entry["name"] for entry in manifest.get("shards", [])}
    for extra in sorted(p.name for p in folder.glob("shard-*.tar")):
        if extra not in listed:
            result.problems.append(f"{extra}: shard file not listed in the manifest")
    for entry in progress_bar(manifest.get("shards", []), unit="shard", desc="check", disable=not progress):
        path = folder / entry["name"]
        if not path.is_file():
            result.problems.append(f"{entry['name']}: missing")
            continue
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            result.problems.append(f"{entry['name']}: checksum mismatch (file changed or truncated)")
            continue
        result.shards += 1
        count = 0
        try:
            for key, members in _tar_groups(path):
                count += 1
                missing = {"png", "txt", "json"} - set(members)
                if missing:
                    result.problems.append(f"{entry['name']}: sample {key} lacks {', '.join(sorted(missing))}")
                    continue
                if decode:
                    try:
                        sample = decode_packed({"__key__": key, **members})
                    except (OSError, ValueError, SyntaxError) as exc:
                        result.problems.append(f"{entry['name']}: sample {key} does not decode ({exc})")
                        continue
                    if sample["image"].shape[:2] != (sample["height"], sample["width"]):
                        result.problems.append(f"{entry['name']}: sample {key} image size differs from its JSON")
                    if "mask" in sample and sample["mask"].shape != sample["image"].shape[:2]:
                        result.problems.append(f"{entry['name']}: sample {key} mask size differs from its image")
        except (tarfile.TarError, OSError, zlib.error) as exc:
            result.problems.append(f"{entry['name']}: unreadable tar ({exc})")
            continue
        if count != entry["samples"]:
            result.problems.append(f"{entry['name']}: {count} samples, manifest says {entry['samples']}")
        result.samples += count
    totals = manifest.get("totals", {})
    if not result.problems and totals.get("samples") != result.samples:
        result.problems.append(f"totals say {totals.get('samples')} samples, shards hold {result.samples}")
    return result


def _tar_groups(path: Path) -> Iterable[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, grouping consecutive members by key as WebDataset does."""
    key, members = None, {}
    with tarfile.open(path) as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            stem, _, extension = name.partition(".")
            if stem != key and key is not None:
                yield key, members
                members = {}
            key = stem
            members[extension] = tar.extractfile(info).read()
    if key is not None:
        yield key, members
