"""Provenance recorded in checkpoints and reports: package version, git commit, time.

The git commit is read from the source tree when the package runs from a checkout (editable installs,
training clusters); an installed wheel has none and records ``None`` rather than guessing.
"""

from __future__ import annotations

import datetime as _dt
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def base_provenance(**extra: Any) -> dict[str, Any]:
    from . import __version__

    return {
        "fetalclip_version": __version__,
        "git_commit": git_commit(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }
