"""The rules every shard reader follows, and the decoding of one member.

The checker, the streaming reader and the indexed dataset (``shards:DIR``) all read shard folders through the
functions below, so a file one of them accepts the others accept too, and none of them can be made to read
without bound: a shard folder may come from anywhere, so its files are treated as hostile until these rules
have been checked.

* Only regular files are opened, each with ``O_NOFOLLOW`` and checked again on the open descriptor: a symbolic
  link (even one that points inside the folder), a device or a FIFO is refused before a byte of it is read.
* ``manifest.json`` is read only up to ``MAX_MANIFEST_BYTES``.
* A shard is plain (uncompressed) tar, opened without compression auto-detection, and no single read from it
  may exceed the largest member bound: a gzip file renamed ``.tar`` is refused, never inflated.
* Every member is a regular file with a relative name and no ``..`` (no links, devices, directories, sparse
  files), no larger than its bound (``MAX_IMAGE_MEMBER_BYTES`` for images, ``MAX_TEXT_MEMBER_BYTES`` for the
  rest), and a sample key appears in one run of consecutive members only.
* An image member is a PNG, held to the readers' one pixel budget (checked from its header before any pixel is
  decoded); whatever goes wrong while decoding it becomes ``ImageReadError`` naming shard and member. Text and
  JSON members that do not decode are a ``ShardError`` naming shard and member the same way.

The bounds are read when a function runs (never copied at import), so a test can lower them on this module.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from PIL import Image

from ...errors import FetalCLIPError, ImageReadError
from ..readers import open_image_bytes

MAX_MANIFEST_BYTES = 128 << 20  # a shard entry is ~200 bytes: room for half a million shards and skip entries
MAX_IMAGE_MEMBER_BYTES = 256 << 20  # far above any ultrasound PNG (a 4000x3000 RGB scan is ~36 MB raw)
MAX_TEXT_MEMBER_BYTES = 16 << 20  # captions and metadata JSON are a few kB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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


# -- files of the folder ----------------------------------------------------------------------------------------
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
        raise ShardError(path, f"larger than the {mib(limit)} a shard folder's {Path(path).name} may have")
    return data


def read_manifest_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a manifest (any writer's), read within ``MAX_MANIFEST_BYTES``."""
    return parse_json(read_bounded(path, MAX_MANIFEST_BYTES), path)


class _BoundedReads:
    """A shard file as tarfile sees it: any single read larger than ``limit`` (or of "everything") is refused,
    so no header, extended header or member can make the reader allocate more than that."""

    def __init__(self, handle: BinaryIO, path: Path, limit: int):
        self.handle, self.path, self.limit = handle, path, limit
        self.name = str(path)
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            raise ShardError(self.path, f"a tar header or member of more than {mib(self.limit)}")
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
            raise ShardError(path, f"not a readable tar file ({first_line(exc)})") from None
        with tar:
            yield tar


# -- members ----------------------------------------------------------------------------------------------------
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
        raise ShardError(path, f"{where} is {info.size} bytes, over the {mib(member_limit(split[1]))} bound")
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
        raise ShardError(path, f"not a readable tar file ({first_line(exc)})") from None
    if key is not None:
        yield key, members


def read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str | os.PathLike) -> bytes:
    """A member's bytes (its size was bounded by ``shard_samples``)."""
    try:
        data = tar.extractfile(info).read(info.size)
    except tarfile.TarError as exc:
        raise ShardError(path, f"member {info.name!r} cannot be read ({first_line(exc)})") from None
    if len(data) != info.size:
        raise ShardError(path, f"member {info.name!r} is cut short")
    return data


def read_local_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one local shard, under the rules above."""
    with open_shard_tar(path) as tar:
        for key, members in shard_samples(tar, path):
            yield key, {extension: read_member(tar, info, path) for extension, info in members.items()}


# -- decoding a member ------------------------------------------------------------------------------------------
def decode_image_member(data: bytes, where: str) -> Image.Image:
    """A decoded PNG member, through the readers' pixel budget and error boundary (``open_image_bytes``):
    a bomb, a lying header or any decoder failure is ``ImageReadError(where, ...)``."""
    if not data.startswith(PNG_SIGNATURE):  # one format only: members never reach any other decoder
        raise ImageReadError(where, "not a PNG image")
    return open_image_bytes(data, where)


def decode_pixels(data: bytes, where: str) -> np.ndarray:
    """An image member's pixels as a writable uint8 grey or RGB array (other PNG modes are converted, as
    every reader's images are 8-bit grey or RGB)."""
    image = decode_image_member(data, where)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    return np.asarray(image).copy()


def parse_json(data: bytes, where: str | os.PathLike) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ShardError(where, f"not valid JSON ({first_line(exc)})") from None


def parse_json_object(data: bytes, where: str) -> dict[str, Any]:
    """A ``.json`` member's object (``ShardError(where, ...)`` for anything else)."""
    value = parse_json(data, where)
    if not isinstance(value, dict):
        raise ShardError(where, "not a JSON object")
    return value


def decode_text(data: bytes | str, where: str) -> str:
    """A ``.txt`` member as text (``ShardError(where, ...)`` unless UTF-8)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShardError(where, f"not UTF-8 text ({exc.reason})") from None


def mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
