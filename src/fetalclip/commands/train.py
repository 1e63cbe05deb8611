"""``fetalclip train``: contrastive pretraining from a recipe file plus command-line overrides.

The same command runs under torchrun (``torchrun --nproc-per-node N -m fetalclip train ...``); only the main
process prints.
"""

from __future__ import annotations

from pathlib import Path

import typer


def train_command(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, logs, checkpoints, final model/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Recipe: TOML, YAML or JSON (e.g. configs/tiny-cpu.toml)."),
    model: str = typer.Option(None, "--model", "-m", help="Registered architecture (default: the recipe's)."),
    init: str = typer.Option(None, "--init", help="Start from our checkpoint folder or a published-format .pt."),
    data: list[str] = typer.Option(None, "--data", "-d", help="Shard folder or dataset spec (hc18:DIR, fpdb:DIR, csv:FILE...); repeatable."),
    steps: int = typer.Option(None, "--steps", min=1, help="Total optimiser steps."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Global batch per optimiser step."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    save_every: int = typer.Option(None, "--save-every", min=0, help="Steps between resumable checkpoints."),
    eval_every: int = typer.Option(None, "--eval-every", min=0, help="Steps between evaluation hooks."),
    seed: int = typer.Option(None, "--seed"),
    workers: int = typer.Option(None, "--workers", min=0, help="Data loader worker processes per process."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16."),
    loss: str = typer.Option(None, "--loss", help="clip or siglip."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's latest readable checkpoint (a new folder starts fresh)."),
    restart: bool = typer.Option(False, "--restart", help="Start a run folder over; its old run moves to previous-<time>/."),
    overrides: list[str] = typer.Option(None, "--set", help="Any setting as NAME=VALUE (e.g. --set warmup_steps=50); repeatable."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs still written)."),
) -> None:
    """Pretrain (or continue pretraining) a fetalclip model contrastively."""
    import math

    from ..train import make_config, train
    from ..train.config import parse_assignment

    settings = dict(parse_assignment(item) for item in (overrides or []))
    named = {
        "model": model, "init": init, "data": data or None, "steps": steps, "batch_size": batch_size, "lr": lr,
        "save_every": save_every, "eval_every": eval_every, "seed": seed, "workers": workers, "device": device,
        "precision": precision, "loss": loss,
    }
    settings.update({key: value for key, value in named.items() if value is not None})
    if no_progress:
        settings["progress"] = False
    recipe = make_config(config, settings)
    result = train(recipe, out, resume=resume, restart=restart)

    from ..torchrun import torchrun_env

    if not torchrun_env().is_main:
        return
    first = result.losses[0] if result.losses else math.nan
    last = result.losses[-1] if result.losses else math.nan
    typer.echo(f"steps {result.start_step}->{result.end_step}  loss {first:.4f} -> {last:.4f}  "
               f"{result.images_per_s:.1f} images/s  peak memory {result.peak_memory_mb:.0f} MiB")
    for name, value in sorted(result.eval.items()):
        typer.echo(f"  {name:32s} {value:.4f}")
    typer.echo(f"model -> {result.model_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
