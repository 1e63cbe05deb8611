"""``fetalclip export``: ONNX graphs of both towers, the zero-shot heads and a manifest with measured parity."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt file or hf-hub: reference."
SPACINGS_HELP = (
    "224-input pixel spacings (mm) whose GA text bank is precomputed: start:stop:step or a comma list; "
    "'' for none (a deployment then computes them with the text graph). Costs text-tower time: 45 s for two "
    "spacings of the published architecture on one CPU thread."
)


def export_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder to create (image.onnx, text.onnx, heads.npz, manifest.json)."),
    int8: bool = typer.Option(False, "--int8", help="Also write dynamically quantised int8 graphs (image.int8.onnx, text.int8.onnx)."),
    opset: int = typer.Option(17, "--opset", min=14, help="ONNX opset of the graphs."),
    ga_spacings: str = typer.Option("0.10:1.50:0.01", "--ga-spacings", help=SPACINGS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Export a model for ONNX Runtime; the parity with PyTorch is measured and stored in the manifest."""
    from ..export.heads import parse_spacings
    from ..export.manifest import GRAPH_FILES, HEADS_NAME, MANIFEST_NAME
    from ..export.onnx_export import export_onnx
    from ..export.runtime import require_onnxruntime
    from ..models import load
    from ..outputs import RunFolder, check_outputs

    require_onnxruntime()
    spacings = parse_spacings(ga_spacings)
    names = (*GRAPH_FILES.values(), HEADS_NAME, MANIFEST_NAME)
    check_outputs(folders=[RunFolder(out, writes=names, marks=())], overwrite=overwrite)
    net = load(model)
    manifest = export_onnx(net, out, opset=opset, int8=int8, overwrite=overwrite, ga_spacings=spacings,
                           log=lambda message: typer.echo(message, err=True))
    typer.echo(f"wrote {out} ({net.name}, opset {opset}{', fp32 + int8' if int8 else ', fp32'})")
    for line in parity_lines(manifest["parity"]):
        typer.echo(line)


def parity_lines(parity: dict) -> list[str]:
    """One line per exported precision: the figures a user checks before deploying."""
    lines = [f"parity on {parity['inputs']} and {parity['prompts']} prompts:"]
    fp32 = parity["fp32"]
    lines.append(f"  fp32  image max|d| {fp32['image_max_abs_normalized']:.2e}  text max|d| {fp32['text_max_abs_normalized']:.2e}"
                 f"  (normalised; tolerance {fp32['tolerance']:.0e}) {'ok' if fp32['passed'] else 'NOT WITHIN TOLERANCE'}")
    if "int8" in parity:
        q = parity["int8"]
        lines.append(f"  int8  image cosine >= {q['image_min_cosine_to_fp32']:.5f}  text cosine >= {q['text_min_cosine_to_fp32']:.5f}"
                     f"  same plane {q['same_plane']:.0%}  {'ok' if q['passed'] else 'BELOW TARGET (cosine 0.999, same plane)'}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
