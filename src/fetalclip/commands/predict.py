"""``fetalclip predict``: an answer about each scan given, on the terminal and as JSON or CSV.

Paths may be image files (PNG, JPG, TIFF, DICOM: its first frame) or folders of them. The answers are
``tasks.predictor.Predictor``'s; this command reads, guards the output, counts what it skipped, and renders.
``--segmenter DIR`` (a ``probe segment --save`` folder) adds head biometry to head views; ``--head FILE``
(repeatable) adds a saved probe head's score: per scan for image heads, per sweep for clip heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..outputs import OVERWRITE_HELP
from .embed import MODEL_HELP

CSV_COLUMNS = ("source", "plane", "probability", "calibrated", "prediction_set", "standard_plane", "brain_plane",
               "ga_weeks_days", "ga_days", "ga_range", "note")
BIOMETRY_COLUMNS = ("hc_mm", "bpd_mm", "ofd_mm", "ga_hc_who", "ga_hc_hadlock", "hc_percentile", "fit_ok", "biometry_note")
SWEEP_COLUMNS = ("source", "frames", "best_frames", "ga")


def _expand(paths: list[Path]) -> list[Path]:
    from ..data.readers import frame_files

    files: list[Path] = []
    for path in paths:
        files.extend(frame_files(path) if path.is_dir() else [path])
    return files


def _number(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _biometry_row(biometry) -> dict[str, str]:
    """The CSV/table cells of a head's biometry (empty cells where there is none)."""
    if biometry is None:
        return {key: "" for key in BIOMETRY_COLUMNS}
    quality = biometry.quality or {}
    notes = [n for n in (biometry.reason, quality.get("reason"), *biometry.notes) if n]
    return {"hc_mm": _number(biometry.hc_mm), "bpd_mm": _number(biometry.bpd_mm), "ofd_mm": _number(biometry.ofd_mm),
            "ga_hc_who": biometry.ga_who_weeks_days or "", "ga_hc_hadlock": biometry.ga_hadlock_weeks_days or "",
            "hc_percentile": _number(biometry.hc_percentile),
            "fit_ok": "" if not quality else str(quality["ok"]).lower(), "biometry_note": "; ".join(notes)}


def _heads_cells(heads: dict | None) -> dict[str, str]:
    """One cell per probe head: its top class and that class's probability."""
    return {f"head:{name}": f"{score['label']} ({score['probabilities'][score['label']]:.3f})" for name, score in (heads or {}).items()}


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
        **_biometry_row(answer.biometry), **_heads_cells(answer.heads),
    }


def predict_command(
    paths: list[Path] = typer.Argument(..., help="Scans: image files, DICOM files, or folders of images."),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="From `fetalclip calibrate` for this model."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="A `probe segment --save` folder for these weights: "
                                             "head biometry (HC, BPD, OFD, GA from HC)."),
    head: list[Path] = typer.Option([], "--head", help="A saved probe head (repeatable): image heads score each scan, clip heads each sweep."),
    head_mask: bool = typer.Option(False, "--head-mask", help="Put the segmented head mask (run-length coded) into the JSON."),
    spacing: Optional[float] = typer.Option(None, "--spacing", help="Pixel spacing in mm (DICOM files carry their own)."),
    sweep: bool = typer.Option(False, "--sweep", help="Each PATH is one sweep (video, multi-frame DICOM/TIFF, frame folder): best frame per plane."),
    view: Optional[str] = typer.Option(None, "--view", help="The plane the scans show, if known (brain: always read sub-plane and GA)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Answers as .json (full) or .csv (one row per scan)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files (counted) instead of stopping."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Frames per encoder batch of a --sweep."),
    device: str = typer.Option("cpu", "--device"),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx: MODEL is a `fetalclip export` folder (ONNX Runtime)."),
    parts: Optional[Path] = typer.Option(None, "--parts", help="Folder of resumable per-chunk answers (part-NNNNNN.json). "
                                         "Under torchrun with more than one process it defaults to OUT.parts; each rank "
                                         "answers every N-th chunk and rank 0 joins them into OUT."),
    chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="Scans (or sweeps) per part, with --parts or under torchrun."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Which plane, how sure, is it a standard plane, brain sub-plane and gestational age: per scan."""
    from ..deploy import open_predictor
    from ..errors import FetalCLIPError
    from ..outputs import RunFolder, check_outputs
    from ..tasks.embed import INDEX_FILE, RUN_FILE
    from ..torchrun import torchrun_env

    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise FetalCLIPError(f"{out}: --out must end in .json or .csv")
    items = paths if sweep else _expand(paths)
    if not items:
        raise FetalCLIPError("no scans found in " + ", ".join(map(str, paths)))
    if torchrun_env().distributed and parts is None:
        if out is None:
            raise FetalCLIPError("under torchrun, predict needs --out (the parts go beside it, in OUT.parts)")
        parts = out.with_name(out.name + ".parts")
    if parts is not None and out is None:
        raise FetalCLIPError("--parts needs --out: the joined answers are written there")
    folders = [] if parts is None else [RunFolder(parts, writes=(RUN_FILE, INDEX_FILE), marks=(RUN_FILE,), option="--parts")]
    check_outputs({"--out": out}, inputs=[*items, calibration, segmenter, *head], folders=folders, overwrite=overwrite)
    context = None
    if parts is not None:
        from ..train.distributed import init_distributed

        context = init_distributed(device)
        device = str(context.device)
    try:
        predictor = open_predictor(model, backend=backend, calibration=calibration, segmenter=segmenter, heads=head,
                                   head_mask=head_mask, device=device)
        if sweep:
            def answer(path):
                return predictor.sweep(path, spacing_mm=spacing, batch_size=batch_size)
        else:
            def answer(path):  # one file at a time, so that --skip-bad leaves out exactly the file that does not read
                return predictor(path, spacing_mm=spacing, view=view)
        unit, rows_of = ("sweep", _sweep_rows) if sweep else ("scan", _scan_rows)
        if context is None:
            answers, skipped = _each(items, answer, skip_bad, unit)
            rows = _show_sweeps(answers) if sweep else _show_scans(answers)
            documents = [a.to_dict() for a in answers]
            if not sweep and predictor.calibration is None:
                typer.echo("uncalibrated: probabilities are the raw zero-shot softmax (see `fetalclip calibrate`)")
        else:
            record = _parts_record(predictor, items, model, backend, sweep, view, spacing, calibration, segmenter, head,
                                   head_mask, batch_size)
            joined = _in_parts(context, items, parts, record, chunk_size,
                               lambda chunk: _answer_chunk(chunk, answer, rows_of, skip_bad, unit))
            if joined is None:  # not rank 0: its parts are written, rank 0 writes OUT
                return
            documents, rows, skipped = joined["answers"], joined["rows"], [tuple(x) for x in joined["skipped"]]
            typer.echo(f"{len(documents)} {unit}s answered in {parts} ({len(skipped)} skipped)")
    finally:
        if context is not None:
            from ..train.distributed import shutdown_distributed

            shutdown_distributed(context)
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable files (first: {skipped[0][0]}: {skipped[0][1]})", err=True)
    base = SWEEP_COLUMNS if sweep else CSV_COLUMNS
    columns = base + (BIOMETRY_COLUMNS if segmenter is not None else ()) + _head_columns(rows)
    if out is not None:
        _write(out, {"model": predictor.model.name, "model_reference": model,
                     "calibration": str(calibration) if calibration else None,
                     "segmenter": str(segmenter) if segmenter else None, "heads": [str(h) for h in head],
                     "sweeps" if sweep else "predictions": documents}, skipped, columns, rows)


def _answer_chunk(chunk, answer, rows_of, skip_bad: bool, unit: str) -> dict[str, list]:
    answers, skipped = _each(list(chunk), answer, skip_bad, unit)
    return {"answers": [a.to_dict() for a in answers], "rows": rows_of(answers), "skipped": [list(x) for x in skipped]}


def _parts_record(predictor, items, model, backend, sweep, view, spacing, calibration, segmenter, heads, head_mask,
                  batch_size) -> dict:
    """What a parts folder's answers depend on: another run's parts are refused, not mixed in."""
    import hashlib

    from ..tasks.features import model_fingerprint

    return {"command": "predict", "model": str(model), "fingerprint": model_fingerprint(predictor.model),
            "backend": backend, "sweep": sweep, "view": view, "spacing_mm": spacing,
            "calibration": str(calibration) if calibration else None, "segmenter": str(segmenter) if segmenter else None,
            "heads": [str(h) for h in heads], "head_mask": head_mask, "batch_size": batch_size if sweep else None,
            "items_sha256": hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()}


def _in_parts(context, items, parts: Path, record: dict, chunk_size: int, compute):
    """This rank's chunks into ``parts``; after every rank is done, rank 0 returns the joined lists (others None)."""
    from ..tasks.json_parts import join_json_parts, run_json_parts
    from ..train.distributed import barrier

    computed = run_json_parts(items, parts, compute, record, rank=context.rank, world_size=context.world_size,
                              chunk_size=chunk_size)
    typer.echo(f"rank {context.rank}/{context.world_size}: {len(computed)} parts computed in {parts}", err=True)
    barrier(context)
    return join_json_parts(parts) if context.is_main else None


def _head_columns(rows: list[dict[str, str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(key for row in rows for key in row if key.startswith("head:")))


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


def _scan_rows(answers) -> list[dict[str, str]]:
    return [_row(answer) for answer in answers]


def _show_scans(answers) -> list[dict[str, str]]:
    rows = _scan_rows(answers)
    typer.echo(f"{'scan':<36} {'plane':<10} {'p':>6} {'standard':>8} {'sub-plane':<18} {'GA':>7} {'range':<13}")
    for row, answer in zip(rows, answers):
        name = Path(row["source"]).name[-36:]
        typer.echo(f"{name:<36} {row['plane']:<10} {row['probability']:>6} {row['standard_plane'] or '?':>8} "
                   f"{row['brain_plane']:<18} {row['ga_weeks_days']:>7} {row['ga_range']:<13}")
        if row["note"]:
            typer.echo(f"    {row['note']}")
        if answer.biometry is not None:
            typer.echo(f"    {_biometry_line(row)}")
        for cell, value in _heads_cells(answer.heads).items():
            typer.echo(f"    {cell[len('head:'):]}: {value}")
    return rows


def _biometry_line(row: dict[str, str]) -> str:
    """``HC 172.3 mm  BPD 45.1  OFD 60.2  GA(HC) 20w1d WHO / 20w3d Hadlock  HC 48.2th centile  fit ok``."""
    if not row["hc_mm"]:
        return f"biometry: {row['biometry_note']}"
    line = (f"HC {row['hc_mm']} mm  BPD {row['bpd_mm']}  OFD {row['ofd_mm']}  "
            f"GA(HC) {row['ga_hc_who']} WHO / {row['ga_hc_hadlock']} Hadlock")
    if row["hc_percentile"]:
        line += f"  HC centile {row['hc_percentile']}"
    line += "  fit ok" if row["fit_ok"] == "true" else "  FIT POOR"
    return line + (f"  ({row['biometry_note']})" if row["biometry_note"] else "")


def _sweep_row(answer) -> dict[str, str]:
    """A sweep's row: its best frame per plane and the GA (and biometry) of its best head frame."""
    best = "; ".join(f"{plane}@{b['frame']} ({b['probability']:.2f})" for plane, b in answer.best_frames.items())
    age = answer.head.gestational_age if answer.head is not None else None
    ga = (age.weeks_days or age.reason) if age is not None else ""
    biometry = answer.head.biometry if answer.head is not None else None
    return {"source": answer.source, "frames": str(len(answer.frames)), "best_frames": best, "ga": ga or "",
            **_biometry_row(biometry), **_heads_cells(answer.heads)}


def _sweep_rows(answers) -> list[dict[str, str]]:
    return [_sweep_row(answer) for answer in answers]


def _show_sweeps(answers) -> list[dict[str, str]]:
    """One row per sweep: its best frame per plane and the GA of its best head frame."""
    rows = []
    typer.echo(f"{'sweep':<36} {'frames':>6}  best frame per plane (probability)          GA at the best head frame")
    for answer in answers:
        row = _sweep_row(answer)
        rows.append(row)
        best, ga = row["best_frames"], row["ga"]
        biometry = answer.head.biometry if answer.head is not None else None
        typer.echo(f"{Path(answer.source).name[-36:]:<36} {len(answer.frames):>6}  {best or 'no standard frame':<43} {ga or ''}")
        if biometry is not None:
            typer.echo(f"    best head frame: {_biometry_line(row)}")
        for cell, value in _heads_cells(answer.heads).items():
            typer.echo(f"    {cell[len('head:'):]}: {value}")
    return rows


def _write(out: Path, document: dict, skipped: list[tuple[str, str]], columns, rows: list[dict[str, str]]) -> None:
    """The full answers as JSON, or the table's rows as CSV, by ``out``'s suffix."""
    from ..io import write_csv_atomic, write_json_atomic
    from ..tasks.predictor import PREDICTION_SCHEMA

    if out.suffix.lower() == ".json":
        write_json_atomic(out, {"schema": PREDICTION_SCHEMA, **document,
                                "skipped": [{"source": s, "reason": r} for s, r in skipped]})
    else:
        write_csv_atomic(out, columns, [{column: row.get(column, "") for column in columns} for row in rows])
    typer.echo(f"answers -> {out}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
