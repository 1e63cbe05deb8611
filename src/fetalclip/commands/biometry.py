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
    from ..tasks.biometry import measure_dataset
    from .probe import SEGMENTER_FILES

    if threads:
        import torch

        torch.set_num_threads(threads)
    dataset = open_dataset(data)
    segmenter_files = [segmenter / name for name in SEGMENTER_FILES] if segmenter else []
    check_outputs({"--out": out}, inputs=[*dataset_inputs(dataset), *segmenter_files], overwrite=overwrite)
    seg, feature_cache = None, None
    if held_out and segmenter is None:
        raise FetalCLIPError("--held-out needs --segmenter (the run folder holds the split)")
    if segmenter is not None:
        from ..models import load
        from ..tasks.features import FeatureCache
        from ..tasks.segmentation import load_decoder
        from .probe import cache_root

        decoder, meta = load_decoder(segmenter)
        encoder = meta["encoder"]
        net = load(encoder["model"], device=device)
        feature_cache = FeatureCache(net, cache_root(cache), progress=True)
        if feature_cache.fingerprint != encoder["fingerprint"]:
            raise FetalCLIPError(f"{segmenter}: encoder {encoder['model']!r} does not have the weights the decoder was trained on "
                                 f"(fingerprint {feature_cache.fingerprint[:12]} vs {encoder['fingerprint'][:12]})")
        seg = (decoder, encoder["taps"], int(meta.get("size", 224)))
        if held_out:
            splits_path = segmenter / "splits.json"
            if not splits_path.is_file():
                raise FetalCLIPError(f"{splits_path}: missing (needed by --held-out)")
            from ..data.splits import Splits

            test_patients = set(Splits.load(splits_path).test)
            keep = [i for i, r in enumerate(dataset.records) if str(r.get("patient")) in test_patients]
            if not keep:
                raise FetalCLIPError(f"{data}: none of the segmenter's test patients are in this dataset")
            dataset = dataset.subset(keep)
    result = measure_dataset(dataset, seg, feature_cache, progress=True)
    result.update(data=data, segmenter=str(segmenter) if segmenter else None, held_out=held_out,
                  rows_left_out=dataset.rows_left_out())
    typer.echo(f"head biometry on {data}: {result['n']} images ({result['source_of_masks']} masks), {result['n_failed']} failed")
    if result["hc_mean_abs_diff_mm"] is not None:
        typer.echo(f"  HC mean abs diff {result['hc_mean_abs_diff_mm']:.2f} mm   mean diff {result['hc_mean_diff_mm']:+.2f} mm")
    if result["dice"] is not None:
        typer.echo(f"  Dice {100 * result['dice']:.2f}   Hausdorff {result['hausdorff_mm']:.2f} mm")
    if out is not None:
        write_json_atomic(out, result)
        typer.echo(f"results -> {out}")


def register(app: typer.Typer) -> None:
    biometry_app.command("hc")(hc_command)
    app.add_typer(biometry_app, name="biometry")
