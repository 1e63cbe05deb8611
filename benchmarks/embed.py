"""Benchmark: ``fetalclip embed``'s code path against a plain open_clip loop, in one process.

Both sides embed the same HC18 images with the same randomly initialised ``fetalclip-vit-b16`` weights
(seed 0). The baseline is what a user would write with open_clip alone: PIL open, centred square padding,
open_clip's eval transform, batches through ``CLIP.encode_image`` under ``no_grad``, L2 normalisation.
Ours is ``fetalclip.tasks.embed.embed_files`` (what the CLI calls) in each inference mode.

The machine may be shared, so after one cold run per side (ours includes its one-time weight packing or
quantisation there) the sides alternate for several rounds and medians are compared: load that comes and
goes hits both. Accuracy is checked on the outputs: ``exact`` must match the baseline within 1e-5 and
``int8`` must keep every embedding's cosine to the baseline >= 0.999; the last line is the steady-state
ratio of the best mode that passes its check.

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/embed.py [--images 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

ACCURACY = {"exact": "max |diff| <= 1e-5", "int8": "min cosine >= 0.999"}


def hc18_images(count: int) -> list[Path]:
    root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data")) / "hc18" / "training_set"
    files = sorted(root.glob("*_HC.png"))[:count]
    if len(files) < count:
        sys.exit(f"need {count} HC18 images under {root} (set FETALCLIP_DATA), found {len(files)}")
    return files


def plain_open_clip_loop(clip, transform, files: list[Path], batch_size: int) -> np.ndarray:
    """The baseline: nothing but PIL, open_clip's own transform and ``encode_image``."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            tensors = []
            for path in files[start : start + batch_size]:
                image = Image.open(path).convert("RGB")
                side = max(image.size)
                square = Image.new("RGB", (side, side))
                square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
                tensors.append(transform(square))
            chunks.append(F.normalize(clip.encode_image(torch.stack(tensors)), dim=-1).numpy())
    return np.concatenate(chunks)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def check(mode: str, ours: np.ndarray, reference: np.ndarray) -> tuple[bool, str]:
    if mode == "int8":
        cosine = float((ours * reference).sum(1).min())
        return cosine >= 0.999, f"min cosine {cosine:.6f}"
    diff = float(np.abs(ours - reference).max())
    return diff <= 1e-5, f"max |diff| {diff:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds after the cold runs")
    parser.add_argument("--modes", default="exact,int8")
    args = parser.parse_args()

    import open_clip

    from fetalclip.models import create_model
    from fetalclip.models.preprocess import OPENAI_MEAN, OPENAI_STD
    from fetalclip.tasks.embed import embed_files

    files = hc18_images(args.images)
    modes = [m for m in args.modes.split(",") if m]
    model = create_model("fetalclip-vit-b16", seed=0)
    transform = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    n = len(files)
    print(f"{n} HC18 images, fetalclip-vit-b16 (random init, seed 0), batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")

    sides = {"baseline": lambda: plain_open_clip_loop(model.clip, transform, files, args.batch_size)}
    for mode in modes:
        sides[mode] = lambda mode=mode: embed_files(model, files, batch_size=args.batch_size, mode=mode).embeddings

    # Process-wide first-use costs (allocator, thread pools, kernel dispatch) go to a 2-image warm-up of the
    # baseline, so the cold runs below measure what each side adds: ours packs/quantises weights there.
    plain_open_clip_loop(model.clip, transform, files[:2], 2)
    outputs, cold, wall, cpu = {}, {}, {name: [] for name in sides}, {name: [] for name in sides}
    for name, run in sides.items():
        outputs[name], cold[name], _ = timed(run)
    for _ in range(args.rounds):
        for name, run in sides.items():
            _, seconds, cpu_seconds = timed(run)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)

    base = statistics.median(wall["baseline"])
    print(f"{'side':<10} {'img/s':>7} {'cold img/s':>11} {'cpu s/img':>10} {'x steady':>9} {'x cold':>7}  accuracy")
    best = None
    for name in sides:
        steady = statistics.median(wall[name])
        ratio, cold_ratio = base / steady, cold["baseline"] / cold[name]
        if name == "baseline":
            verdict = "reference"
        else:
            ok, detail = check(name, outputs[name], outputs["baseline"])
            verdict = f"{detail} ({ACCURACY[name]}: {'ok' if ok else 'FAILED'})"
            if ok and (best is None or ratio > best[1]):
                best = (name, ratio)
        print(f"{name:<10} {n / steady:7.2f} {n / cold[name]:11.2f} {statistics.median(cpu[name]) / n:10.3f} "
              f"{ratio:9.2f} {cold_ratio:7.2f}  {verdict}")
    print("rounds (wall s): " + "; ".join(f"{k} " + ",".join(f"{s:.1f}" for s in v) for k, v in wall.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}; best mode meeting its accuracy check: "
          f"{best[0] if best else 'none'}")
    print(f"ratio: {best[1] if best else 0.0:.2f}")


if __name__ == "__main__":
    main()
