"""``fetalclip embed`` and ``fetalclip embed-text``: embeddings to ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt file or hf-hub: reference."
MODE_HELP = (
    "Image-tower inference: 'exact' (fused fp32 CPU kernels, equal to plain open_clip within 1e-5), "
    "'int8' (CPU deployment: int8 linear layers, cosine >= 0.999 to exact, ~2x faster) or 'eager' (unmodified). "
    "With --backend onnx: 'int8' runs the exported int8 graph, the others the fp32 graph."
)
BACKEND_HELP = "'torch' (PyTorch, open_clip) or 'onnx' (ONNX Runtime on a `fetalclip export` folder given as --model)."


PARTS_HELP = (
    "Folder of resumable per-chunk parts (part-NNNNNN.npz, run.json, index.json). Under torchrun with more than one "
    "process it defaults to OUT.parts; each rank embeds every N-th chunk and rank 0 joins them into OUT."
)


def embed_command(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, sources, skipped)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files (counted and listed) instead of stopping."),
    device: str = typer.Option("cpu", "--device"),
    mode: str = typer.Option("exact", "--mode", help=MODE_HELP),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    parts: Path = typer.Option(None, "--parts", help=PARTS_HELP),
    chunk_size: int = typer.Option(1024, "--chunk-size", min=1, help="Files per part (with --parts or under torchrun)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write L2-normalised image embeddings with their file names."""
    from ..errors import FetalCLIPError
    from ..export.runtime import check_backend, load_backend
    from ..outputs import RunFolder, check_outputs
    from ..tasks.embed import INDEX_FILE, RUN_FILE, check_mode, embed_files, list_image_files
    from ..torchrun import torchrun_env

    check_mode(mode)
    check_backend(backend)
    files = list_image_files(inputs)
    if not files:
        raise FetalCLIPError(f"no image files found in {', '.join(map(str, inputs))}")
    launch = torchrun_env()
    if launch.distributed and parts is None:
        parts = out.with_name(out.name + ".parts")
    folders = [] if parts is None else [RunFolder(parts, writes=(RUN_FILE, INDEX_FILE), marks=(RUN_FILE,), option="--parts")]
    check_outputs({"--out": out}, inputs=files, folders=folders, overwrite=overwrite)
    precision = "int8" if mode == "int8" else "fp32"
    if parts is None:
        net = load_backend(model, backend, device=device, precision=precision)
        result = embed_files(net, files, batch_size=batch_size, skip_bad=skip_bad, progress=True, mode=mode)
        _write(out, result, net.name, mode, backend)
        return
    from ..tasks.embed import embed_parts, join_parts
    from ..train.distributed import barrier, init_distributed, shutdown_distributed

    context = init_distributed(device)
    try:
        net = load_backend(model, backend, device=context.device, precision=precision)
        computed = embed_parts(net, files, parts, rank=context.rank, world_size=context.world_size, chunk_size=chunk_size,
                               batch_size=batch_size, skip_bad=skip_bad, mode=mode, progress=context.is_main)
        typer.echo(f"rank {context.rank}/{context.world_size}: {len(computed)} parts computed in {parts}", err=True)
        barrier(context)
        if context.is_main:
            _write(out, join_parts(parts, net.embed_dim), net.name, mode, backend)
    finally:
        shutdown_distributed(context)


def _write(out: Path, result, model_name: str, mode: str, backend: str) -> None:
    import numpy as np

    from ..io import save_npz_atomic

    save_npz_atomic(
        out,
        embeddings=result.embeddings,
        sources=np.array(result.sources, dtype=str),
        skipped=np.array([path for path, _ in result.skipped], dtype=str),
        model=np.array(model_name),
        mode=np.array(mode),
        backend=np.array(backend),
    )
    note = "" if backend == "torch" else f", backend {backend}"
    typer.echo(f"embedded {len(result.sources)} images -> {out} (dim {result.embeddings.shape[1]}, mode {mode}{note})")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} unreadable files:", err=True)
        for path, reason in result.skipped:
            typer.echo(f"  {path}: {reason}", err=True)


def embed_text_command(
    texts: list[str] = typer.Argument(..., help="Prompts to embed."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, texts)."),
    device: str = typer.Option("cpu", "--device"),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write L2-normalised text embeddings with their prompts."""
    import numpy as np

    from ..export.runtime import check_backend, load_backend
    from ..io import save_npz_atomic
    from ..outputs import check_outputs
    from ..tasks.embed import embed_texts

    check_backend(backend)
    check_outputs({"--out": out}, overwrite=overwrite)
    net = load_backend(model, backend, device=device)
    embeddings = embed_texts(net, texts)
    save_npz_atomic(out, embeddings=embeddings, texts=np.array(texts, dtype=str), model=np.array(net.name))
    typer.echo(f"embedded {len(texts)} texts -> {out} (dim {embeddings.shape[1]})")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_command)
    app.command("embed-text")(embed_text_command)
