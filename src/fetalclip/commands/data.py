"""``fetalclip data ...``: pack datasets into WebDataset shards, check shards, make patient-level splits."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import OVERWRITE_HELP

data_app = typer.Typer(help="Datasets: pack pretraining shards, check them, make patient-level splits.", no_args_is_help=True)

SPEC_HELP = "Dataset spec: hc18:DIR, fpdb:DIR, csv:FILE, folder:DIR, shards:DIR or sim:N (repeat for several)."


@data_app.command("pack")
def pack_command(
    datasets: list[str] = typer.Option(..., "--dataset", "-d", help=SPEC_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for shard-NNNNNN.tar files and manifest.json."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per shard (shards close at input boundaries)."),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="Mask outside the field of view and remove burned-in graphics."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable inputs (counted and listed) instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Shuffles inputs across shards and picks caption phrasings."),
    frames: str = typer.Option("all", "--frames", help="Frames of cine loops/videos: all, every:K, even:N, first."),
    masks: bool = typer.Option(True, "--masks/--no-masks", help="Store segmentation masks when the dataset has them."),
    captions: str = typer.Option(None, "--captions", help="Own caption function as MODULE:FUNCTION, called (sample, rng)."),
    workers: int = typer.Option(None, "--workers", min=0, help="Worker processes (default: CPU cores; 0 = none)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the summary as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
) -> None:
    """Write WebDataset shards (image PNG, caption, metadata JSON, mask) plus a manifest; resumes a partial run."""
    from ..data.captions import load_caption_fn
    from ..data.shards import MANIFEST, pack_shards
    from ..io import write_json_atomic
    from ..outputs import RunFolder, check_outputs, spec_inputs

    # The shard folder resumes by design (pack_shards checks that settings match); only --json is a plain file.
    check_outputs({"--json": json_out}, folders=[RunFolder(out, writes=(MANIFEST,), marks=(MANIFEST,))],
                  inputs=spec_inputs(datasets), overwrite=overwrite)

    caption_fn = load_caption_fn(captions) if captions else None
    result = pack_shards(datasets, out, shard_size=shard_size, clean=clean, frames=frames, seed=seed, skip_bad=skip_bad,
                         masks=masks, caption_fn=caption_fn, caption_name=captions, workers=workers, progress=True)
    summary = {"out": str(result.out), "shards": result.shards, "samples": result.samples, "inputs": result.inputs,
               "skipped": len(result.skipped), "shards_written_now": result.written_shards,
               "resumed_after_shards": result.resumed_from_shard}
    if json_out:
        write_json_atomic(json_out, {**summary, "skipped_inputs": result.skipped})
    resumed = f" (resumed after {result.resumed_from_shard} existing shards)" if result.resumed_from_shard else ""
    typer.echo(f"packed {result.samples} samples from {result.inputs} inputs into {result.shards} shards -> {out}{resumed}")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} unreadable inputs:", err=True)
        for entry in result.skipped:
            typer.echo(f"  {entry['source']}: {entry['reason']}", err=True)


@data_app.command("check")
def check_command(
    folder: Path = typer.Argument(..., help="A folder written by `fetalclip data pack`."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Check files, checksums and counts only."),
    json_out: Path = typer.Option(None, "--json", help="Also write the result as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Verify shards against their manifest: checksums, sample counts, and that every sample decodes."""
    from ..data.shards import check_shards
    from ..errors import FetalCLIPError
    from ..io import write_json_atomic
    from ..outputs import check_outputs

    if folder.is_dir():  # what is checked must not be what is written
        check_outputs({"--json": json_out}, inputs=[p for p in folder.iterdir() if p.is_file()], overwrite=overwrite)
    else:
        check_outputs({"--json": json_out}, overwrite=overwrite)

    result = check_shards(folder, decode=not no_decode, progress=True)
    if json_out:
        write_json_atomic(json_out, {"folder": str(folder), "ok": result.ok, "shards": result.shards,
                                     "samples": result.samples, "problems": result.problems})
    typer.echo(f"{folder}: {result.shards} shards, {result.samples} samples, {len(result.problems)} problems")
    for problem in result.problems:
        typer.echo(f"  {problem}", err=True)
    if not result.ok:
        raise FetalCLIPError(f"{folder}: shard check failed ({len(result.problems)} problems)")


@data_app.command("split")
def split_command(
    datasets: list[str] = typer.Option(..., "--dataset", "-d", help=SPEC_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Split JSON to write."),
    k: int = typer.Option(5, "--folds", "-k", min=1, help="Cross-validation folds outside the test part."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.95, help="Share of images in the test part."),
    seed: int = typer.Option(0, "--seed"),
    official: bool = typer.Option(False, "--official", help="Test part = the dataset's own test split (e.g. FETAL_PLANES_DB)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Patient-level test part and k folds, saved as JSON (patient ids, not image indices)."""
    from rich.console import Console
    from rich.table import Table

    from ..data.datasets import open_dataset
    from ..data.splits import make_splits
    from ..outputs import check_outputs, spec_inputs

    check_outputs({"--out": out}, inputs=spec_inputs(datasets), overwrite=overwrite)
    records = [record for spec in datasets for record in open_dataset(spec).records]
    splits = make_splits(records, k=k, test_fraction=test_fraction, seed=seed, use_split_column=official)
    splits.settings["specs"] = list(datasets)
    splits.save(out)
    table = Table("part", "patients", "images")
    parts = splits.indices(records, 0)
    table.add_row("test", str(len(splits.test)), str(len(parts["test"])))
    for index, fold in enumerate(splits.folds):
        table.add_row(f"fold{index}", str(len(fold)), str(len(splits.indices(records, index)["val"])))
    Console(width=120).print(table)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
