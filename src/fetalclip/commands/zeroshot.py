"""``fetalclip zeroshot planes|brain|ga``: the published zero-shot evaluations, exact and fast.

``planes`` and ``brain`` print a per-class table and the macro F1 with its 95% bootstrap CI; ``ga`` writes the
predicted age per image (CSV), the validity rate with its CI, and a scatter plot of predicted age against true
HC over the WHO 2.5-97.5% band (PNG). ``ga --scores`` re-decodes a saved score map without any model, so the
top-k rule can be studied without re-running the encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt file or hf-hub: reference."
DATA_HELP = "Dataset spec: fpdb:DIR, hc18:DIR, csv:FILE, folder:DIR, shards:DIR (fetalclip data pack), sim:N."

zeroshot_app = typer.Typer(help="Zero-shot plane classification and gestational-age estimation.", no_args_is_help=True)


def _classification(
    task: str,
    model: str,
    data: str,
    prompts: Optional[Path],
    distractors: bool,
    out: Optional[Path],
    batch_size: int,
    device: str,
    skip_bad: bool,
    n_bootstrap: int,
    overwrite: bool,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..data.datasets import open_dataset
    from ..models import load
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.zeroshot import load_prompts
    from ..tasks.zeroshot_tasks import ZeroShotBrain, ZeroShotPlanes

    dataset = open_dataset(data)
    check_outputs({"--out": out}, inputs=[*dataset_inputs(dataset), prompts], overwrite=overwrite)
    load_prompts(prompts, task)  # a bad prompt file fails before the model loads
    evaluation = (ZeroShotPlanes if task == "planes" else ZeroShotBrain)(
        {"prompts": prompts, "distractors": distractors, "batch_size": batch_size, "skip_bad": skip_bad}
    )
    net = load(model, device=device)
    result = evaluation.run(net, dataset, progress=True, n_bootstrap=n_bootstrap)

    table = Table("class", "images", "precision", "recall", "F1", title=f"zero-shot {task} ({net.name})")
    for label, scores in result.details["per_class"].items():
        table.add_row(label, str(scores["support"]), *(_percent_text(scores[k]) for k in ("precision", "recall", "f1")))
    Console(width=120).print(table)
    f1 = result.metrics["macro_f1"]
    ci_text = f" [95% CI {f1.ci[0]:.2f}, {f1.ci[1]:.2f}]" if f1.ci else ""
    evaluated = result.details["classes_evaluated"]
    distractor_names = [c for c in result.details["classes_offered"] if c not in evaluated]
    typer.echo(
        f"macro F1 {_percent_text(f1.value)}{ci_text} over {f1.n} images, {len(evaluated)} classes"
        + (f" (distractors offered: {', '.join(distractor_names)})" if distractor_names else "")
    )
    if result.details["excluded"]:
        typer.echo(f"{result.details['excluded']} images without a {task} label were left out")
    _report_skipped(result.skipped)
    if out is not None:
        _write_result(out, result, model=net.name, model_reference=model, data=data, rows_left_out=dataset.rows_left_out())


def _percent_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _write_result(out: Path, result, **context: Any) -> None:
    """The task's result (``TaskResult.to_dict``: metrics, rows, skipped, schema version) with the command's context."""
    from ..io import write_json_atomic

    write_json_atomic(out, {**result.to_dict(), **context})
    typer.echo(f"wrote {out}")


def _report_skipped(skipped: list[dict[str, str]]) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} images:", err=True)
        for item in skipped[:20]:
            typer.echo(f"  {item['source']}: {item['reason']}", err=True)
        if len(skipped) > 20:
            typer.echo(f"  ... and {len(skipped) - 20} more", err=True)


@zeroshot_app.command("planes")
def planes_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSON {class: [prompt, ...]}; default: ours."),
    distractors: bool = typer.Option(True, "--distractors/--no-distractors", help="Offer classes that have no ground truth."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the full result as JSON."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    device: str = typer.Option("cpu", "--device"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (counted and listed)."),
    n_bootstrap: int = typer.Option(10_000, "--n-bootstrap", min=0, help="Bootstrap resamples for the CI (0: none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Five standard planes (abdomen, brain, femur, thorax, cervix), distractor classes offered by default."""
    _classification("planes", model, data, prompts, distractors, out, batch_size, device, skip_bad, n_bootstrap, overwrite)


@zeroshot_app.command("brain")
def brain_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSON {class: [prompt, ...]}; default: ours."),
    distractors: bool = typer.Option(True, "--distractors/--no-distractors", help="Offer classes that have no ground truth."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the full result as JSON."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    device: str = typer.Option("cpu", "--device"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (counted and listed)."),
    n_bootstrap: int = typer.Option(10_000, "--n-bootstrap", min=0, help="Bootstrap resamples for the CI (0: none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Brain sub-planes: trans-thalamic, trans-cerebellum, trans-ventricular."""
    _classification("brain", model, data, prompts, distractors, out, batch_size, device, skip_bad, n_bootstrap, overwrite)


# -- gestational age -----------------------------------------------------------------------------------------
def _load_scores(path: Path) -> dict[str, Any]:
    import numpy as np

    from ..errors import FetalCLIPError

    if not path.is_file():
        raise FetalCLIPError(f"{path}: score file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise FetalCLIPError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [key for key in ("scores", "hc_mm") if key not in arrays]
    if missing:
        raise FetalCLIPError(f"{path}: missing array(s) {', '.join(missing)} (needs scores [N, days] and hc_mm [N])")
    scores, hc = arrays["scores"], arrays["hc_mm"]
    if scores.ndim != 2 or hc.shape != (scores.shape[0],):
        raise FetalCLIPError(f"{path}: scores must be [N, days] and hc_mm [N]; got {scores.shape} and {hc.shape}")
    n = scores.shape[0]
    return {
        "scores": scores,
        "hc_mm": hc.astype(float),
        "sources": [str(s) for s in arrays["sources"]] if "sources" in arrays else [f"row {i}" for i in range(n)],
        "spacing_224": arrays["spacing_224"].astype(float) if "spacing_224" in arrays else np.full(n, np.nan),
        "first_day": int(arrays["first_day"]) if "first_day" in arrays else 98,
    }


def _format_ga(days: float) -> str:
    weeks, rest = divmod(int(days), 7)
    return f"{weeks}w{rest}d"


def _beside(out: Path, suffix: str, role: str) -> Path:
    """The default name of a side output next to ``out``: OUT with ``suffix``, or, when that is OUT itself
    (``--out r.csv``), OUT's stem plus the output's role (``r.per-image.csv``), so it never replaces OUT."""
    candidate = out.with_suffix(suffix)
    return candidate if candidate != out else out.with_name(f"{out.stem}.{role}{suffix}")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..io import write_csv_atomic

    write_csv_atomic(path, list(rows[0]) if rows else ["source"], rows)


@zeroshot_app.command("ga")
def ga_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset spec with pixel spacing: hc18:DIR, csv:FILE or shards:DIR."),
    templates: Optional[Path] = typer.Option(None, "--templates", help="JSON list of templates (or {\"templates\": [...]}); default: ours."),
    top_k: int = typer.Option(15, "--top-k", min=1, help="Median of this many best-scoring days."),
    save_scores: Optional[Path] = typer.Option(None, "--save-scores", help="Write the score map (.npz) for re-decoding."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Re-decode a saved score map instead of running a model."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Result JSON; the CSV and PNG go beside it unless named."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Per-image predictions (default: OUT with .csv;"
                                                                   "OUT_STEM.per-image.csv if OUT is a .csv)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Scatter plot PNG (default: OUT with .png, or OUT_STEM.scatter.png if OUT is a .png)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    device: str = typer.Option("cpu", "--device"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images and images without spacing (listed)."),
    n_bootstrap: int = typer.Option(10_000, "--n-bootstrap", min=0, help="Bootstrap resamples for the CI (0: none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Gestational age from fetal head images: per-image ages, validity rate (VPR) with CI, scatter plot."""
    import numpy as np

    from ..errors import FetalCLIPError
    from ..io import save_npz_atomic
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.gestational_age import GAPredictions
    from ..tasks.zeroshot_tasks import ZeroShotGA

    if out is not None:
        csv_path = csv_path or _beside(out, ".csv", "per-image")
        plot = plot or _beside(out, ".png", "scatter")
    outputs = {"--out": out, "--csv": csv_path, "--plot": plot}
    evaluation = ZeroShotGA({"templates": templates, "top_k": top_k, "batch_size": batch_size, "skip_bad": skip_bad})
    if scores is not None:
        if model is not None or data is not None:
            raise FetalCLIPError("--scores re-decodes a saved map: give it without --model/--data")
        check_outputs(outputs, inputs=[scores], overwrite=overwrite)
        saved = _load_scores(scores)
        predictions = GAPredictions(sources=saved["sources"], spacing_224=saved["spacing_224"], hc_mm=saved["hc_mm"],
                                    scores=saved["scores"], first_day=saved["first_day"])
        result = evaluation.evaluate(predictions, n_bootstrap=n_bootstrap)
        model_name, left_out = None, {}  # the rows were left out when the scores were made
    else:
        if model is None or data is None:
            raise FetalCLIPError("zeroshot ga needs --model and --data (or --scores FILE.npz)")
        from ..data.datasets import open_dataset
        from ..models import load
        from ..tasks.gestational_age import load_templates

        dataset = open_dataset(data)
        left_out = dataset.rows_left_out()
        check_outputs({**outputs, "--save-scores": save_scores}, inputs=[*dataset_inputs(dataset), templates], overwrite=overwrite)
        template_list = load_templates(templates)
        net = load(model, device=device)
        model_name = net.name
        if save_scores is None:
            result = evaluation.run(net, dataset, progress=True, n_bootstrap=n_bootstrap)
        else:  # the score map itself is wanted: predict once, keep it, and judge it with the same task
            predictions = evaluation.predict(net, dataset, progress=True)
            save_npz_atomic(
                save_scores,
                scores=predictions.scores.astype(np.float32),
                hc_mm=predictions.hc_mm,
                sources=np.array(predictions.sources, dtype=str),
                spacing_224=predictions.spacing_224,
                first_day=np.array(predictions.first_day),
                templates=np.array(template_list, dtype=str),
                model=np.array(net.name),
            )
            typer.echo(f"wrote {save_scores}")
            result = evaluation.evaluate(predictions, n_bootstrap=n_bootstrap)

    vpr, rows, hc_range = result.metrics["vpr"], result.rows, result.details["hc_range_mm"]
    if vpr.n:
        ci = f" [95% CI {vpr.ci[0]:.2f}, {vpr.ci[1]:.2f}]" if vpr.ci else ""
        typer.echo(
            f"VPR {vpr.value:.2f}%{ci}: {result.details['n_valid']}/{vpr.n} images with HC in {hc_range[0]:g}-{hc_range[1]:g} mm"
            f" within the WHO 2.5-97.5% band (top-{top_k} median, {len(rows)} images)"
        )
        typer.echo(f"mean |predicted - WHO-median age of true HC|: {result.metrics['mae_days_vs_who_median'].value:.1f} days")
    else:
        typer.echo(f"ages predicted for {len(rows)} images; no VPR: {result.details['not_measured']}")
    _report_skipped(result.skipped)

    if csv_path is not None:
        _write_csv(csv_path, [_csv_row(row) for row in rows])
        typer.echo(f"wrote {csv_path}")
    if plot is not None:
        from ..bench.figures import ga_scatter
        from ..io import write_bytes_atomic

        title = f"zero-shot GA ({model_name or scores.name}): VPR " + ("-" if vpr.value is None else f"{vpr.value:.1f}%")
        hc = np.array([np.nan if r["hc_mm"] is None else r["hc_mm"] for r in rows], dtype=np.float64)
        write_bytes_atomic(plot, ga_scatter([r["pred_ga_days"] for r in rows], hc, title, hc_range=tuple(hc_range)))
        typer.echo(f"wrote {plot}")
    if out is not None:
        _write_result(out, result, model=model_name, model_reference=model, data=data,
                      scores_file=str(scores) if scores else None, csv=str(csv_path) if csv_path else None,
                      plot=str(plot) if plot else None, rows_left_out=left_out)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """One per-image CSV line: the task's row, formatted for people (ages as weeks+days too)."""
    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    return {
        "source": row["source"],
        "spacing_224_mm": number(row["spacing_224_mm"], 4),
        "hc_mm": number(row["hc_mm"], 2),
        "pred_ga_days": row["pred_ga_days"],
        "pred_ga": _format_ga(row["pred_ga_days"]),
        "who_median_ga_days": number(row["who_median_ga_days"], 1),
        "hadlock_ga_days": number(row["hadlock_ga_days"], 1),
        "hc_in_range": int(row["hc_in_range"]),
        "within_who_band": int(row["within_who_band"]),
    }


def register(app: typer.Typer) -> None:
    app.add_typer(zeroshot_app, name="zeroshot")
