"""``fetalclip predict``: an answer about each scan given, on the terminal and as JSON or CSV.

Paths may be image files (PNG, JPG, TIFF, DICOM: its first frame) or folders of them. The answers are
``tasks.predictor.Predictor``'s; this command reads, guards the output, counts what it skipped, and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..outputs import OVERWRITE_HELP
from .embed import MODEL_HELP

CSV_COLUMNS = ("source", "plane", "probability", "calibrated", "prediction_set", "standard_plane", "brain_plane",
               "ga_weeks_days", "ga_days", "ga_range", "note")
SWEEP_COLUMNS = ("source", "frames", "best_frames", "ga")


def _expand(paths: list[Path]) -> list[Path]:
    from ..data.readers import frame_files

    files: list[Path] = []
    for path in paths:
        files.extend(frame_files(path) if path.is_dir() else [path])
    return files


def _row(answer) -> dict[str, str]:
    plane, age, brain = answer.plane, answer.gestational_age, answer.brain_plane
    note = plane.reason or (age.reason if age is not None and age.reason else "") or "; ".join(answer.notes)
    return {
        "source": answer.source, "plane": plane.label, "probability": f"{plane.probability:.3f}",
        "calibrated": str(plane.calibrated).lower(),
        "prediction_set": "+".join(plane.prediction_set) if plane.prediction_set is not None else "",
        "standard_plane": "" if plane.standard_plane is None else str(plane.standard_plane).lower(),
        "brain_plane": brain["label"] if brain else "",
        "ga_weeks_days": age.weeks_days or "" if age else "", "ga_days": str(age.days) if age and age.days else "",
        "ga_range": "-".join(age.range_weeks_days) if age and age.range_weeks_days else "", "note": note or "",
    }


def predict_command(
    paths: list[Path] = typer.Argument(..., help="Scans: image files, DICOM files, or folders of images."),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="From `fetalclip calibrate` for this model."),
    spacing: Optional[float] = typer.Option(None, "--spacing", help="Pixel spacing in mm (DICOM files carry their own)."),
    sweep: bool = typer.Option(False, "--sweep", help="Each PATH is one sweep (video, multi-frame DICOM/TIFF, frame folder): best frame per plane."),
    view: Optional[str] = typer.Option(None, "--view", help="The plane the scans show, if known (brain: always read sub-plane and GA)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Answers as .json (full) or .csv (one row per scan)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files (counted) instead of stopping."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Frames per encoder batch of a --sweep."),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Which plane, how sure, is it a standard plane, brain sub-plane and gestational age: per scan."""
    from ..errors import FetalCLIPError
    from ..outputs import check_outputs

    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise FetalCLIPError(f"{out}: --out must end in .json or .csv")
    items = paths if sweep else _expand(paths)
    if not items:
        raise FetalCLIPError("no scans found in " + ", ".join(map(str, paths)))
    check_outputs({"--out": out}, inputs=[*items, calibration], overwrite=overwrite)
    net, predictor = _open_predictor(model, calibration, device)
    if sweep:
        answers, skipped = _each(items, lambda path: predictor.sweep(path, spacing_mm=spacing, batch_size=batch_size),
                                 skip_bad, "sweep")
        rows = _show_sweeps(answers)
        key, columns = "sweeps", SWEEP_COLUMNS
    else:
        # One file at a time, so that --skip-bad can leave out exactly the file that does not read.
        answers, skipped = _each(items, lambda path: predictor(path, spacing_mm=spacing, view=view), skip_bad, "scan")
        rows = _show_scans(answers)
        if predictor.calibration is None:
            typer.echo("uncalibrated: probabilities are the raw zero-shot softmax (see `fetalclip calibrate`)")
        key, columns = "predictions", CSV_COLUMNS
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable files (first: {skipped[0][0]}: {skipped[0][1]})", err=True)
    if out is not None:
        _write(out, {"model": net.name, "model_reference": model, "calibration": str(calibration) if calibration else None,
                     key: [answer.to_dict() for answer in answers]}, skipped, columns, rows)


def _open_predictor(model: str, calibration: Optional[Path], device: str):
    """The model and a predictor with its calibration (refused when fitted for other weights)."""
    from ..models import load
    from ..tasks.calibration import load_calibration
    from ..tasks.features import model_fingerprint
    from ..tasks.predictor import Predictor

    net = load(model, device=device)
    return net, Predictor(net, load_calibration(calibration, model_fingerprint(net)) if calibration is not None else None)


def _each(items: list[Path], answer, skip_bad: bool, unit: str) -> tuple[list, list[tuple[str, str]]]:
    """``answer(item)`` for every item; with ``skip_bad`` unreadable ones are listed instead of stopping the run."""
    from ..errors import ImageReadError
    from ..progress import progress_bar

    answers, skipped = [], []
    for item in progress_bar(items, desc="predict", unit=unit, disable=len(items) < 8):
        try:
            answers.append(answer(item))
        except ImageReadError as exc:
            if not skip_bad:
                raise
            skipped.append((exc.path or str(item), exc.reason))
    return answers, skipped


def _show_scans(answers) -> list[dict[str, str]]:
    rows = [_row(answer) for answer in answers]
    typer.echo(f"{'scan':<36} {'plane':<10} {'p':>6} {'standard':>8} {'sub-plane':<18} {'GA':>7} {'range':<13}")
    for row in rows:
        name = Path(row["source"]).name[-36:]
        typer.echo(f"{name:<36} {row['plane']:<10} {row['probability']:>6} {row['standard_plane'] or '?':>8} "
                   f"{row['brain_plane']:<18} {row['ga_weeks_days']:>7} {row['ga_range']:<13}")
        if row["note"]:
            typer.echo(f"    {row['note']}")
    return rows


def _show_sweeps(answers) -> list[dict[str, str]]:
    """One row per sweep: its best frame per plane and the GA of its best head frame."""
    rows = []
    typer.echo(f"{'sweep':<36} {'frames':>6}  best frame per plane (probability)          GA at the best head frame")
    for answer in answers:
        best = "; ".join(f"{plane}@{b['frame']} ({b['probability']:.2f})" for plane, b in answer.best_frames.items())
        age = answer.head.gestational_age if answer.head is not None else None
        ga = (age.weeks_days or age.reason) if age is not None else ""
        rows.append({"source": answer.source, "frames": str(len(answer.frames)), "best_frames": best, "ga": ga or ""})
        typer.echo(f"{Path(answer.source).name[-36:]:<36} {len(answer.frames):>6}  {best or 'no standard frame':<43} {ga or ''}")
    return rows


def _write(out: Path, document: dict, skipped: list[tuple[str, str]], columns, rows: list[dict[str, str]]) -> None:
    """The full answers as JSON, or the table's rows as CSV, by ``out``'s suffix."""
    from ..io import write_csv_atomic, write_json_atomic
    from ..tasks.predictor import PREDICTION_SCHEMA

    if out.suffix.lower() == ".json":
        write_json_atomic(out, {"schema": PREDICTION_SCHEMA, **document,
                                "skipped": [{"source": s, "reason": r} for s, r in skipped]})
    else:
        write_csv_atomic(out, columns, rows)
    typer.echo(f"answers -> {out}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
