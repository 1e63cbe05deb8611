"""The benchmark's results store: one JSON file per (model, task), written the moment it is computed.

A benchmark over several large models takes hours, so it must survive being interrupted: every finished
(model, task) result is written atomically to ``STORE/<model>/<task>.json`` and a rerun reuses it. A stored
result is reused only if its *fingerprint* still matches: model weights checksum, data manifest checksum,
seed, task version and task options. Changing any of them (a retrained checkpoint under the same path, a
different data folder) recomputes that cell and nothing else. One file per entry (rather than one growing
JSON) means a crash can lose at most the entry being written, and adding a model never rewrites the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ..io import write_json_atomic

STATUS_DONE = "done"
STATUS_FAILED = "failed"


def safe_name(text: str) -> str:
    """A filesystem-safe, still readable version of a model label or task name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "_"


class ResultsStore:
    """Entries keyed by (model label, task name), persisted one file each under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, model: str, task: str) -> Path:
        return self.root / safe_name(model) / f"{safe_name(task)}.json"

    def get(self, model: str, task: str) -> dict[str, Any] | None:
        path = self.path(model, task)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None  # a damaged entry is recomputed, not trusted
        if entry.get("model") != model or entry.get("task") != task:
            return None  # two labels that sanitise to one file name: never mix them up
        return entry

    def lookup(self, model: str, task: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """The stored, successful entry for this cell if it was computed under the same fingerprint."""
        entry = self.get(model, task)
        if entry is None or entry.get("status") != STATUS_DONE:
            return None
        return entry if entry.get("fingerprint") == _jsonable(fingerprint) else None

    def put(self, entry: dict[str, Any]) -> Path:
        for key in ("model", "task", "status", "fingerprint"):
            if key not in entry:
                raise ValueError(f"results entry lacks {key!r}")
        return write_json_atomic(self.path(entry["model"], entry["task"]), entry)

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/*.json")):
            try:
                yield json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue


def _jsonable(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), so fingerprints compare equal."""
    return json.loads(json.dumps(value, default=str))


__all__ = ["STATUS_DONE", "STATUS_FAILED", "ResultsStore", "safe_name"]
