"""``fetalclip benchmark``: the published table (models x tasks) with CIs, figures and provenance, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

MODEL_HELP = (
    "Model to benchmark, repeatable: registered name, checkpoint folder, published .pt, hf-hub: reference, or an "
    "open_clip baseline (open_clip:ViT-L-14@openai, open_clip:ARCH@/path/weights.pt, clip-vit-l14, biomedclip). "
    "Prefix LABEL= to name its table row."
)
DATA_HELP = "KEY=SPEC, repeatable; keys: planes, brain, ga, seg, clips (e.g. planes=fpdb:DIR, ga=hc18:DIR)."


def benchmark_command(
    models: list[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: list[str] = typer.Option([], "--data", "-d", help=DATA_HELP),
    tasks: str = typer.Option(None, "--tasks", "-t", help="Comma-separated task names (default: all)."),
    out: Path = typer.Option(Path("benchmark-out"), "--out", "-o", help="Output folder (results, report, store, cache)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    n_bootstrap: int = typer.Option(10_000, "--bootstrap", min=1, help="Bootstrap resamples for the CIs."),
    cam_method: str = typer.Option("gradcam", "--cam-method", help="gradcam (fast) or scorecam (as published; slow)."),
    cams_per_class: int = typer.Option(2, "--cams-per-class", min=1),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute everything instead of reusing stored results."),
    list_tasks: bool = typer.Option(False, "--list-tasks", help="Print the tasks and exit."),
) -> None:
    """Benchmark models on the FetalCLIP tasks; writes results.json/.csv/.md and report.html to --out."""
    from ..bench.harness import parse_data_args, parse_model_args, run_benchmark
    from ..bench.report import markdown_table, write_report
    from ..bench.tasks import default_registry
    from ..tasks.explain import METHODS
    from ..errors import FetalCLIPError

    registry = default_registry()
    if list_tasks:
        for spec in registry:
            typer.echo(f"{spec.name:16s} data={spec.data_key:7s} {spec.description}")
        raise typer.Exit()
    if cam_method not in METHODS:
        raise FetalCLIPError(f"--cam-method {cam_method!r}: use one of {', '.join(METHODS)}")
    names = [name.strip() for name in tasks.split(",") if name.strip()] if tasks else None
    options = {"cams": {"method": cam_method, "per_class": cams_per_class}}
    run = run_benchmark(
        parse_model_args(models),
        parse_data_args(data),
        out,
        names,
        seed=seed,
        device=device,
        n_bootstrap=n_bootstrap,
        options=options,
        registry=registry,
        fresh=fresh,
        echo=typer.echo,
    )
    paths = write_report(run, out)
    typer.echo("")
    typer.echo(markdown_table(run))
    typer.echo("")
    typer.echo(f"{run.computed} computed, {run.reused} reused, {len(run.skipped)} skipped; wrote " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
