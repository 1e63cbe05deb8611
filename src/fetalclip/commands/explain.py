"""``fetalclip explain``: a prompt-conditioned class-activation map of one image, overlaid on it."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import OVERWRITE_HELP

MODEL_HELP = "Registered model name, checkpoint folder, published .pt, hf-hub: reference or open_clip: baseline."


def explain_command(
    image: Path = typer.Argument(..., help="Image, DICOM, video file or frame folder."),
    prompt_set: Path = typer.Option(None, "--prompt-set", "-p", help="JSON {class: [prompt, ...]} (default: the packaged plane prompts)."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m", help=MODEL_HELP),
    target: str = typer.Option(None, "--class", "-c", help="Class to explain (default: the zero-shot prediction)."),
    all_classes: bool = typer.Option(False, "--all-classes", help="One panel per class instead of one map."),
    method: str = typer.Option("gradcam", "--method", help="gradcam (fast) or scorecam (as published; one pass per channel)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output PNG (default: IMAGE_STEM.cam.png in the current folder)."),
    frame: int = typer.Option(None, "--frame", help="Frame of a multi-frame source (default: the first)."),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write the image with its class-activation map and print the zero-shot scores."""
    import numpy as np

    from ..bench.figures import cam_panels
    from ..bench.harness import load_model
    from ..data.readers import read_frame
    from ..errors import FetalCLIPError
    from ..io import write_bytes_atomic
    from ..outputs import check_outputs
    from ..tasks.explain import METHODS, class_embeddings, compute_cams, load_prompt_set

    if method not in METHODS:
        raise FetalCLIPError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    from ..tasks.zeroshot import packaged_prompt_file

    prompt_set = prompt_set or packaged_prompt_file("planes.json")
    prompts = load_prompt_set(prompt_set)
    if target is not None and target not in prompts:
        raise FetalCLIPError(f"--class {target!r} is not in {prompt_set} ({', '.join(prompts)})")
    out = out or Path.cwd() / f"{image.stem}.cam.png"  # never beside the input unless asked: it may be a read-only archive
    check_outputs({"--out": out}, inputs=[image, prompt_set], overwrite=overwrite)
    sample = read_frame(image, frame)
    net = load_model(model, device=device)
    classes, vectors = class_embeddings(net, prompts)
    targets = classes if all_classes else [target]
    results = compute_cams(net, [sample["image"]] * len(targets), classes, vectors, targets, method=method)
    first = results[0]
    png = cam_panels(
        first.model_image,
        [(f"{r.target} ({r.scores[r.target]:.1f})", r.cam) for r in results],
        title=f"{image.name} · {net.name} · {method}",
    )
    write_bytes_atomic(out, png)
    probabilities = np.exp(np.array(list(first.scores.values())) - max(first.scores.values()))
    probabilities /= probabilities.sum()
    typer.echo(f"{image}: predicted {first.predicted}; map for {', '.join(r.target for r in results)} -> {out}")
    typer.echo(f"  {'softmax':>6}  {'100xcos':>7}  class")
    for (name, score), probability in sorted(zip(first.scores.items(), probabilities), key=lambda item: -item[0][1]):
        typer.echo(f"  {probability:6.3f}  {score:7.2f}  {name}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
