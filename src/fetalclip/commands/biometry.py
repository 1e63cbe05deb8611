"""``fetalclip biometry hc``: head circumference, BPD, OFD and GA from segmentations (HC18 metrics when possible)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..outputs import OVERWRITE_HELP

biometry_app = typer.Typer(help="Fetal biometry from segmentations.", no_args_is_help=True)


def hc_command(
    data: str = typer.Option(..., "--data", "-d", help="Dataset spec (hc18:DIR, csv:FILE with pixel_spacing_mm, ...)."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="Run folder of `probe segment --save` (else: the dataset's own masks)."),
    held_out: bool = typer.Option(False, "--held-out", help="Only the segmenter run's test patients (its splits.json)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Result JSON with per-image rows."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Feature cache folder ('none' disables it)."),
    device: str = typer.Option("cpu", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (1 is fastest on a busy machine)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Measure every image: ellipse fit, HC (Ramanujan), BPD, OFD in mm, GA (WHO median, Hadlock)."""

    from ..data.datasets import open_dataset
    from ..errors import FetalCLIPError
    from ..io import write_json_atomic
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.segmentation_tasks import BiometryHC
    from .probe import SEGMENTER_FILES

    if threads:
        import torch

        torch.set_num_threads(threads)
    dataset = open_dataset(data)
    segmenter_files = [segmenter / name for name in SEGMENTER_FILES] if segmenter else []
    check_outputs({"--out": out}, inputs=[*dataset_inputs(dataset), *segmenter_files], overwrite=overwrite)
    if held_out and segmenter is None:
        raise FetalCLIPError("--held-out needs --segmenter (the run folder holds the split)")
    net, feature_cache = None, None
    if segmenter is None:
        task = BiometryHC(dataset_masks=True)
    else:
        from ..models import load
        from ..tasks.features import FeatureCache
        from ..tasks.segmentation_decoder import Segmenter
        from .probe import cache_root

        probe = Segmenter.load(segmenter)
        encoder = probe.meta["encoder"]
        net = load(encoder["model"], device=device)
        feature_cache = FeatureCache(net, cache_root(cache), progress=True)
        if feature_cache.fingerprint != encoder["fingerprint"]:
            raise FetalCLIPError(f"{segmenter}: encoder {encoder['model']!r} does not have the weights the decoder was trained on "
                                 f"(fingerprint {feature_cache.fingerprint[:12]} vs {encoder['fingerprint'][:12]})")
        if held_out:
            dataset = _held_out(dataset, segmenter, data)
        task = BiometryHC(segmenter=probe)
    result = task.run(net, dataset, feature_cache, progress=True)
    details, metrics = result.details, result.metrics
    typer.echo(f"head biometry on {data}: {details['n']} images ({details['source_of_masks']} masks), {details['n_failed']} failed")
    if metrics["hc_mean_abs_diff_mm"].value is not None:
        typer.echo(f"  HC mean abs diff {metrics['hc_mean_abs_diff_mm'].value:.2f} mm   mean diff {metrics['hc_mean_diff_mm'].value:+.2f} mm")
    if metrics["dice"].value is not None:
        typer.echo(f"  Dice {metrics['dice'].value:.2f}   Hausdorff {metrics['hausdorff_mm'].value:.2f} mm")
    if out is not None:
        write_json_atomic(out, {**result.to_dict(), **_flat_summary(result), "data": data,
                                "segmenter": str(segmenter) if segmenter else None, "held_out": held_out,
                                "rows_left_out": dataset.rows_left_out()})
        typer.echo(f"results -> {out}")


def _held_out(dataset, segmenter: Path, data: str):
    """The records of the segmenter run's test patients (its ``splits.json``)."""
    from ..data.splits import Splits
    from ..errors import FetalCLIPError

    splits_path = segmenter / "splits.json"
    if not splits_path.is_file():
        raise FetalCLIPError(f"{splits_path}: missing (needed by --held-out)")
    test_patients = set(Splits.load(splits_path).test)
    keep = [i for i, r in enumerate(dataset.records) if str(r.get("patient")) in test_patients]
    if not keep:
        raise FetalCLIPError(f"{data}: none of the segmenter's test patients are in this dataset")
    return dataset.subset(keep)


def _flat_summary(result) -> dict:
    """The summary keys of the earlier flat result file (Dice there as a fraction), for scripts that read them."""
    metrics = result.metrics
    dice = metrics["dice"].value
    return {"hc_mean_abs_diff_mm": metrics["hc_mean_abs_diff_mm"].value, "hc_mean_diff_mm": metrics["hc_mean_diff_mm"].value,
            "hc_sd_diff_mm": result.details["hc_sd_diff_mm"], "dice": None if dice is None else dice / 100.0,
            "hausdorff_mm": metrics["hausdorff_mm"].value, "n": result.details["n"], "n_failed": result.details["n_failed"],
            "n_skipped_not_head": result.details["n_skipped_not_head"], "source_of_masks": result.details["source_of_masks"]}


def register(app: typer.Typer) -> None:
    biometry_app.command("hc")(hc_command)
    app.add_typer(biometry_app, name="biometry")
