"""``fetalclip probe classify --lora-rank R``: the classify command's LoRA variant (head + image-tower adapters).

Kept beside ``probe.py`` so that module stays one screenful per command: the classify options are checked the
same way, then the images (not cached embeddings) go to ``tasks.probe_lora``, and the report is rendered
like the linear probe's with the adapters' size added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import FetalCLIPError


def lora_classify(*, data: str, model: str, label: str, classes: Optional[str], exclude: Optional[str], test: Optional[str],
                  recipe, rank: int, augment: int, standardize: bool, save_head: Optional[Path], seed: int,
                  out: Optional[Path], device: str, overwrite: bool) -> None:
    """Train a linear head with rank-``rank`` LoRA adapters of the image tower; print and write the report."""
    from ..data.datasets import open_dataset
    from ..io import write_json_atomic
    from ..models import load
    from ..outputs import check_outputs, dataset_inputs
    from ..tasks.probe import labelled_subset
    from ..tasks.probe_lora import LoraProbeSettings, image_set, lora_probe

    for given, option in ((augment, "--augment"), (standardize, "--standardize"), (save_head, "--save-head")):
        if given:  # defined on frozen, cached embeddings; the LoRA probe's encoder changes as it trains
            raise FetalCLIPError(f"{option} does not combine with --lora-rank (the encoder is trained, not cached)")
    recipe.single_point("LoRA probe (--grid is for the frozen probe)")
    settings = LoraProbeSettings(rank=rank)
    settings.lora()  # a bad rank fails before any model loads
    key = "label" if label == "plane" else label
    keep = classes.split(",") if classes else None
    drop = exclude.split(",") if exclude else ()
    dataset = labelled_subset(open_dataset(data), key, keep, drop)
    test_set = labelled_subset(open_dataset(test), key, keep, drop) if test else None
    datasets = [d for d in (dataset, test_set) if d is not None]
    # The output guard, every file of the data as an input, before any model loads (as probe.py's commands do).
    check_outputs({"--out": out}, inputs=[path for d in datasets for path in dataset_inputs(d)], overwrite=overwrite)
    net = load(model, device=device)
    images = image_set(net, dataset, key)
    test_images = image_set(net, test_set, key) if test_set is not None else None
    result = lora_probe(net, images, recipe, settings, test_images, seed=seed, progress=True).report
    left_out = {name: rows for d in datasets for name, rows in d.rows_left_out().items()}
    result.update(data=data, test=test, label=key, provenance={"model": net.name}, rows_left_out=left_out)
    ci, lora = result["macro_f1_ci"], result["lora"]
    typer.echo(f"LoRA probe {net.name} on {data} (rank {lora['rank']}, {lora['trainable_parameters']:,} trainable of "
               f"{lora['encoder_parameters']:,} encoder parameters; {result['heads']} heads, test n={result['n_test']}, "
               f"{result['test_source']})")
    typer.echo(f"  macro F1 {100 * result['macro_f1_mean']:.2f} +- {100 * result['macro_f1_sd']:.2f}  "
               f"CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]")
    for name, row in result["per_class"].items():
        typer.echo(f"  {name:<20} F1 {100 * row['f1_mean']:6.2f} +- {100 * row['f1_sd']:5.2f}  (n={row['support']})")
    if out is not None:
        write_json_atomic(out, result)
        typer.echo(f"results -> {out}")
