"""The run folder: what it holds of a run, and the one rule for reusing it (``--resume`` / ``--restart``).

A folder that holds a run is never trained into by accident: continuing needs ``--resume``, starting over needs
``--restart``, which moves the old run aside into ``previous-<time>/`` instead of deleting it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import FetalCLIPError
from .checkpointing import CHECKPOINT_DIR, list_checkpoints, remove_partial_writes
from .distributed import DistContext, barrier
from .runlog import EVAL_LOG, TRAIN_LOG, read_log

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
log = logging.getLogger("fetalclip.train")


# What a run folder holds of a run; ``--restart`` moves exactly these aside.
RUN_ENTRIES = (CONFIG_FILE, SUMMARY_FILE, TRAIN_LOG, EVAL_LOG, CHECKPOINT_DIR, MODEL_DIR, "adapter", "tensorboard")


def has_history(run_dir: Path) -> bool:
    """Whether the folder holds anything a fresh start would destroy: checkpoints or logged steps."""
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir() and any(folder.iterdir()):
        return True
    return bool(read_log(run_dir / TRAIN_LOG)) or (run_dir / MODEL_DIR).exists()


def _set_run_aside(run_dir: Path) -> Path:
    """Move the folder's run (logs, checkpoints, model) into ``previous-<time>/`` and return that folder."""
    aside = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    suffix = 1
    while aside.exists():  # two restarts within one second
        aside, suffix = run_dir / f"{aside.name.split('.')[0]}.{suffix}", suffix + 1
    aside.mkdir()
    for name in RUN_ENTRIES:
        if (run_dir / name).exists():
            (run_dir / name).rename(aside / name)
    return aside


def prepare_run_dir(run_dir: Path, resume: bool, restart: bool, ctx: DistContext) -> None:
    if ctx.is_main:
        if resume and restart:
            raise FetalCLIPError("--resume and --restart exclude each other: continue the run, or start it over")
        existing = list_checkpoints(run_dir) or (run_dir / CONFIG_FILE).is_file() or has_history(run_dir)
        if existing and not (resume or restart):
            raise FetalCLIPError(f"{run_dir}: holds a run already; pass --resume to continue it, --restart to start "
                                 "over (the old run is kept aside), or choose another --out")
        if existing and restart:
            log.warning("%s: previous run moved to %s", run_dir, _set_run_aside(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        for partial in remove_partial_writes(run_dir):
            log.warning("%s: removed the temporary file of an interrupted checkpoint write", partial)
    barrier(ctx)
