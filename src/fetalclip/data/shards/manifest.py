"""The one reader of a shard folder's ``manifest.json``, and which shards a folder holds.

The packer (to resume), the checker, the streaming reader and the indexed dataset all learn a folder's shards
here, so they cannot disagree about a manifest. Two kinds are read:

* the packer's own (``"format": "fetalclip-shards"``): every shard entry has ``name``, ``samples``, ``bytes``,
  ``sha256`` and ``inputs`` (the range of packing inputs it holds), and the manifest has ``settings``,
  ``complete``, ``totals`` and ``skipped``. Resuming and checking need all of it and accept only this kind.
* any other writer's: an object with a ``shards`` list whose entries are a file name, or an object naming the
  file (``name``, ``path``, ``file`` or ``url``) and maybe its sample count (``samples``, ``count`` or
  ``num_samples``). Readers accept it, so shards made elsewhere with webdataset can be trained on.

A folder without a manifest is read as its ``shard-*.tar`` files in name order. A shard named in a manifest
is always the file of that base name inside the folder, never a path outside it. A manifest that cannot be
read, is not JSON or is not shaped as above is one ``ShardError`` naming ``manifest.json``; an entry that is
unusable is kept with its ``problem``, so the checker can list it and go on, and every other reader stops at it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .rules import ShardError, read_manifest_json

MANIFEST = "manifest.json"
FORMAT = "fetalclip-shards"
FORMAT_VERSION = 1
SHARD_NAME = "shard-{:06d}.tar"
SHARD_GLOB = "shard-*.tar"

_NAME_KEYS = ("name", "path", "file", "url")
_COUNT_KEYS = ("samples", "count", "num_samples")


@dataclass(frozen=True)
class ShardEntry:
    """One shard a manifest lists (or a manifest-less folder holds); ``problem`` says why it is unusable."""

    path: Path | None
    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    raw: Any = None  # the manifest's own entry, which a resumed packer writes back as it was
    problem: str | None = None


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: dict[str, Any]
    entries: tuple[ShardEntry, ...]

    def shards(self) -> list[ShardEntry]:
        """Every entry, or ``ShardError`` naming the manifest at the first unusable one."""
        for entry in self.entries:
            if entry.problem is not None:
                raise ShardError(self.path, entry.problem)
        return list(self.entries)


def shard_file(folder: str | os.PathLike, name: Any) -> Path:
    """The file a manifest entry names: its base name inside ``folder``, never a path outside it."""
    base = PurePosixPath(str(name).replace("\\", "/")).name if isinstance(name, str) else ""
    if base in ("", ".", ".."):
        raise ShardError(Path(folder) / MANIFEST, f"shard entry with no usable file name: {name!r}")
    return Path(folder) / base


def load_manifest(folder: str | os.PathLike, packed: bool = True) -> Manifest:
    """``folder``'s manifest; ``packed``: only the packer's own kind (see the module docstring)."""
    path = Path(folder) / MANIFEST
    if not os.path.lexists(path):
        raise ShardError(path, "missing (not a shard folder, or packing never finished a shard)")
    data = read_manifest_json(path)
    if not isinstance(data, dict) or (packed and data.get("format") != FORMAT):
        raise ShardError(path, f"not a {FORMAT} manifest" if packed else "not a JSON object with a 'shards' list")
    strict = data.get("format") == FORMAT
    entries = data.get("shards", [] if strict else None)
    if not isinstance(entries, list):
        raise ShardError(path, "'shards' is not a list")
    return Manifest(path, data, tuple(_entry(Path(folder), raw, strict) for raw in entries))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The packer's manifest of ``folder`` as parsed JSON."""
    return load_manifest(folder).data


def folder_shards(folder: str | os.PathLike) -> list[ShardEntry]:
    """The shards of ``folder`` in reading order: its manifest's (any writer's), or without a manifest its
    ``shard-*.tar`` files by name. ``ShardError`` naming the manifest when an entry is unusable."""
    folder = Path(folder)
    if os.path.lexists(folder / MANIFEST):
        return load_manifest(folder, packed=False).shards()
    return [ShardEntry(path) for path in sorted(folder.glob(SHARD_GLOB))]


def sha256_of(handle: BinaryIO) -> str:
    """The checksum a manifest entry records for its shard (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def is_shard_folder(path: str | os.PathLike) -> bool:
    # lexists: a manifest.json that is a link or a device still makes this a shard folder, whose reader then
    # refuses it by name, rather than a folder silently read without its manifest.
    path = Path(path)
    return path.is_dir() and (os.path.lexists(path / MANIFEST) or any(path.glob(SHARD_GLOB)))


def _entry(folder: Path, raw: Any, strict: bool) -> ShardEntry:
    """One manifest entry; ``strict`` (the packer's kind): every field the checker and the packer rely on."""
    if isinstance(raw, str):
        raw = {"name": raw}
    elif not isinstance(raw, dict):
        return ShardEntry(None, raw=raw, problem=f"shard entry {raw!r} is not an object")
    name = next((raw[key] for key in _NAME_KEYS if raw.get(key)), None)
    samples = next((raw[key] for key in _COUNT_KEYS if raw.get(key) is not None), None)
    try:
        path = shard_file(folder, name)
    except ShardError as exc:
        return ShardEntry(None, raw=raw, problem=exc.reason)
    problem = None
    if samples is not None and not _whole(samples):
        problem = f"shard entry {name!r} has a sample count that is not a whole number: {samples!r}"
    for field, kind in (("samples", int), ("bytes", int), ("sha256", str)) if strict else ():
        if not isinstance(raw.get(field), kind) or isinstance(raw.get(field), bool):
            problem = problem or f"shard entry {name!r}: '{field}' missing or not a {kind.__name__}"
    inputs = raw.get("inputs")
    if strict and not (isinstance(inputs, list) and len(inputs) == 2 and all(_whole(n) for n in inputs)):
        problem = problem or f"shard entry {name!r}: 'inputs' missing or not two whole numbers"
    return ShardEntry(path, samples, raw.get("bytes"), raw.get("sha256"), raw, problem)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
