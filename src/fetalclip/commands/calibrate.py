"""``fetalclip calibrate``: fit the plane confidence of a model on labelled images, and say how well it holds.

The fitting and the measuring are ``tasks.calibration``'s; this command only opens the data and the model,
guards the output, and prints the held-out patients' numbers beside the file it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..outputs import OVERWRITE_HELP
from .embed import MODEL_HELP


def calibrate_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help="Labelled planes (fpdb:DIR, csv:FILE with label; 'other' = non-standard)."),
    out: Path = typer.Option(..., "--out", "-o", help="Calibration JSON (bound to this model's weights)."),
    coverage: float = typer.Option(0.9, "--coverage", min=0.5, max=0.999, help="Conformal sets hold the true plane this often."),
    accept: float = typer.Option(0.95, "--accept", min=0.5, max=1.0, help="Share of standard-plane images kept as standard."),
    seed: int = typer.Option(0, "--seed", help="Patient split between fitting and evaluation."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Plane prompts JSON (default: the packaged ones)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (counted) instead of stopping."),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Temperature, conformal threshold and abstain threshold for zero-shot planes, fitted on half the patients."""
    from ..data.datasets import open_dataset
    from ..models import load
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.calibration import calibrate_planes

    dataset = open_dataset(data)
    check_outputs({"--out": out}, inputs=[*dataset_inputs(dataset), prompts], overwrite=overwrite)
    net = load(model, device=device)
    calibration, skipped = calibrate_planes(net, dataset, coverage=coverage, accept=accept, seed=seed, prompts=prompts,
                                            batch_size=batch_size, skip_bad=skip_bad, progress=True)
    calibration.fit.update(data=data, skipped=len(skipped), rows_left_out=dataset.rows_left_out())
    calibration.save(out)
    e, f = calibration.evaluation, calibration.fit
    typer.echo(f"calibrated {net.name} on {f['n_images']} images of {f['n_patients']} patients; "
               f"measured on {e['n_images']} images of {e['n_patients']} other patients")
    typer.echo(f"  temperature {calibration.temperature:.3g}   ECE {100 * e['ece_before']:.2f}% -> {100 * e['ece_after']:.2f}%"
               f"   NLL {e['nll_before']:.3f} -> {e['nll_after']:.3f}   accuracy {100 * e['accuracy']:.1f}%")
    typer.echo(f"  conformal sets: coverage {100 * e['coverage']:.1f}% (target {100 * coverage:.0f}%), "
               f"mean size {e['mean_set_size']:.2f} of {len(calibration.classes)} classes")
    line = f"  standard plane: {100 * e['standard_accepted']:.1f}% of standard images kept (target {100 * accept:.0f}%)"
    if "abstain_auroc" in e:
        line += (f"; non-standard ('other', n={e['n_non_standard']}): AUROC {100 * e['abstain_auroc']:.1f}, "
                 f"{100 * e['non_standard_rejected']:.1f}% rejected")
    typer.echo(line)
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable images (first: {skipped[0][0]}: {skipped[0][1]})", err=True)
    typer.echo(f"calibration -> {out}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
