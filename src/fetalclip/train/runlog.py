"""The run folder's logs: ``train_log.csv`` (one row per logged step), ``eval_log.csv`` (long format:
step, metric, value), optionally TensorBoard events.

On resume, rows written after the checkpoint being resumed from (by the run that was killed) are dropped
first, so a resumed run's log reads exactly like an uninterrupted one: one row per step, no duplicates.
Rows are flushed as they are written; the truncation on resume is an atomic rewrite.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from ..errors import FetalCLIPError
from ..io import write_text_atomic

TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"
TRAIN_COLUMNS = ("step", "loss", "lr", "logit_scale", "images_per_s", "data_s", "step_s", "epoch", "elapsed_s")
EVAL_COLUMNS = ("step", "metric", "value")


def read_log(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _step_of(path: Path, line: int, row: Mapping[str, Any]) -> int:
    try:
        return int(row.get("step") or "")
    except (TypeError, ValueError):
        raise FetalCLIPError(f"{path}: line {line}: step {row.get('step')!r} is not a whole number; "
                             "fix or delete that line, then resume again") from None


def _truncate(path: Path, columns: tuple[str, ...], last_step: int) -> None:
    try:
        logged = read_log(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FetalCLIPError(f"{path}: not a readable CSV log ({exc})") from None
    rows = [row for line, row in enumerate(logged, start=2) if _step_of(path, line, row) <= last_step]
    lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


class RunLog:
    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.paths = {"train": self.run_dir / TRAIN_LOG, "eval": self.run_dir / EVAL_LOG}
        for kind, columns in (("train", TRAIN_COLUMNS), ("eval", EVAL_COLUMNS)):
            path = self.paths[kind]
            if resume_step is not None and path.is_file():
                _truncate(path, columns, resume_step)
            else:
                write_text_atomic(path, ",".join(columns) + "\n")
        self._handles = {kind: path.open("a", newline="") for kind, path in self.paths.items()}
        self._writers = {
            "train": csv.DictWriter(self._handles["train"], TRAIN_COLUMNS, extrasaction="ignore"),
            "eval": csv.DictWriter(self._handles["eval"], EVAL_COLUMNS),
        }
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise FetalCLIPError("tensorboard = true needs the tensorboard package (pip install tensorboard)") from exc
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)

    def train(self, row: Mapping[str, Any]) -> None:
        self._writers["train"].writerow({k: _fmt(v) for k, v in row.items()})
        self._handles["train"].flush()
        if self.tb is not None:
            for key in ("loss", "lr", "logit_scale", "images_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def eval(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writers["eval"].writerow({"step": step, "metric": name, "value": _fmt(value)})
            if self.tb is not None:
                self.tb.add_scalar(name, value, step)
        self._handles["eval"].flush()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value: Any) -> Any:
    return f"{value:.7g}" if isinstance(value, float) else value
