"""Atomic file output: nothing half-written.

Every file the package produces (embeddings, reports, shards, manifests) is written to a temporary name in
the destination folder and renamed into place, so a crash or a kill leaves either the old file or the new
one, never a truncated mix. ``os.replace`` is atomic within one filesystem, hence the same-folder temp file.

A write that fails (disk full, read-only folder, permission denied) raises ``OutputError`` naming the
destination rather than the temporary name the operating system saw; what to write where, and whether an
existing file may be replaced, is decided beforehand by ``fetalclip.outputs.check_outputs``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import OutputError

# Errors that are about the file being written whatever file name (if any) the exception carries.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(path, f"cannot be written ({_reason(exc)})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; outputs should get the permissions any other new file would.
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if not _about_output(exc, tmp, path):
            raise  # e.g. an input read inside the block: not ours to rename
        raise OutputError(path, f"write failed ({_reason(exc)}); nothing was replaced") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _about_output(exc: OSError, tmp: Path, path: Path) -> bool:
    named = {exc.filename, getattr(exc, "filename2", None)} - {None}
    return exc.errno in WRITE_ERRNOS or not named or bool(named & {str(tmp), str(path), os.fspath(tmp), os.fspath(path)})


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """A CSV table with a header row and ``\\n`` line ends, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    # NaN and infinity are not JSON (other readers reject the file): they are written as null, and
    # allow_nan=False guarantees no bare NaN slips through.
    return write_text_atomic(path, json.dumps(finite_json(obj), indent=indent, default=json_default, allow_nan=False) + "\n")


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez`` under the exact name given (numpy would otherwise append ``.npz`` to a temp name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for numpy scalars and arrays and paths; anything else is a ``TypeError``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's included, inside arrays too) replaced by ``None``."""
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
