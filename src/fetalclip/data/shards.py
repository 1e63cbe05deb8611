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

Reading is held to one set of rules, shared with the training reader (``fetalclip.train.shards``) and set out
in the section "the rules every shard reader follows" below: a shard folder may come from anywhere, so
nothing in it is trusted to be small, plain or inside the folder until checked, and nothing is read without
a bound. Packing writes nothing those rules would refuse.

Design choices. Inputs are shuffled once by the seed, so shards mix datasets and patients, and the same
settings always produce the same shards (tar times are fixed, captions are seeded per sample): a re-run
resumes after the last shard the manifest lists and rewrites nothing already there. Each shard is written
under a temporary name and renamed, then the manifest is rewritten, so a crash loses at most the shard in
progress. Shards close at input boundaries (a cine loop is never split across shards), so a shard can hold
a few more than ``shard_size`` samples. Decoding, cleaning and PNG encoding run in worker processes, results
are written in input order; the workers end with the run, however it ends (an error, Ctrl-C, SIGTERM, or the
parent killed outright). Images that need no change are not re-encoded: an 8-bit grey or RGB PNG read
as is goes into the shard as its own compressed pixel data with every ancillary chunk (text, time, colour
profile) dropped, which is both faster and keeps no stray metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import stat
import struct
import sys
import tarfile
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import FetalCLIPError, ImageReadError
from ..io import atomic_path, json_default
from .captions import CaptionFn, caption_ga_days, caption_sample
from .frames import FrameSelection
from .readers import as_uint8, open_image_bytes

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


# -- the rules every shard reader follows -----------------------------------------------------------------------
# The checker (``check_shards``), ``iter_shard_samples`` and the training reader (``fetalclip.train.shards``) all
# read shard folders through the functions below, so a file one of them accepts the others accept too, and
# none of them can be made to read without bound: a shard folder may come from anywhere, so its files are
# treated as hostile until these rules have been checked.
#
# * Only regular files are opened, each with ``O_NOFOLLOW`` and checked again on the open descriptor: a
#   symbolic link (even one that points inside the folder), a device or a FIFO is refused before a byte of it
#   is read, and a shard named in a manifest is always the file of that base name inside the folder.
# * ``manifest.json`` is read only up to ``MAX_MANIFEST_BYTES``.
# * A shard is plain (uncompressed) tar, opened without compression auto-detection, and no single read from
#   it may exceed the largest member bound: a gzip file renamed ``.tar`` is refused, never inflated.
# * Every member is a regular file with a relative name and no ``..`` (no links, devices, directories,
#   sparse files), no larger than its bound (``MAX_IMAGE_MEMBER_BYTES`` for images, ``MAX_TEXT_MEMBER_BYTES``
#   for the rest), and a sample key appears in one run of consecutive members only.
# * An image member is a PNG, held to the readers' one pixel budget (checked from its header before any pixel
#   is decoded); whatever goes wrong while decoding it becomes ``ImageReadError`` naming shard and member.
MAX_MANIFEST_BYTES = 128 << 20  # a shard entry is ~200 bytes: room for half a million shards and skip entries
MAX_IMAGE_MEMBER_BYTES = 256 << 20  # far above any ultrasound PNG (a 4000x3000 RGB scan is ~36 MB raw)
MAX_TEXT_MEMBER_BYTES = 16 << 20  # captions and metadata JSON are a few kB
_IMAGE_EXTENSIONS = ("png", "mask.png")
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
                      (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"))
_PLAIN_MEMBER_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class ShardError(FetalCLIPError):
    """A shard folder's file that breaks the rules above: keeps the file (and member) and the reason apart,
    like ``ImageReadError``, so the checker can list it under the shard's name."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading if it is a regular file and not a symbolic link; else ``ShardError``."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise ShardError(path, "missing") from None
    except OSError as exc:
        raise ShardError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(mode):
        raise ShardError(path, "is a symbolic link; shard folders hold regular files only")
    if not stat.S_ISREG(mode):
        raise ShardError(path, "not a regular file")
    # O_NONBLOCK: should the file be swapped for a FIFO after lstat, opening it must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise ShardError(path, f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ShardError(path, "not a regular file")
    return os.fdopen(descriptor, "rb")


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (``ShardError`` if it is larger)."""
    with open_regular_file(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise ShardError(path, f"larger than the {_mib(limit)} a shard folder's {Path(path).name} may have")
    return data


def read_manifest_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a manifest (any writer's), read within ``MAX_MANIFEST_BYTES``."""
    data = read_bounded(path, MAX_MANIFEST_BYTES)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ShardError(path, f"not valid JSON ({_first_line(exc)})") from None


def shard_file(folder: str | os.PathLike, name: Any) -> Path:
    """The file a manifest entry names: its base name inside ``folder``, never a path outside it."""
    base = PurePosixPath(str(name).replace("\\", "/")).name if isinstance(name, str) else ""
    if base in ("", ".", ".."):
        raise ShardError(Path(folder) / MANIFEST, f"shard entry with no usable file name: {name!r}")
    return Path(folder) / base


class _BoundedReads:
    """A shard file as tarfile sees it: any single read larger than ``limit`` (or of "everything") is refused,
    so no header, extended header or member can make the reader allocate more than that."""

    def __init__(self, handle: BinaryIO, path: Path, limit: int):
        self.handle, self.path, self.limit = handle, path, limit
        self.name = str(path)
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            raise ShardError(self.path, f"a tar header or member of more than {_mib(self.limit)}")
        return self.handle.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


@contextmanager
def open_shard_tar(path: str | os.PathLike) -> Iterator[tarfile.TarFile]:
    """A shard opened as plain tar under the rules above (``ShardError`` naming the file otherwise)."""
    path = Path(path)
    with open_regular_file(path) as handle:
        start = handle.read(8)
        for magic, kind in _COMPRESSION_MAGIC:
            if start.startswith(magic):
                raise ShardError(path, f"{kind}-compressed; shards are plain tar and are never decompressed")
        handle.seek(0)
        # Block rounding of the largest member is all a plain tar read needs beyond the member itself.
        limit = max(MAX_IMAGE_MEMBER_BYTES, MAX_TEXT_MEMBER_BYTES) + tarfile.BLOCKSIZE
        try:
            tar = tarfile.open(fileobj=_BoundedReads(handle, path, limit), mode="r:")
        except tarfile.TarError as exc:
            raise ShardError(path, f"not a readable tar file ({_first_line(exc)})") from None
        with tar:
            yield tar


def member_limit(extension: str) -> int:
    return MAX_IMAGE_MEMBER_BYTES if extension in _IMAGE_EXTENSIONS or extension.endswith(".png") else MAX_TEXT_MEMBER_BYTES


# webdataset's grouping rule: the extension is what follows the first dot of the file name (no "/" in it), the
# key all before that dot, which must end in a run of non-dots that starts the name or follows a "/".
_MEMBER_NAME = re.compile(r"^((?:.*/)?[^.]+)\.([^/]*)$")


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) by webdataset's rule, so samples group as its writer meant; ``None`` for a name it
    would pass over. (Its own function is not imported: importing webdataset imports torch, a second of
    start-up and gigabytes of address space for a check that needs neither; a test holds the rules equal.)"""
    match = _MEMBER_NAME.match(name)
    return None if match is None else (match.group(1), match.group(2))


def _checked_member(info: tarfile.TarInfo, path: Path) -> tuple[str, str] | None:
    where = f"member {info.name!r}"
    if info.type not in _PLAIN_MEMBER_TYPES or info.sparse is not None:
        raise ShardError(path, f"{where} is not a regular file (links, devices and folders are refused)")
    parts = info.name.split("/")
    if info.name.startswith("/") or ".." in parts or "\\" in info.name or "\x00" in info.name:
        raise ShardError(path, f"{where} has an absolute path or one with '..'")
    split = split_member_name(info.name)
    if split is not None and info.size > member_limit(split[1]):
        raise ShardError(path, f"{where} is {info.size} bytes, over the {_mib(member_limit(split[1]))} bound")
    return split


def shard_samples(tar: tarfile.TarFile, path: str | os.PathLike) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) per sample in tar order, every member checked against the rules above.

    Members group by key while consecutive, as webdataset reads them; a key that comes back later is an error
    (two readers would disagree about that sample). Names without an extension are not sample members and
    are passed over, as webdataset does.
    """
    path = Path(path)
    key, members, seen = None, {}, set()
    try:
        for info in tar:
            split = _checked_member(info, path)
            if split is None:
                continue
            if split[0] != key:
                if key is not None:
                    yield key, members
                key, members = split[0], {}
                if key in seen:
                    raise ShardError(path, f"sample {key!r} appears twice (its members are not consecutive)")
                seen.add(key)
            members[split[1]] = info
    except tarfile.TarError as exc:
        raise ShardError(path, f"not a readable tar file ({_first_line(exc)})") from None
    if key is not None:
        yield key, members


def read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str | os.PathLike) -> bytes:
    """A member's bytes (its size was bounded by ``shard_samples``)."""
    try:
        data = tar.extractfile(info).read(info.size)
    except tarfile.TarError as exc:
        raise ShardError(path, f"member {info.name!r} cannot be read ({_first_line(exc)})") from None
    if len(data) != info.size:
        raise ShardError(path, f"member {info.name!r} is cut short")
    return data


def decode_image_member(data: bytes, where: str) -> Image.Image:
    """A decoded PNG member, through the readers' pixel budget and error boundary (``open_image_bytes``):
    a bomb, a lying header or any decoder failure is ``ImageReadError(where, ...)``."""
    if not data.startswith(_PNG_SIGNATURE):  # one format only: members never reach any other decoder
        raise ImageReadError(where, "not a PNG image")
    return open_image_bytes(data, where)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- encoding one sample ----------------------------------------------------------------------------------------
def png_bytes(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def stripped_png(path: str | os.PathLike, height: int, width: int, channels: int) -> bytes | None:
    """The file's PNG with only IHDR/IDAT/IEND, if it is an 8-bit grey/RGB PNG of that size; else ``None``."""
    try:
        if os.stat(path).st_size > MAX_IMAGE_MEMBER_BYTES:  # mostly not pixels, and over a member's bound
            return None
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
            for extension, member in item.items():
                # Never write a shard that its own readers would refuse.
                if extension != "__key__" and len(member) > member_limit(extension):
                    raise ImageReadError(sample["source"], f"its .{extension} would be {len(member)} bytes, "
                                                           f"over the {_mib(member_limit(extension))} a shard member may have")
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
    with _stop_requests() as stop:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start,
                                   initargs=(os.getpid(),))
        yield from _pool_results(pool, tasks, workers, stop)
    _raise_if_stopped(stop)  # a signal that came during the pool's final shutdown


def _pool_results(pool: ProcessPoolExecutor, tasks: Sequence[tuple[int, int, int]], workers: int,
                  stop: dict[str, int | None]) -> Iterator[tuple]:
    try:
        pending: deque = deque()
        iterator = iter(tasks)
        for task in islice(iterator, workers * 8):
            pending.append(pool.submit(_encode_input, task))
        while pending:
            result = _result(pending.popleft(), stop)
            for task in islice(iterator, 1):
                pending.append(pool.submit(_encode_input, task))
            yield result
    except BaseException:
        # An error, Ctrl-C, SIGTERM, or the consumer stopping early: the queued work is of no use, so stop the
        # workers now instead of letting shutdown wait for every queued input.
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Any, stop: dict[str, int | None]) -> Any:
    while True:
        _raise_if_stopped(stop)
        try:
            return future.result(timeout=_STOP_POLL_SECONDS)
        except TimeoutError:
            continue


# How a pool ends. Ctrl-C and SIGTERM are noted by a handler and acted on by the loop above (within
# ``_STOP_POLL_SECONDS``), never raised from the handler itself: Python runs a handler wherever the main thread
# happens to be, and an exception raised inside a fork hook or a finaliser is printed and dropped, so a
# raising handler sometimes lets the run carry on as if nothing was asked. A worker ignores Ctrl-C (it reaches
# the whole process group; the parent decides) and keeps SIGTERM's default, so terminating it works.
#
# A parent killed outright (SIGKILL, the OOM killer) cannot clean up, and a forked worker holds copies of the
# pool's pipes, so it never sees them close: left alone it would wait for work forever. So each worker asks
# the kernel to kill it when its parent dies (Linux prctl PR_SET_PDEATHSIG) or, where that is not available,
# watches its parent's id from a thread.
_STOP_POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


@contextmanager
def _stop_requests() -> Iterator[dict[str, int | None]]:
    """While a pool runs, note SIGINT and SIGTERM in the yielded dict (``"signal"``) instead of acting at once.

    Only signals whose handler is still Python's default are taken over (an application's own handler is left
    alone), only from the main thread (the one place handlers can be set), and the defaults come back after.
    """
    stop: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def note(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    replaced = [signum for signum, default in defaults.items() if signal.getsignal(signum) is default]
    for signum in replaced:
        signal.signal(signum, note)
    try:
        yield stop
    finally:
        for signum in replaced:
            signal.signal(signum, defaults[signum])


def _raise_if_stopped(stop: dict[str, int | None]) -> None:
    signum = stop["signal"]
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise SystemExit(128 + signum)  # the shell's status for "ended by this signal"


def _worker_start(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _kill_me_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before either guard was in place
        os._exit(1)


def _kill_me_with_parent() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # public from Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


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
    with open(path, "rb") as handle:
        return _sha256_of(handle)


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
    if not os.path.lexists(path):
        raise FetalCLIPError(f"{path}: no manifest (not a shard folder, or packing never finished a shard)")
    manifest = read_manifest_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(path, f"not a {FORMAT} manifest")
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
        for entry in _manifest_entries(previous, out):
            if _entry_problem(entry) is not None:
                break
            path = shard_file(out, entry["name"])
            if not path.is_file() or path.is_symlink() or path.stat().st_size != entry["bytes"]:
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
        return [str(shard_file(path, entry.get("name") if isinstance(entry, dict) else None))
                for entry in _manifest_entries(read_manifest(path), path)]
    return [str(source)]


def decode_packed(raw: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """One WebDataset sample (bytes per extension) -> the packed sample dict.

    ``where`` (default: the key) names the sample in errors: an image that does not decode raises
    ``ImageReadError(where, ...)``, metadata that is not JSON a ``ShardError``.
    """
    where = where or str(raw.get("__key__"))
    missing = {"png", "txt", "json"} - set(raw)
    if missing:
        raise ShardError(where, f"sample lacks {', '.join(sorted(missing))}")

    def image(data: bytes, member: str) -> np.ndarray:
        return np.asarray(decode_image_member(data, f"{where}.{member}"))

    try:
        sample = json.loads(raw["json"])
    except (ValueError, RecursionError) as exc:
        raise ShardError(f"{where}.json", f"not valid JSON ({_first_line(exc)})") from None
    if not isinstance(sample, dict):
        raise ShardError(f"{where}.json", "not a JSON object")
    sample["key"] = raw["__key__"]
    sample["image"] = image(raw["png"], "png")
    try:
        sample["caption"] = raw["txt"].decode("utf-8") if isinstance(raw["txt"], bytes) else raw["txt"]
    except UnicodeDecodeError as exc:
        raise ShardError(f"{where}.txt", f"not UTF-8 text ({exc.reason})") from None
    if raw.get("mask.png") is not None:
        sample["mask"] = image(raw["mask.png"], "mask.png")
    return sample


def iter_shard_samples(source: str | os.PathLike | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every packed sample, in shard order: the JSON fields plus ``key``, ``image``, ``caption`` and
    ``mask`` (when packed). ``source``: a shard folder, a tar file, or a list of shard paths/URLs.

    Local shards are read under the shard rules (see ``open_shard_tar``); only remote URLs are streamed by
    webdataset, which does not follow them.
    """
    for url in shard_urls(source):
        if "://" in url or url.startswith("pipe:"):
            import webdataset as wds

            for raw in wds.WebDataset([url], shardshuffle=False, empty_check=False):
                yield decode_packed(raw, f"{url}:{raw['__key__']}")
            continue
        for key, members in _read_samples(Path(url)):
            yield decode_packed({"__key__": key, **members}, f"{url}:{key}")


def _read_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one local shard, under the shard rules."""
    with open_shard_tar(path) as tar:
        for key, members in shard_samples(tar, path):
            yield key, {extension: read_member(tar, info, path) for extension, info in members.items()}


@dataclass
class CheckResult:
    folder: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _manifest_entries(manifest: dict[str, Any], folder: Path) -> list[Any]:
    entries = manifest.get("shards", [])
    if not isinstance(entries, list):
        raise ShardError(folder / MANIFEST, "'shards' is not a list")
    return entries


def _entry_problem(entry: Any) -> str | None:
    """Why a manifest shard entry cannot be checked, or ``None`` when it has every field it needs."""
    if not isinstance(entry, dict):
        return f"shard entry {entry!r} is not an object"
    for name, kind in (("name", str), ("bytes", int), ("samples", int), ("sha256", str)):
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return f"shard entry {entry.get('name')!r}: '{name}' missing or not a {kind.__name__}"
    return None


def check_shards(folder: str | os.PathLike, decode: bool = True, progress: bool = False) -> CheckResult:
    """Verify a shard folder against its manifest: files, sizes, checksums, sample counts, that every sample
    has png/txt/json, and (``decode``) that images, masks and JSON decode.

    Every file is read under the shard rules (see ``open_shard_tar``); a shard that breaks one is a problem
    naming the shard (and member), and checking goes on with the next. A sample that does not decode is a
    problem too, and checking goes on with the next sample.
    """
    from ..progress import progress_bar

    folder = Path(folder)
    manifest = read_manifest(folder)
    result = CheckResult(folder)
    if not manifest.get("complete"):
        result.problems.append("manifest says packing did not finish (run pack again to resume)")
    entries = []
    for entry in _manifest_entries(manifest, folder):
        problem = _entry_problem(entry)
        if problem is None:
            entries.append((shard_file(folder, entry["name"]), entry))
        else:
            result.problems.append(f"{MANIFEST}: {problem}")
    listed = {path.name for path, _ in entries}
    for extra in sorted(p.name for p in folder.glob("shard-*.tar")):
        if extra not in listed:
            result.problems.append(f"{extra}: shard file not listed in the manifest")
    for path, entry in progress_bar(entries, unit="shard", desc="check", disable=not progress):
        try:
            count = _check_shard(path, entry, decode, result.problems)
        except ShardError as exc:
            result.problems.append(f"{path.name}: {exc.reason}")
            continue
        if count is None:
            continue
        result.shards += 1
        if count != entry["samples"]:
            result.problems.append(f"{path.name}: {count} samples, manifest says {entry['samples']}")
        result.samples += count
    totals = manifest.get("totals", {})
    if not result.problems and (not isinstance(totals, dict) or totals.get("samples") != result.samples):
        result.problems.append(f"totals say {totals.get('samples') if isinstance(totals, dict) else totals!r} samples, "
                               f"shards hold {result.samples}")
    return result


def _check_shard(path: Path, entry: dict[str, Any], decode: bool, problems: list[str]) -> int | None:
    """The number of samples in one shard (``None`` when its bytes are not the manifest's); sample problems
    go to ``problems``, a broken rule raises ``ShardError``."""
    with open_regular_file(path) as handle:
        if os.fstat(handle.fileno()).st_size != entry["bytes"] or _sha256_of(handle) != entry["sha256"]:
            problems.append(f"{path.name}: checksum mismatch (file changed or truncated)")
            return None
    count = 0
    for key, members in _read_samples(path):
        count += 1
        missing = {"png", "txt", "json"} - set(members)
        if missing:
            problems.append(f"{path.name}: sample {key} lacks {', '.join(sorted(missing))}")
            continue
        if not decode:
            continue
        try:
            sample = decode_packed({"__key__": key, **members}, f"{path.name}:{key}")
        except (ImageReadError, ShardError) as exc:
            problems.append(f"{exc.path}: does not decode ({exc.reason})")
            continue
        if sample["image"].shape[:2] != (sample.get("height"), sample.get("width")):
            problems.append(f"{path.name}: sample {key} image size differs from its JSON")
        if "mask" in sample and sample["mask"].shape != sample["image"].shape[:2]:
            problems.append(f"{path.name}: sample {key} mask size differs from its image")
    return count


def _sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
