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
DATA_HELP = "Dataset spec: fpdb:DIR, hc18:DIR, csv:FILE, folder:DIR."

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
    from ..io import write_json_atomic
    from ..models import load
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.zeroshot import load_prompts, named_metrics, predict, report

    dataset = open_dataset(data)
    check_outputs({"--out": out}, inputs=[*dataset_inputs(dataset), prompts], overwrite=overwrite)
    prompt_set = load_prompts(prompts, task)
    net = load(model, device=device)
    predictions = predict(net, dataset, task, prompt_set, distractors, batch_size=batch_size, skip_bad=skip_bad, progress=True)
    result = report(predictions, n_bootstrap=n_bootstrap)
    metrics = named_metrics(task, result)

    table = Table("class", "images", "precision", "recall", "F1", title=f"zero-shot {task} ({net.name})")
    for label, scores in result["per_class"].items():
        table.add_row(label, str(scores["support"]), *(f"{100 * scores[k]:.2f}" for k in ("precision", "recall", "f1")))
    console = Console(width=120)
    console.print(table)
    ci = result.get("macro_f1_ci")
    ci_text = f" [95% CI {100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
    distractor_names = [c for c in predictions.classnames if c not in result["eval_labels"]]
    typer.echo(
        f"macro F1 {100 * result['macro_f1']:.2f}{ci_text} over {result['n']} images, {len(result['eval_labels'])} classes"
        + (f" (distractors offered: {', '.join(distractor_names)})" if distractor_names else "")
    )
    if predictions.excluded:
        typer.echo(f"{predictions.excluded} images without a {task} label were left out")
    _report_skipped(predictions.skipped)
    if out is not None:
        write_json_atomic(
            out,
            {
                "task": task,
                "model": net.name,
                "model_reference": model,
                "data": data,
                "prompts": str(prompts) if prompts else "packaged",
                "classes_offered": predictions.classnames,
                "rows_left_out": dataset.rows_left_out(),
                "metrics": metrics,
                "report": result,
                "excluded": predictions.excluded,
                "skipped": [{"source": s, "reason": r} for s, r in predictions.skipped],
                "predictions": [
                    {"source": s, "true": t, "pred": p} for s, t, p in zip(predictions.sources, predictions.y_true, predictions.y_pred)
                ],
            },
        )
        typer.echo(f"wrote {out}")


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} images:", err=True)
        for source, reason in skipped[:20]:
            typer.echo(f"  {source}: {reason}", err=True)
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


def _write_plot(path: Path, pred_days, hc_mm, valid, hc_range, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..growth import who_hc
    from ..io import atomic_path

    days = np.linspace(14 * 7, 40 * 7, 400)  # the ages the WHO study measured
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ax.fill_between(days / 7, who_hc(days, 0.025), who_hc(days, 0.975), color="tab:blue", alpha=0.15, label="WHO 2.5-97.5%")
    ax.plot(days / 7, who_hc(days, 0.5), color="tab:blue", lw=1, label="WHO median")
    in_range = np.isfinite(hc_mm) & (hc_mm >= hc_range[0]) & (hc_mm <= hc_range[1])
    weeks = np.asarray(pred_days, dtype=float) / 7
    for mask, colour, label in (
        (in_range & valid, "tab:green", "within band"),
        (in_range & ~valid, "tab:red", "outside band"),
        (np.isfinite(hc_mm) & ~in_range, "0.6", f"HC outside {hc_range[0]:g}-{hc_range[1]:g} mm (not scored)"),
    ):
        if mask.any():
            ax.scatter(weeks[mask], hc_mm[mask], s=10, color=colour, label=f"{label} ({int(mask.sum())})", zorder=3)
    ax.set_xlabel("predicted gestational age (weeks)")
    ax.set_ylabel("true head circumference (mm)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


@zeroshot_app.command("ga")
def ga_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset spec with pixel spacing: hc18:DIR or csv:FILE."),
    templates: Optional[Path] = typer.Option(None, "--templates", help="JSON list of templates (or {\"templates\": [...]}); default: ours."),
    top_k: int = typer.Option(15, "--top-k", min=1, help="Median of this many best-scoring days."),
    save_scores: Optional[Path] = typer.Option(None, "--save-scores", help="Write the score map (.npz) for re-decoding."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Re-decode a saved score map instead of running a model."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Result JSON; the CSV and PNG go beside it unless named."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Per-image predictions (default: OUT with .csv, or OUT_STEM.per-image.csv if OUT is a .csv)."),
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
    from ..growth import ga_from_hc, hadlock_ga_from_hc
    from ..io import save_npz_atomic, write_json_atomic
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.gestational_age import decode_top_k_median, ga_metrics, in_band

    if out is not None:
        csv_path = csv_path or _beside(out, ".csv", "per-image")
        plot = plot or _beside(out, ".png", "scatter")
    outputs = {"--out": out, "--csv": csv_path, "--plot": plot}
    if scores is not None:
        if model is not None or data is not None:
            raise FetalCLIPError("--scores re-decodes a saved map: give it without --model/--data")
        check_outputs(outputs, inputs=[scores], overwrite=overwrite)
        saved = _load_scores(scores)
        model_name, skipped, left_out = None, [], {}  # the rows were left out when the scores were made
    else:
        if model is None or data is None:
            raise FetalCLIPError("zeroshot ga needs --model and --data (or --scores FILE.npz)")
        from ..data.datasets import open_dataset
        from ..models import load
        from ..tasks.gestational_age import load_templates, predict_ga

        dataset = open_dataset(data)
        left_out = dataset.rows_left_out()
        check_outputs({**outputs, "--save-scores": save_scores}, inputs=[*dataset_inputs(dataset), templates], overwrite=overwrite)
        template_list = load_templates(templates)
        net = load(model, device=device)
        predictions = predict_ga(net, dataset, template_list, batch_size=batch_size, skip_bad=skip_bad, progress=True)
        saved = {
            "scores": predictions.scores,
            "hc_mm": predictions.hc_mm,
            "sources": predictions.sources,
            "spacing_224": predictions.spacing_224,
            "first_day": predictions.first_day,
        }
        model_name, skipped = net.name, predictions.skipped
        if save_scores is not None:
            save_npz_atomic(
                save_scores,
                scores=saved["scores"].astype(np.float32),
                hc_mm=saved["hc_mm"],
                sources=np.array(saved["sources"], dtype=str),
                spacing_224=saved["spacing_224"],
                first_day=np.array(saved["first_day"]),
                templates=np.array(template_list, dtype=str),
                model=np.array(net.name),
            )
            typer.echo(f"wrote {save_scores}")

    if len(saved["scores"]) == 0:
        raise FetalCLIPError("zeroshot ga: no images were scored")
    if top_k > saved["scores"].shape[1]:
        raise FetalCLIPError(f"--top-k {top_k} exceeds the {saved['scores'].shape[1]} days scored")
    hc_range = (100.0, 342.0)
    pred = decode_top_k_median(saved["scores"], top_k, saved["first_day"])
    hc = saved["hc_mm"]
    metrics = ga_metrics(pred, hc, hc_range=hc_range, n_bootstrap=n_bootstrap)
    valid = in_band(pred, hc)
    in_range = np.isfinite(hc) & (hc >= hc_range[0]) & (hc <= hc_range[1])

    ci = f" [95% CI {metrics['zeroshot/ga/vpr_ci_low']:.2f}, {metrics['zeroshot/ga/vpr_ci_high']:.2f}]" if n_bootstrap else ""
    typer.echo(
        f"VPR {metrics['zeroshot/ga/vpr']:.2f}%{ci}: {int(metrics['zeroshot/ga/n_valid'])}/{int(metrics['zeroshot/ga/n_evaluated'])}"
        f" images with HC in {hc_range[0]:g}-{hc_range[1]:g} mm within the WHO 2.5-97.5% band (top-{top_k} median, {len(pred)} images)"
    )
    typer.echo(f"mean |predicted - WHO-median age of true HC|: {metrics['zeroshot/ga/mae_days_vs_who_median']:.1f} days")
    _report_skipped(skipped)

    if csv_path is not None:
        who_median = ga_from_hc(hc)
        hadlock = hadlock_ga_from_hc(hc)
        rows = [
            {
                "source": saved["sources"][i],
                "spacing_224_mm": f"{saved['spacing_224'][i]:.4f}",
                "hc_mm": f"{hc[i]:.2f}",
                "pred_ga_days": int(pred[i]),
                "pred_ga": _format_ga(pred[i]),
                "who_median_ga_days": f"{who_median[i]:.1f}" if np.isfinite(hc[i]) else "",
                "hadlock_ga_days": f"{hadlock[i]:.1f}" if np.isfinite(hc[i]) else "",
                "hc_in_range": int(in_range[i]),
                "within_who_band": int(valid[i]),
            }
            for i in range(len(pred))
        ]
        _write_csv(csv_path, rows)
        typer.echo(f"wrote {csv_path}")
    if plot is not None:
        title = f"zero-shot GA ({model_name or scores.name}): VPR {metrics['zeroshot/ga/vpr']:.1f}%"
        _write_plot(plot, pred, hc, valid, hc_range, title)
        typer.echo(f"wrote {plot}")
    if out is not None:
        write_json_atomic(
            out,
            {
                "task": "ga",
                "model": model_name,
                "model_reference": model,
                "data": data,
                "scores_file": str(scores) if scores else None,
                "templates": str(templates) if templates else "packaged",
                "top_k": top_k,
                "first_day": saved["first_day"],
                "hc_range_mm": list(hc_range),
                "metrics": metrics,
                "csv": str(csv_path) if csv_path else None,
                "plot": str(plot) if plot else None,
                "skipped": [{"source": s, "reason": r} for s, r in skipped],
                "rows_left_out": left_out,
            },
        )
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(zeroshot_app, name="zeroshot")
