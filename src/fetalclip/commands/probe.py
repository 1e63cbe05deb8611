"""``fetalclip probe classify|fewshot|clips|segment``: frozen-encoder probes with cached features.

The commands only open data, build one ``ProbeRecipe`` from their options (checked before any model loads),
call the probe runners of ``fetalclip.tasks`` and render what comes back; ``--save-head`` keeps the trained head
(``tasks.heads``) for prediction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt file or hf-hub: reference."
CACHE_HELP = "Feature cache folder ('none' disables it). Default: $FETALCLIP_CACHE or ~/.cache/fetalclip/features."
SAVE_HEAD_HELP = ("Keep the head with the lowest validation loss as one .safetensors file (bound to this encoder's "
                  "weights), for prediction.")

probe_app = typer.Typer(help="Frozen-encoder probes: linear, few-shot, clip-level detection, segmentation.", no_args_is_help=True)


def cache_root(cache: Optional[str]) -> Optional[Path]:
    if cache and cache.lower() == "none":
        return None
    if cache:
        return Path(cache).expanduser()
    return Path(os.environ.get("FETALCLIP_CACHE", Path.home() / ".cache" / "fetalclip" / "features")).expanduser()


def parse_grid(grid: Optional[str], lr: float, wd: float) -> list[tuple[float, float]]:
    """``"3e-4:0.01,1e-3:0.01"`` -> [(3e-4, 0.01), (1e-3, 0.01)]; absent -> [(lr, wd)]."""
    from ..errors import FetalCLIPError

    if not grid:
        return [(lr, wd)]
    points = []
    for item in grid.split(","):
        try:
            a, b = item.split(":")
            points.append((float(a), float(b)))
        except ValueError:
            raise FetalCLIPError(f"--grid item {item!r}: expected LR:WEIGHT_DECAY") from None
    return points


def parse_ints(text: str, what: str) -> list[int]:
    from ..errors import FetalCLIPError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FetalCLIPError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _setup(model: str, cache: Optional[str], device: str, batch_size: int, skip_bad: bool):
    from ..models import load
    from ..tasks.features import FeatureCache

    net = load(model, device=device)
    return net, FeatureCache(net, cache_root(cache), batch_size=batch_size, progress=True, skip_bad=skip_bad)


def _fetch(cache, dataset, fetch):
    """Run ``fetch`` over ``dataset``; with --skip-bad, unreadable records are dropped and reported."""
    from ..tasks.features import drop_unreadable

    kept, value = drop_unreadable(cache, dataset, fetch)
    if len(kept) < len(dataset):
        typer.echo(f"skipped {len(dataset) - len(kept)} unreadable images of {dataset.name}", err=True)
    return kept, value


def _write(out: Optional[Path], result: dict) -> None:
    from ..io import write_json_atomic

    if out is not None:
        write_json_atomic(out, result)
        typer.echo(f"results -> {out}")


def _guard(outputs: dict, datasets: list, overwrite: bool) -> None:
    """The output guard (``fetalclip.outputs``) with every file of ``datasets`` as an input; before any model loads."""
    from ..outputs import check_outputs, dataset_inputs

    check_outputs(outputs, inputs=[path for dataset in datasets if dataset is not None for path in dataset_inputs(dataset)],
                  overwrite=overwrite)


def _labelled_inputs(model, cache, device, encode_batch, skip_bad, data, test, label, classes, exclude, augment, seed,
                     outputs, overwrite):
    """Model, feature cache, label key and the (train, external test) probe data shared by classify and fewshot."""
    from ..data.datasets import open_dataset
    from ..tasks.features import AugmentSpec
    from ..tasks.probe import labelled_subset, probe_data

    key = "label" if label == "plane" else label
    keep = classes.split(",") if classes else None
    drop = exclude.split(",") if exclude else ()
    dataset = labelled_subset(open_dataset(data), key, keep, drop)
    test_set = labelled_subset(open_dataset(test), key, keep, drop) if test else None
    _guard(outputs, [dataset, test_set], overwrite)
    net, feature_cache = _setup(model, cache, device, encode_batch, skip_bad)
    spec = AugmentSpec(copies=augment, seed=seed) if augment else None
    _, train_data = _fetch(feature_cache, dataset, lambda d: probe_data(feature_cache, d, key, spec))
    test_data = None
    if test_set is not None:
        _, test_data = _fetch(feature_cache, test_set, lambda d: probe_data(feature_cache, d, key))
    return net, feature_cache, key, train_data, test_data, _left_out(dataset, test_set)


def _left_out(*datasets) -> dict:
    """Rows each dataset left out when it was opened (missing files, repeated rows), for the JSON result."""
    return {name: rows for dataset in datasets if dataset is not None for name, rows in dataset.rows_left_out().items()}


def _provenance(net, cache, **extra) -> dict:
    return {"model": net.name, "model_fingerprint": cache.fingerprint, "encoded_this_run": cache.encoded, **extra}


def _model_reference(model: str) -> str:
    """How to load the model again: its registered name, or the resolved path of a checkpoint."""
    return model if not Path(model).expanduser().exists() else str(Path(model).expanduser().resolve())


def _save_head(path: Optional[Path], trained, *, name: str, input: str, classes, net, cache, embed_dim: int,
               frames: Optional[int] = None, **info) -> None:
    """Write the probe's best head to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    from ..tasks.heads import head_from_probe, save_head

    head = head_from_probe(trained, name=name, input=input, classes=classes, encoder_name=net.name,
                           fingerprint=cache.fingerprint, embed_dim=embed_dim, frames=frames, info=info)
    save_head(head, path)
    typer.echo(f"head {name!r} -> {path}")


# -- classify ----------------------------------------------------------------------------------------------------
def classify_command(
    data: str = typer.Option(..., "--data", "-d", help="Dataset spec (fpdb:DIR, csv:FILE, folder:DIR, ...)."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    label: str = typer.Option("plane", "--label", help="Record field to predict: plane (= label), brain_plane, ..."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated classes to keep (default: all)."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Comma-separated classes to drop."),
    test: Optional[str] = typer.Option(None, "--test", help="External test set spec (train/val on --data alone)."),
    folds: int = typer.Option(5, "--folds", min=1),
    runs: int = typer.Option(5, "--runs", min=1),
    epochs: int = typer.Option(50, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    weight_decay: float = typer.Option(0.01, "--wd"),
    grid: Optional[str] = typer.Option(None, "--grid", help="LR:WD pairs trained together, e.g. 3e-4:0.01,1e-3:0.01."),
    augment: int = typer.Option(0, "--augment", min=0, help="Offline augmented copies per training image (published: 5)."),
    standardize: bool = typer.Option(False, "--standardize", help="z-score features on the training rows (not published)."),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[str] = typer.Option(None, "--cache", help=CACHE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Result JSON."),
    save_head: Optional[Path] = typer.Option(None, "--save-head", help=SAVE_HEAD_HELP),
    head_name: Optional[str] = typer.Option(None, "--head-name", help="Name of the saved head (default: the --label field)."),
    encode_batch: int = typer.Option(32, "--encode-batch", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    lora_rank: int = typer.Option(0, "--lora-rank", min=0, help="Train LoRA adapters of this rank in the image tower "
                                  "together with the head (0: frozen encoder, the linear probe)."),
) -> None:
    """Linear probe: patient-level folds x runs, macro F1 (mean, SD, CI) and per-class F1 on a held-out test split."""
    from ..tasks.probe import ProbeRecipe, linear_probe

    recipe = ProbeRecipe(lr=lr, weight_decay=weight_decay, grid=parse_grid(grid, lr, weight_decay), epochs=epochs,
                         batch_size=batch_size, folds=folds, runs=runs, standardize=standardize)
    if lora_rank:
        from .probe_lora import lora_classify

        return lora_classify(data=data, model=model, label=label, classes=classes, exclude=exclude, test=test, recipe=recipe,
                             rank=lora_rank, augment=augment, standardize=standardize, save_head=save_head, seed=seed,
                             out=out, device=device, overwrite=overwrite)
    net, feature_cache, key, train_data, test_data, left_out = _labelled_inputs(
        model, cache, device, encode_batch, skip_bad, data, test, label, classes, exclude, augment, seed,
        {"--out": out, "--save-head": save_head}, overwrite,
    )
    run = linear_probe(train_data, recipe, test_data, seed=seed, progress=True)
    result = run.report
    result.update(data=data, test=test, label=key, provenance=_provenance(net, feature_cache), rows_left_out=left_out)
    ci = result["macro_f1_ci"]
    typer.echo(f"linear probe {net.name} on {data} ({result['heads']} heads, test n={result['n_test']}, {result['test_source']})")
    typer.echo(f"  macro F1 {100 * result['macro_f1_mean']:.2f} +- {100 * result['macro_f1_sd']:.2f}  CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
               f"  (lr {result['chosen']['lr']:g}, wd {result['chosen']['weight_decay']:g})")
    for name, row in result["per_class"].items():
        typer.echo(f"  {name:<20} F1 {100 * row['f1_mean']:6.2f} +- {100 * row['f1_sd']:5.2f}  (n={row['support']})")
    typer.echo(f"  encoded {feature_cache.encoded} images this run")
    _save_head(save_head, run.head, name=head_name or label, input="image", classes=result["classes"], net=net,
               cache=feature_cache, embed_dim=train_data.x.shape[1], model=_model_reference(model), data=data, label=key,
               recipe=recipe.to_dict(), augment=augment, seed=seed)
    _write(out, result)


# -- few-shot ----------------------------------------------------------------------------------------------------
FEWSHOT_FILES = ("fewshot.csv", "fewshot.json", "fewshot.png")


def fewshot_command(
    data: str = typer.Option(..., "--data", "-d"),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    label: str = typer.Option("plane", "--label"),
    classes: Optional[str] = typer.Option(None, "--classes"),
    exclude: Optional[str] = typer.Option(None, "--exclude"),
    test: Optional[str] = typer.Option(None, "--test", help="External test set spec."),
    sizes: str = typer.Option("2,4,8,16,32,64", "--sizes", help="Patients for training (as many again validate)."),
    support_sets: int = typer.Option(5, "--support-sets", min=1),
    runs: int = typer.Option(5, "--runs", min=1),
    epochs: int = typer.Option(100, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    weight_decay: float = typer.Option(0.01, "--wd"),
    augment: int = typer.Option(0, "--augment", min=0, help="Offline augmented copies per training image (published: 10)."),
    standardize: bool = typer.Option(False, "--standardize"),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[str] = typer.Option(None, "--cache", help=CACHE_HELP),
    out_dir: Path = typer.Option(Path("fewshot-out"), "--out-dir", "-o", help="Folder for fewshot.json, .csv and .png."),
    encode_batch: int = typer.Option(32, "--encode-batch", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Few-shot curve: macro F1 against N labelled patients (N more validate), support sets x runs."""
    import csv
    import io

    from ..io import write_json_atomic, write_text_atomic
    from ..tasks.probe import ProbeRecipe, fewshot_curve, plot_curve

    recipe = ProbeRecipe(lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, runs=runs, standardize=standardize)
    net, feature_cache, key, train_data, test_data, left_out = _labelled_inputs(
        model, cache, device, encode_batch, skip_bad, data, test, label, classes, exclude, augment, seed,
        {f"--out-dir ({name})": out_dir / name for name in FEWSHOT_FILES}, overwrite,
    )
    result = fewshot_curve(train_data, recipe, test_data, sizes=parse_ints(sizes, "--sizes"), support_sets=support_sets,
                           seed=seed, progress=True)
    result.update(data=data, test=test, label=key, provenance=_provenance(net, feature_cache), rows_left_out=left_out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["n_patients", "macro_f1_mean", "macro_f1_sd", "n"])
    writer.writeheader()
    writer.writerows(result["curve"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "fewshot.csv", buffer.getvalue())
    write_json_atomic(out_dir / "fewshot.json", result)
    plotted = plot_curve(result["curve"], out_dir / "fewshot.png", title=f"few-shot {net.name} ({key})")
    typer.echo(f"few-shot {net.name} on {data} (test n={result['n_test']}, {support_sets} support sets x {runs} runs)")
    typer.echo("  N patients   macro F1 (mean +- SD)")
    for row in result["curve"]:
        typer.echo(f"  {row['n_patients']:>10}   {100 * row['macro_f1_mean']:6.2f} +- {100 * row['macro_f1_sd']:5.2f}")
    if result["skipped_sizes"]:
        typer.echo(f"  skipped N={result['skipped_sizes']}: only {result['available_patients']} training patients")
    typer.echo(f"curve -> {out_dir / 'fewshot.csv'}" + (f", {out_dir / 'fewshot.png'}" if plotted else " (no PNG: matplotlib not installed)"))


# -- clips -------------------------------------------------------------------------------------------------------
def clips_command(
    data: str = typer.Option(..., "--data", "-d", help="csv:FILE with path (clip folder / multi-frame file), label, patient."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    test: Optional[str] = typer.Option(None, "--test", help="External test set of clips."),
    frames: int = typer.Option(16, "--frames", min=1, help="Frames sampled evenly from each clip."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Positive class label (default: the larger of the two)."),
    folds: int = typer.Option(5, "--folds", min=2),
    runs: int = typer.Option(5, "--runs", min=1),
    epochs: int = typer.Option(50, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    weight_decay: float = typer.Option(0.01, "--wd"),
    standardize: bool = typer.Option(False, "--standardize"),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[str] = typer.Option(None, "--cache", help=CACHE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o"),
    save_head: Optional[Path] = typer.Option(None, "--save-head", help=SAVE_HEAD_HELP),
    head_name: Optional[str] = typer.Option(None, "--head-name", help="Name of the saved head (default: the positive class)."),
    encode_batch: int = typer.Option(32, "--encode-batch", min=1),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Clip-level binary detection: frame embeddings concatenated in order -> one linear layer; AUROC over folds x runs."""
    from ..data.datasets import open_dataset
    from ..data.sample import patient_id
    from ..errors import FetalCLIPError
    from ..tasks.probe_clips import clip_features, clip_probe
    from ..tasks.probe_recipe import ProbeRecipe

    recipe = ProbeRecipe(lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, folds=folds, runs=runs,
                         standardize=standardize)
    clips = open_dataset(data)
    if clips.missing:
        raise FetalCLIPError(f"{data}: {len(clips.missing)} clips are missing, e.g. {clips.missing[0][0]}")
    labels = [r.get("label") for r in clips.records]
    if any(label is None for label in labels):
        raise FetalCLIPError(f"{data}: every clip needs a label")
    test_clips = open_dataset(test) if test else None
    _guard({"--out": out, "--save-head": save_head}, [clips, test_clips], overwrite)
    net, feature_cache = _setup(model, cache, device, encode_batch, False)
    x = clip_features(feature_cache, clips, frames)
    external = None
    if test_clips is not None:
        external = (clip_features(feature_cache, test_clips, frames), [r.get("label") for r in test_clips.records])
    run = clip_probe(x, labels, [patient_id(r) for r in clips.records], recipe, external, positive=positive, seed=seed)
    result = run.report
    result.update(data=data, test=test, frames=frames, provenance=_provenance(net, feature_cache),
                  rows_left_out=_left_out(clips, test_clips))
    ci = result["auroc_pooled_ci"]
    typer.echo(f"clip probe {net.name} on {data} ({result['n_clips']} clips x {frames} frames, positive={result['positive']!r})")
    typer.echo(f"  AUROC per fold x run {100 * result['auroc_mean']:.2f} +- {100 * result['auroc_sd']:.2f}; "
               f"pooled {100 * result['auroc_pooled']:.2f} CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]")
    typer.echo(f"  encoded {feature_cache.encoded} frames this run")
    _save_head(save_head, run.head, name=head_name or result["positive"], input="clip",
               classes=[result["negative"], result["positive"]], net=net, cache=feature_cache, embed_dim=x.shape[1] // frames,
               frames=frames, model=_model_reference(model), data=data, positive=result["positive"], recipe=recipe.to_dict(),
               seed=seed)
    _write(out, result)


# -- segment -----------------------------------------------------------------------------------------------------
SEGMENTER_FILES = ("decoder.safetensors", "segmenter.json", "splits.json")  # what --save writes into its folder


def segment_command(
    data: str = typer.Option(..., "--data", "-d", help="hc18:DIR or csv:FILE with a mask column."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    test: Optional[str] = typer.Option(None, "--test", help="External test set spec."),
    folds: int = typer.Option(1, "--folds", min=1, help="1 = one seeded validation hold-out; k >= 2 = k-fold rotation."),
    runs: int = typer.Option(1, "--runs", min=1),
    epochs: int = typer.Option(100, "--epochs", min=1),
    patience: Optional[int] = typer.Option(None, "--patience", min=1, help="Stop after this many epochs without a better val loss."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    weight_decay: float = typer.Option(0.01, "--wd"),
    channels: Optional[str] = typer.Option(None, "--channels", help="Decoder widths deep->image, e.g. 416,256,128,64,32."),
    taps: Optional[str] = typer.Option(None, "--taps", help="0-based blocks to tap (default: 4 evenly spaced)."),
    size: Optional[int] = typer.Option(None, "--size", help="Decoder resolution (default: the model input, 224; 112 is ~4x cheaper)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (1 is fastest on a busy machine)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction"),
    merge_labels: bool = typer.Option(False, "--merge-labels", help="Segment every foreground label as one structure "
                                      "(e.g. a head whose inner structures carry their own labels)."),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[str] = typer.Option(None, "--cache", help=CACHE_HELP),
    save: Optional[Path] = typer.Option(None, "--save", help="Keep the best decoder (with its encoder reference) here."),
    out: Optional[Path] = typer.Option(None, "--out", "-o"),
    encode_batch: int = typer.Option(32, "--encode-batch", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Segmentation probe: UNETR-lite decoder on 4 frozen blocks + the image; pooled Dice, per-image Dice, Hausdorff (mm)."""
    from ..data.datasets import open_dataset
    from ..io import write_json_atomic
    from ..tasks.features import default_taps
    from ..tasks.segmentation import DEFAULT_CHANNELS, run_segmentation, save_decoder, segmentation_data

    if threads:
        import torch

        torch.set_num_threads(threads)
    dataset = open_dataset(data)
    test_set = open_dataset(test) if test else None
    saved_files = {f"--save ({name})": save / name for name in SEGMENTER_FILES} if save is not None else {}
    _guard({"--out": out, **saved_files}, [dataset, test_set], overwrite)
    net, feature_cache = _setup(model, cache, device, encode_batch, skip_bad)
    tap_list = parse_ints(taps, "--taps") if taps else None
    widths = parse_ints(channels, "--channels") if channels else list(DEFAULT_CHANNELS)
    dataset, (seg_data, originals) = _fetch(feature_cache, dataset, lambda d: segmentation_data(feature_cache, d, tap_list, progress=True, size=size,
                                                                                      merge_labels=merge_labels))
    external = None
    if test_set is not None:
        _, external = _fetch(feature_cache, test_set, lambda d: segmentation_data(feature_cache, d, tap_list, progress=True, size=size,
                                                                                      merge_labels=merge_labels))
    result, best, split_info = run_segmentation(seg_data, originals, folds=folds, runs=runs, seed=seed, epochs=epochs,
                                                batch_size=batch_size, lr=lr, weight_decay=weight_decay, channels=widths,
                                                patience=patience, test_fraction=test_fraction, test=external, progress=True)
    used_taps = tap_list or default_taps(net.image_block_count)
    result.update(data=data, test=test, taps=used_taps, size=seg_data.size, provenance=_provenance(net, feature_cache),
                  rows_left_out=_left_out(dataset, test_set))
    typer.echo(f"segmentation probe {net.name} on {data} ({result['decoder_parameters'] / 1e6:.2f}M decoder parameters, "
               f"test n={result['n_test']}, {len(result['heads'])} heads)")
    d, di, hd = result["dice_pooled"], result["dice_per_image_mean"], result["hausdorff_mm_mean"]
    typer.echo(f"  Dice pooled {100 * d['mean']:.2f} +- {100 * d['sd']:.2f}   per image {100 * di['mean']:.2f}"
               + (f"   Hausdorff {hd['mean']:.2f} mm" if hd["mean"] is not None else ""))
    typer.echo(f"  encoded {feature_cache.encoded} images this run")
    if save is not None:
        save_decoder(save, best.decoder, {"model": _model_reference(model), "name": net.name, "fingerprint": feature_cache.fingerprint,
                                          "taps": used_taps, "preprocess": net.preprocess.config.to_dict()},
                     extra={"data": data, "size": seg_data.size, "best_epoch": best.best_epoch, "val_loss": best.val_loss})
        write_json_atomic(save / "splits.json", {k: v for k, v in split_info.items() if k != "source"})
        typer.echo(f"decoder -> {save}")
    _write(out, result)


def register(app: typer.Typer) -> None:
    probe_app.command("classify")(classify_command)
    probe_app.command("fewshot")(fewshot_command)
    probe_app.command("clips")(clips_command)
    probe_app.command("segment")(segment_command)
    app.add_typer(probe_app, name="probe")
