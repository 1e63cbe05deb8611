"""Checking a shard folder against its manifest, listing every problem rather than stopping at the first.

Every file is read under the shard rules (``rules``); a shard that breaks one is a problem naming the shard
(and member), and checking goes on with the next. A sample that does not decode is a problem too, and
checking goes on with the next sample. Only a manifest that cannot be read at all stops the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ImageReadError
from .manifest import MANIFEST, SHARD_GLOB, ShardEntry, load_manifest, sha256_of
from .reader import decode_packed, missing_members
from .rules import ShardError, open_regular_file, read_local_samples


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
    from ...progress import progress_bar

    folder = Path(folder)
    manifest = load_manifest(folder)
    result = CheckResult(folder)
    if not manifest.data.get("complete"):
        result.problems.append("manifest says packing did not finish (run pack again to resume)")
    entries = []
    for entry in manifest.entries:
        if entry.problem is None:
            entries.append(entry)
        else:
            result.problems.append(f"{MANIFEST}: {entry.problem}")
    listed = {entry.path.name for entry in entries}
    for extra in sorted(p.name for p in folder.glob(SHARD_GLOB)):
        if extra not in listed:
            result.problems.append(f"{extra}: shard file not listed in the manifest")
    for entry in progress_bar(entries, unit="shard", desc="check", disable=not progress):
        try:
            count = _check_shard(entry, decode, result.problems)
        except ShardError as exc:
            result.problems.append(f"{entry.path.name}: {exc.reason}")
            continue
        if count is None:
            continue
        result.shards += 1
        if count != entry.samples:
            result.problems.append(f"{entry.path.name}: {count} samples, manifest says {entry.samples}")
        result.samples += count
    totals = manifest.data.get("totals", {})
    if not result.problems and (not isinstance(totals, dict) or totals.get("samples") != result.samples):
        result.problems.append(f"totals say {totals.get('samples') if isinstance(totals, dict) else totals!r} samples, "
                               f"shards hold {result.samples}")
    return result


def _check_shard(entry: ShardEntry, decode: bool, problems: list[str]) -> int | None:
    """The number of samples in one shard (``None`` when its bytes are not the manifest's); sample problems
    go to ``problems``, a broken rule raises ``ShardError``."""
    path = entry.path
    with open_regular_file(path) as handle:
        if os.fstat(handle.fileno()).st_size != entry.bytes or sha256_of(handle) != entry.sha256:
            problems.append(f"{path.name}: checksum mismatch (file changed or truncated)")
            return None
    count = 0
    for key, members in read_local_samples(path):
        count += 1
        missing = missing_members(members)
        if missing:
            problems.append(f"{path.name}: sample {key} lacks {missing}")
            continue
        if decode:
            _check_sample(path, key, members, problems)
    return count


def _check_sample(path: Path, key: str, members: dict[str, Any], problems: list[str]) -> None:
    try:
        sample = decode_packed({"__key__": key, **members}, f"{path.name}:{key}")
    except (ImageReadError, ShardError) as exc:
        problems.append(f"{exc.path}: does not decode ({exc.reason})")
        return
    if sample["image"].shape[:2] != (sample.get("height"), sample.get("width")):
        problems.append(f"{path.name}: sample {key} image size differs from its JSON")
    if "mask" in sample and sample["mask"].shape != sample["image"].shape[:2]:
        problems.append(f"{path.name}: sample {key} mask size differs from its image")
