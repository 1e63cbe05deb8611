"""``fetalclip sim``: export a synthetic phantom set as PNG images, PNG label masks and a ``csv:`` manifest,
or (``--cine``) four-chamber cine loops of normal hearts and hearts with a defect, one frame folder per clip,
or (``--sweep``) probe sweeps through a standard plane whose best frame is known."""

from __future__ import annotations

from pathlib import Path

import typer


def sim_command(
    n: int = typer.Option(..., "--n", min=1, help="Number of images (of clips with --cine)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, masks/, manifest.csv, sim.json)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed; image i depends only on (seed, i)."),
    size: int = typer.Option(256, "--size", min=64, help="Image width in pixels (height is 3/4 of it)."),
    classes: str = typer.Option(
        "", "--classes", help="Comma-separated classes (brain, abdomen, femur, thorax, cervix, other, or brain planes)."
    ),
    per_patient: int = typer.Option(4, "--per-patient", min=1, help="Images per synthetic patient (same age)."),
    ga: str = typer.Option("", "--ga", help="Gestational age range in whole weeks, A-B (default 14-38; cine 18-38)."),
    overlay: float = typer.Option(
        0.5, "--overlay", min=0.0, max=1.0, help="Probability of burned-in text and calipers."
    ),
    chd: float = typer.Option(
        0.0, "--chd", min=0.0, max=1.0,
        help="Share of patients with a heart defect, shown in their thorax views and named in those captions.",
    ),
    cine: bool = typer.Option(False, "--cine", help="Render --n four-chamber cine clips (labels chd / normal) instead."),
    frames: int = typer.Option(16, "--frames", min=2, help="Frames per cine clip or sweep."),
    defect: str = typer.Option("mixed", "--defect", help="Cine defects: hlhs, vsd or mixed."),
    clips_per_patient: int = typer.Option(2, "--clips-per-patient", min=1, help="Cine clips per synthetic patient."),
    sweep: bool = typer.Option(False, "--sweep", help="Render --n probe sweeps through --plane (best frame known) instead."),
    plane: str = typer.Option("brain", "--plane", help="The standard plane a --sweep passes through."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not an earlier sim export."),
) -> None:
    """Render a phantom set that every command reads as csv:OUT/manifest.csv."""
    from ..errors import FetalCLIPError
    from ..outputs import RunFolder, check_outputs
    from ..progress import progress_bar
    from ..sim.dataset import parse_sim_spec, write_phantom

    age = f",ga={ga}" if ga.strip() else ""
    # An earlier export of the same kind (its info file, or the first file of an interrupted one) is
    # re-rendered in place, as it always was; any other folder must not already hold what an export writes.
    if cine and sweep:
        raise FetalCLIPError("--cine and --sweep exclude each other")
    if cine:
        info, media, first = "cine.json", ("clips",), "clips/000000/000.png"
    elif sweep:
        info, media, first = "sweep.json", ("sweeps",), "sweeps/000000/000.png"
    else:
        info, media, first = "sim.json", ("images", "masks"), "images/000000.png"
    check_outputs(folders=[RunFolder(out, writes=(*media, "manifest.csv", info), marks=(info, first))], overwrite=overwrite)
    if sweep:
        from ..sim.sweep import SweepConfig, write_sweeps

        try:
            config = SweepConfig(seed=seed, size=size, frames=frames, plane=plane)
        except ValueError as exc:
            raise FetalCLIPError(f"--sweep: {exc}") from None
        summary = write_sweeps(n, config, out, progress=lambda it: progress_bar(it, total=n, desc="sweeps", unit="sweep"))
        typer.echo(f"{n} sweeps of {frames} frames through the {plane} plane (best frame in manifest.csv)")
        typer.echo(f"wrote {out / 'manifest.csv'} (read it as {summary['spec']}) and {out / 'sweep.json'}")
        return
    if cine:
        from ..sim.cine import parse_cine_spec, write_cine

        count, config = parse_cine_spec(f"{n},seed={seed},size={size},frames={frames},defect={defect},"
                                        f"clips_per_patient={clips_per_patient},overlay={overlay}{age}")
        summary = write_cine(count, config, out, progress=lambda it: progress_bar(it, total=count, desc="cine", unit="clip"))
        _print_summary(summary, ("heart", "clips"), out / "cine.json", f", {frames} frames each")
        return
    spec = f"{n},seed={seed},size={size},per_patient={per_patient},overlay={overlay},chd={chd}{age}"
    if classes.strip():
        spec += ",classes=" + "+".join(c.strip() for c in classes.split(",") if c.strip())
    count, config = parse_sim_spec(spec)
    summary = write_phantom(count, config, out, progress=lambda it: progress_bar(it, total=count, desc="phantom", unit="img"))
    _print_summary(summary, ("view", "images"), out / "sim.json")


def _print_summary(summary: dict, columns: tuple[str, str], info: Path, detail: str = "") -> None:
    """The set's counts per kind, its total and where it was written."""
    typer.echo(f"{columns[0]:<20} {columns[1]:>6}")
    for kind, number in summary["counts"].items():
        typer.echo(f"{kind:<20} {number:>6}")
    typer.echo(f"{'total':<20} {summary['n']:>6}  ({summary['patients']} patients{detail})")
    typer.echo(f"wrote {info.parent / 'manifest.csv'} (read it as {summary['spec']}) and {info}")


def register(app: typer.Typer) -> None:
    app.command("sim")(sim_command)
