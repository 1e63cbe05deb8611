"""``fetalclip benchmark``: the published table (models x tasks) with CIs, figures and provenance, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

MODEL_HELP = (
    "Model to benchmark, repeatable: registered name, checkpoint folder, published .pt, hf-hub: reference, or an "
    "open_clip baseline (open_clip:ViT-L-14@openai, open_clip:ARCH@/path/weights.pt, clip-vit-l14, biomedclip). "
    "Prefix LABEL= to name its table row."
)
DATA_HELP = "KEY=SPEC, repeatable; keys: planes, brain, ga, seg, clips (e.g. planes=fpdb:DIR, ga=hc18:DIR, planes=shards:DIR)."
OPTION_HELP = (
    "TASK.NAME=VALUE, repeatable: one task option (VALUE as JSON, else text), e.g. probe-planes.runs=5, "
    "segment-hc.channels=[416,256,128,64,32]. --list-tasks shows every option and its default."
)


def parse_task_options(values: list[str]) -> dict[str, dict]:
    """``["probe-planes.runs=5", ...]`` -> ``{"probe-planes": {"runs": 5}}`` (values parsed as JSON when they are)."""
    import json

    from ..errors import FetalCLIPError

    options: dict[str, dict] = {}
    for value in values:
        target, sep, text = value.partition("=")
        task, dot, name = target.partition(".")
        if not sep or not dot or not task or not name:
            raise FetalCLIPError(f"--task-option {value!r}: expected TASK.NAME=VALUE, e.g. probe-planes.runs=5")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        options.setdefault(task, {})[name] = parsed
    return options


def _merge(*layers: dict[str, dict]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for layer in layers:
        for task, values in layer.items():
            merged.setdefault(task, {}).update(values)
    return merged


def benchmark_command(
    models: list[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: list[str] = typer.Option([], "--data", "-d", help=DATA_HELP),
    tasks: str = typer.Option(None, "--tasks", "-t", help="Comma-separated task names (default: all)."),
    out: Path = typer.Option(Path("benchmark-out"), "--out", "-o", help="Output folder (results, report, store, cache)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    n_bootstrap: int = typer.Option(10_000, "--bootstrap", min=1, help="Bootstrap resamples for the CIs."),
    protocol: str = typer.Option("cpu", "--protocol", help="Task settings: cpu (sized for a CPU, the default) or published "
                                 "(the published folds x runs, epochs, augmentation and decoder; hours on a CPU)."),
    task_option: list[str] = typer.Option([], "--task-option", "-O", help=OPTION_HELP),
    cam_method: str = typer.Option(None, "--cam-method", help="gradcam (fast, the cpu default) or scorecam (as published; slow)."),
    cams_per_class: int = typer.Option(None, "--cams-per-class", min=1, help="Images per class with a CAM (default 2)."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads (on a busy 2-core machine 1 is fastest)."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute everything instead of reusing stored results."),
    list_tasks: bool = typer.Option(False, "--list-tasks", help="Print the tasks and their options, then exit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not an earlier benchmark run."),
    held_out_of: Path = typer.Option(None, "--held-out-of", help="A training run folder: score every task on the patients "
                                     "that run never trained on (its split, recomputed from RUN/config.json)."),
) -> None:
    """Benchmark models on the FetalCLIP tasks; writes results.json/.csv/.md and report.html to --out."""
    import json

    from ..bench.harness import parse_data_args, parse_model_args, run_benchmark
    from ..bench.report import markdown_table, write_report
    from ..bench.tasks import default_registry, protocol_options
    from ..errors import FetalCLIPError
    from ..tasks.explain import METHODS

    registry = default_registry()
    base = protocol_options(protocol)
    if list_tasks:
        for spec in registry:
            typer.echo(f"{spec.name:16s} data={spec.data_key:7s} {spec.description}")
            if spec.options_from:
                typer.echo(f"{'':16s} options: those of {spec.options_from}")
                continue
            resolved = spec.resolve_options(base.get(spec.name))
            if resolved:
                typer.echo(f"{'':16s} options ({protocol}): " + ", ".join(f"{k}={json.dumps(v)}" for k, v in resolved.items()))
        raise typer.Exit()
    if cam_method is not None and cam_method not in METHODS:
        raise FetalCLIPError(f"--cam-method {cam_method!r}: use one of {', '.join(METHODS)}")
    from ..bench.harness import CACHE_DIR, STORE_DIR
    from ..bench.report import OUTPUT_FILES
    from ..outputs import RunFolder, check_outputs, spec_inputs

    # A folder with a result store (or the feature cache an interrupted first run leaves) is an earlier
    # benchmark: reusing it is the design. Any other must not already hold the files this run writes.
    check_outputs(folders=[RunFolder(out, writes=(*OUTPUT_FILES, STORE_DIR, CACHE_DIR), marks=(STORE_DIR, CACHE_DIR))],
                  inputs=spec_inputs(data), overwrite=overwrite)
    names = [name.strip() for name in tasks.split(",") if name.strip()] if tasks else None
    cams = {key: value for key, value in (("method", cam_method), ("per_class", cams_per_class)) if value is not None}
    options = _merge(base, {"cams": cams} if cams else {}, parse_task_options(task_option))
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
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
            held_out_of=held_out_of,
        )
    finally:
        torch.set_num_threads(previous_threads)  # in-process callers (tests, the demo) keep their setting
    paths = write_report(run, out)
    typer.echo("")
    typer.echo(markdown_table(run))
    typer.echo("")
    typer.echo(f"{run.computed} computed, {run.reused} reused, {len(run.skipped)} skipped; wrote " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
