"""``fetalclip demo``: a first look at the system on a synthetic image (the full demo replaces this)."""

from __future__ import annotations

from pathlib import Path

import typer


def _synthetic_head(size: int = 256, seed: int = 0):
    """A crude fan-shaped scan with a bright elliptical skull, enough to exercise the embedding path."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.arctan2(xx - size / 2, yy + size * 0.1)
    radius = np.hypot(xx - size / 2, yy + size * 0.1)
    fan = (np.abs(angle) < 0.6) & (radius < size * 1.05)
    speckle = rng.rayleigh(0.25, (size, size))
    ring = np.abs(np.hypot((xx - size / 2) / 70, (yy - size * 0.55) / 55) - 1.0) < 0.06
    image = (speckle * 0.5 + ring * 0.9) * fan
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo outputs."),
    model: str = typer.Option("fetalclip-tiny", "--model", "-m"),
) -> None:
    """Embed a synthetic scan and rank a few prompts against it."""
    import torch
    from PIL import Image

    from ..models import load

    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "synthetic_head.png"
    Image.fromarray(_synthetic_head()).save(image_path)
    net = load(model)
    prompts = ["ultrasound of the fetal head", "ultrasound of the fetal abdomen", "ultrasound of the fetal femur"]
    with torch.inference_mode():
        image_features = net.encode_image([Image.open(image_path)], normalize=True)
        text_features = net.encode_text(prompts, normalize=True)
    scores = (100 * image_features @ text_features.T).softmax(dim=-1)[0]
    typer.echo(f"model {net.name} ({sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters), image {image_path}")
    for prompt, score in sorted(zip(prompts, scores.tolist()), key=lambda item: -item[1]):
        typer.echo(f"  {score:6.3f}  {prompt}")
    typer.echo("(random weights: scores are meaningless until a model is trained; see `fetalclip train`)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
