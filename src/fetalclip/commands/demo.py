"""``fetalclip demo``: the whole system on a fresh machine, no data or weights needed (see ``fetalclip.demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..demo import DEFAULT_MINUTES

# What a demo writes at the top of its folder, and the names that show an earlier (perhaps interrupted) demo.
DEMO_WRITES = ("data", "run", "benchmark", "results.json", "results.csv", "results.md", "report.html", "demo.json")
DEMO_MARKS = ("demo.json", "data/train", "benchmark/store")  # data/train is the first thing a demo writes


def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the phantom data, the run and the report."),
    minutes: float = typer.Option(DEFAULT_MINUTES, "--minutes", help="Time budget on 2 CPU cores; pretraining gets about 2/3."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's choice)."),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Exit with status 1 unless pretraining meets the verdict (see docs/demo.md)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not an earlier demo run."),
) -> None:
    """Render a phantom, pretrain fetalclip-tiny on it, benchmark it against its random init, write report.html."""
    import torch

    from ..demo import PRETRAINED_LABEL, RANDOM_LABEL, plan_demo, run_demo
    from ..outputs import RunFolder, check_outputs

    # A rerun into an earlier demo folder reuses what is there; any other folder must not hold what it writes.
    check_outputs(folders=[RunFolder(out, writes=DEMO_WRITES, marks=DEMO_MARKS)], overwrite=overwrite)
    plan = plan_demo(minutes, seed=seed)
    if threads:
        torch.set_num_threads(threads)
    typer.echo(
        f"demo plan ({minutes:g} min budget): {plan.train_images + plan.train_head_images} training images, "
        f"{plan.steps} pretraining steps; "
        f"held-out sets of {plan.planes_images} plane images and {plan.head_images} head images"
    )
    result = run_demo(out, plan=plan, echo=typer.echo)
    typer.echo("")
    typer.echo(result.table)
    typer.echo("")
    typer.echo("verdict (ahead / behind only when each value lies outside the other's CI; otherwise a tie):")
    width = max(len(c.task) for c in result.comparisons) if result.comparisons else 10
    for c in result.comparisons:
        arrow = "higher" if c.higher_is_better else "lower"
        need = f"needs: {c.requirement}" if c.requirement else "not judged"
        mark = "ok" if c.passes else "FAILS"
        typer.echo(f"  {c.task:<{width}}  {c.metric} ({arrow} is better): {RANDOM_LABEL} {_with_ci(c.random_init, c.random_ci)}, "
                   f"{PRETRAINED_LABEL} {_with_ci(c.pretrained, c.pretrained_ci)} -> {c.outcome}; {need} [{mark}]"
                   + ("" if c.requirement else f" ({c.reason})"))
    timings = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in result.timings_s.items())
    typer.echo(f"time: {timings}")
    typer.echo(f"report: {result.report_paths['report.html'].resolve()}")
    if not result.passed:
        message = "pretraining does not meet the verdict on: " + ", ".join(result.failing_tasks())
        if check:
            typer.echo(f"error: {message} (something in the chain is wrong, or the budget is too small)", err=True)
            raise typer.Exit(1)
        typer.echo(f"note: {message}")
    else:
        typer.echo("verdict: pretraining is ahead where it must be and behind nowhere it is judged")


def _with_ci(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
