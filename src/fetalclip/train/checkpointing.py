"""Resumable training checkpoints: ``checkpoints/step-NNNNNNNN.pt`` in the run folder, written atomically.

One file per checkpoint holds everything a resumed run needs: model and optimiser state, the step (which is
also the data position, see ``data.py``), the schedule's parameters, the gradient scaler, and the random
number generator states of every process. Each file is written under a temporary name and renamed, so a
run killed mid-write leaves the previous checkpoint intact and never a truncated "latest" one; resuming
takes the highest step whose file loads. Older checkpoints beyond ``keep`` are deleted after a new one lands.

Nothing readable is ever lost to a damaged file: a checkpoint that does not load is renamed aside
(``step-NNNNNNNN.pt.unreadable``) when a resume passes over it, so it can neither shadow the checkpoints the
resumed run writes nor push a readable one out of the ``keep`` window; temporary files of a write that was
interrupted are removed when the next run starts.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_path

log = logging.getLogger("fetalclip.train")

CHECKPOINT_DIR = "checkpoints"
_PATTERN = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """This process's generator states, as tensors and plain Python values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    path = checkpoint_path(run_dir, step)
    with atomic_path(path) as tmp:
        torch.save({"step": step, **payload}, tmp)
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


UNREADABLE_SUFFIX = ".unreadable"


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a killed run left behind; returns them."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    partial = [p for p in folder.iterdir() if p.name.startswith(".step-") and p.name.endswith(".tmp") and p.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def load_latest_checkpoint(run_dir: Path, set_aside_unreadable: bool = False) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``run_dir`` (``None`` when there is none).

    ``set_aside_unreadable``: rename each damaged file passed over to ``*.pt.unreadable`` (a resume does this,
    so the run continuing from an older step never keeps a damaged newer file in place of a good one).
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: fall back to the one before, loudly
            log.warning("%s: unreadable checkpoint (%s); trying the previous one", path, exc)
            if set_aside_unreadable:
                path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
            continue
        if state.get("step") != step:
            raise CheckpointError(f"{path}: file name says step {step}, content says {state.get('step')}")
        state["path"] = str(path)
        return state
    return None
