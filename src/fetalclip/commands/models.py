"""``fetalclip list-models`` and ``fetalclip convert``."""

from __future__ import annotations

from pathlib import Path

import typer


def list_models_command() -> None:
    """Print the registered models with their parameter counts."""
    from rich.console import Console
    from rich.table import Table

    from ..models import count_parameters, get_model_config, list_models

    table = Table("model", "parameters", "vision", "text", "embed dim", "context", "description")
    for name in list_models():
        config, counts = get_model_config(name), count_parameters(name)
        table.add_row(
            name,
            f"{counts['total'] / 1e6:.1f}M",
            f"{counts['vision'] / 1e6:.1f}M",
            f"{counts['text'] / 1e6:.1f}M",
            str(config["embed_dim"]),
            str(config["text_cfg"].get("context_length", 77)),
            config.get("description", ""),
        )
    Console(width=200).print(table)


def convert_command(
    source: str = typer.Argument(..., help="Published FetalCLIP_weights.pt, hf-hub: reference or checkpoint folder."),
    out_dir: Path = typer.Argument(..., help="Folder to write (model.safetensors + config.json)."),
    model_name: str = typer.Option(None, "--model-name", help="Architecture, when the shapes alone do not tell."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert a published-format checkpoint into our safetensors folder format."""
    from ..models import load
    from ..outputs import RunFolder, check_outputs

    source_path = Path(source).expanduser()
    sources = [source_path, *(source_path.iterdir() if source_path.is_dir() else ())]
    # OUT_DIR is replaced whole (the converter's own rule); the guard adds: never the source, and fail early.
    check_outputs(folders=[RunFolder(out_dir, writes=("model.safetensors", "config.json"), marks=(), option="OUT_DIR")],
                  inputs=sources, overwrite=overwrite)
    model = load(source, model_name=model_name)
    model.save(out_dir, provenance={"converted_from": source}, overwrite=overwrite)
    typer.echo(f"wrote {out_dir} ({model.name}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


def register(app: typer.Typer) -> None:
    app.command("list-models")(list_models_command)
    app.command("convert")(convert_command)
