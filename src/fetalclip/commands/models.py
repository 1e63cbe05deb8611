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
    merge: Path = typer.Option(None, "--merge", help="LoRA adapter folder (adapter.json + adapter.safetensors) to fold "
                               "into the weights: OUT_DIR is then a plain checkpoint of the adapted model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert a published-format checkpoint into our safetensors folder format (with --merge: base + LoRA adapter)."""
    from ..models import load
    from ..outputs import RunFolder, check_outputs

    sources = []
    for path in [Path(source).expanduser()] + ([Path(merge).expanduser()] if merge else []):
        sources += [path, *(path.iterdir() if path.is_dir() else ())]
    # OUT_DIR is replaced whole (the converter's own rule); the guard adds: never the source, and fail early.
    check_outputs(folders=[RunFolder(out_dir, writes=("model.safetensors", "config.json"), marks=(), option="OUT_DIR")],
                  inputs=sources, overwrite=overwrite)
    model = load(source, model_name=model_name, adapter=merge)
    provenance = {"converted_from": source}
    if merge is not None:
        from ..models.lora import lora_config_of, merge_lora

        provenance["lora"] = {**lora_config_of(model).to_dict(), "adapter": str(merge), "merged": True}
        merge_lora(model)
    model.save(out_dir, provenance=provenance, overwrite=overwrite)
    typer.echo(f"wrote {out_dir} ({model.name}{', adapter merged' if merge else ''}, "
               f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


def register(app: typer.Typer) -> None:
    app.command("list-models")(list_models_command)
    app.command("convert")(convert_command)
