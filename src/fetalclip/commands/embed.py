"""``fetalclip embed`` and ``fetalclip embed-text``: embeddings to ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt file or hf-hub: reference."
MODE_HELP = (
    "Image-tower inference: 'exact' (fused fp32 CPU kernels, equal to plain open_clip within 1e-5), "
    "'int8' (CPU deployment: int8 linear layers, cosine >= 0.999 to exact, ~2x faster) or 'eager' (unmodified)."
)


def embed_command(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, sources, skipped)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files (counted and listed) instead of stopping."),
    device: str = typer.Option("cpu", "--device"),
    mode: str = typer.Option("exact", "--mode", help=MODE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write L2-normalised image embeddings with their file names."""
    import numpy as np

    from ..errors import FetalCLIPError
    from ..io import save_npz_atomic
    from ..models import load
    from ..outputs import check_outputs
    from ..tasks.embed import check_mode, embed_files, list_image_files

    check_mode(mode)
    files = list_image_files(inputs)
    if not files:
        raise FetalCLIPError(f"no image files found in {', '.join(map(str, inputs))}")
    check_outputs({"--out": out}, inputs=files, overwrite=overwrite)
    net = load(model, device=device)
    result = embed_files(net, files, batch_size=batch_size, skip_bad=skip_bad, progress=True, mode=mode)
    save_npz_atomic(
        out,
        embeddings=result.embeddings,
        sources=np.array(result.sources, dtype=str),
        skipped=np.array([path for path, _ in result.skipped], dtype=str),
        model=np.array(net.name),
        mode=np.array(mode),
    )
    typer.echo(f"embedded {len(result.sources)} images -> {out} (dim {result.embeddings.shape[1]}, mode {mode})")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} unreadable files:", err=True)
        for path, reason in result.skipped:
            typer.echo(f"  {path}: {reason}", err=True)


def embed_text_command(
    texts: list[str] = typer.Argument(..., help="Prompts to embed."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, texts)."),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write L2-normalised text embeddings with their prompts."""
    import numpy as np

    from ..io import save_npz_atomic
    from ..models import load
    from ..outputs import check_outputs
    from ..tasks.embed import embed_texts

    check_outputs({"--out": out}, overwrite=overwrite)
    net = load(model, device=device)
    embeddings = embed_texts(net, texts)
    save_npz_atomic(out, embeddings=embeddings, texts=np.array(texts, dtype=str), model=np.array(net.name))
    typer.echo(f"embedded {len(texts)} texts -> {out} (dim {embeddings.shape[1]})")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_command)
    app.command("embed-text")(embed_text_command)
