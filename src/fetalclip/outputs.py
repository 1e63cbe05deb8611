"""The output guard: every command declares what it will write, and what it reads, before it computes anything.

One function, ``check_outputs``, holds the rules for every writer, so no command can forget one:

1. Never write over an input. An output that is one of the run's input files (compared after following
   links, and by inode, so a symlink or a hard link does not slip through) is refused, even with
   ``--overwrite``: a run that destroys what it reads cannot be repeated or checked.
2. Never replace an existing file unless ``--overwrite`` is given.
3. Never write two outputs to one path: two options naming the same file, or a side output whose default
   name lands on another output, would leave only the last one written.
4. Fail at once on a destination that cannot be written. For each output the nearest folder that already
   exists must be a folder in which a file can be created; the guard creates and removes an empty probe
   file there, the only test that sees permissions, read-only mounts and ACLs alike. Folders that do not
   exist yet are not created by the guard (a run refused later would leave them behind).

Run folders. ``benchmark``, ``demo``, ``sim`` and ``data pack`` write into a folder that is designed to be
reused: a rerun reuses stored results, resumes a partial pack or re-renders a phantom set in place. For these
the rule applies to the folder as a whole (``RunFolder``): a folder holding the command's own mark (its result
store, shard manifest or info file) is a previous run of the same command, and writing into it again is the
designed resume, allowed without ``--overwrite``. A folder without the mark that already holds any name the
run would write belongs to something else, and is refused unless ``--overwrite`` is given. Folders that are
written whole but never resumed (``probe fewshot --out-dir``, ``probe segment --save``) declare their files
as ordinary outputs, so a rerun over them needs ``--overwrite``.

The writers in ``fetalclip.io`` stay atomic, and turn a write that fails half-way (disk full) into the same
``OutputError`` naming the destination; the guard only moves the predictable refusals before the work.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from .errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]

# Record metadata fields that name further files a dataset reads besides each record's ``source``.
INPUT_METADATA_KEYS = ("manifest", "annotation", "mask_path", "shard")  # "shard": the tar a shards:DIR record lives in

OVERWRITE_HELP = "Replace existing output files (never an input file)."


@dataclass(frozen=True)
class RunFolder:
    """A resumable output folder: ``writes`` are the names the run creates or replaces inside it, ``marks``
    the names whose presence shows it is a previous run of the same command."""

    path: PathLike
    writes: tuple[str, ...]
    marks: tuple[str, ...]
    option: str = "--out"


def check_outputs(
    files: Mapping[str, Optional[PathLike]] | None = None,
    *,
    inputs: Iterable[Optional[PathLike]] = (),
    folders: Iterable[RunFolder] = (),
    overwrite: bool = False,
) -> None:
    """Refuse (``OutputError``, one line naming the path) any output that breaks the module's rules.

    ``files`` maps the option that names each output (``"--out"``) to its path; ``None`` paths are outputs
    not asked for. ``inputs`` are the files the run reads. Call it before loading a model or reading data.
    """
    inputs = _InputSet(inputs)
    claimed: dict[Any, str] = {}
    writable = _WritableFolders()
    for option, path in (files or {}).items():
        if path is None:
            continue
        path = Path(path).expanduser()
        _claim(path, option, claimed)
        inputs.refuse(path, option)
        if path.is_dir():
            raise OutputError(path, f"{option} names a folder; give a file name")
        if _lexists(path) and not overwrite:
            raise OutputError(path, "already exists (pass --overwrite to replace it)")
        writable.require(path.parent, path)
    for folder in folders:
        root = Path(folder.path).expanduser()
        if _lexists(root) and not root.is_dir():
            raise OutputError(root, f"{folder.option} names a file, not a folder")
        inputs.refuse(root, folder.option)
        resuming = any(_lexists(root / mark) for mark in folder.marks)
        for name in folder.writes:
            target = root / name
            _claim(target, f"{folder.option} ({name})", claimed)
            inputs.refuse(target, folder.option)
            if not resuming and not overwrite and _lexists(target):
                raise OutputError(target, _exists_in_folder(root, folder.marks))
        writable.require(root, root)


def dataset_inputs(dataset: Any) -> list[str]:
    """Every file a ``SampleDataset`` reads: each record's source plus manifests, annotations and masks."""
    paths: dict[str, None] = {}
    for record in dataset.records:
        paths[str(record["source"])] = None
        metadata = record.get("metadata") or {}
        for key in INPUT_METADATA_KEYS:
            if metadata.get(key):
                paths[str(metadata[key])] = None
    return list(paths)


def spec_inputs(specs: Iterable[Optional[str]]) -> list[Path]:
    """The files named by dataset specs (``csv:FILE``; ``KEY=csv:FILE`` as the benchmark takes them)."""
    found = []
    for spec in specs:
        if not spec:
            continue
        head, sep, rest = spec.partition("=")
        if sep and ":" not in head:
            spec = rest
        _, colon, argument = spec.partition(":")
        candidate = Path(argument).expanduser() if colon else None
        if candidate is not None and candidate.is_file():
            found.append(candidate)
    return found


# -- helpers -----------------------------------------------------------------------------------------------
def _lexists(path: Path) -> bool:
    return os.path.lexists(path)  # a dangling symlink is something a write would replace


def _identity(path: Path) -> Any:
    """Same file <=> same identity: the inode for what exists (links included), else the resolved path."""
    try:
        stat = path.stat()
        return ("inode", stat.st_dev, stat.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


def _exists_in_folder(root: Path, marks: tuple[str, ...]) -> str:
    if not marks:
        return "already exists (pass --overwrite to replace it)"
    return (f"already exists and {root} is not a previous run of this command (it has no {' or '.join(marks)}); "
            "pass --overwrite to replace it")


def _claim(path: Path, option: str, claimed: dict[Any, str]) -> None:
    key = _identity(path)
    if key in claimed:
        raise OutputError(path, f"named for two outputs ({claimed[key]} and {option}); give each its own file")
    claimed[key] = option


class _InputSet:
    """The run's input files, identified lazily: only an output that already exists can be one of them."""

    def __init__(self, paths: Iterable[Optional[PathLike]]):
        self._paths = [Path(p).expanduser() for p in paths if p is not None]
        self._keys: set[Any] | None = None

    def refuse(self, path: Path, option: str) -> None:
        if not self._paths or not path.exists():
            return
        if self._keys is None:
            self._keys = {_identity(p) for p in self._paths if p.exists()}
        if _identity(path) in self._keys:
            raise OutputError(path, f"is an input of this run; refusing to write {option} over it (--overwrite does not apply)")


class _WritableFolders:
    """Checks that a file can be created where each output goes, once per folder."""

    def __init__(self) -> None:
        self._checked: set[str] = set()

    def require(self, folder: Path, output: Path) -> None:
        existing = folder
        while not _lexists(existing) and existing != existing.parent:
            existing = existing.parent
        key = str(existing.resolve())
        if key in self._checked:
            return
        if not existing.is_dir():
            raise OutputError(output, f"cannot be written: {existing} is a file, not a folder")
        try:
            handle, probe = tempfile.mkstemp(prefix=".fetalclip-write-check.", dir=existing)
        except OSError as exc:
            raise OutputError(output, f"cannot be written: folder {existing} is not writable ({exc.strerror or exc})") from None
        os.close(handle)
        os.unlink(probe)
        self._checked.add(key)
