"""Zero-shot gestational age: our scorer against the published per-image computation, same model, same images.

The baseline is the published algorithm (``score_days_reference``): for each image, all templates x 175 day
prompts filled with that image's spacing are encoded in full and scored; its cost per image does not depend on
the set, so a few images measure it. Ours (``score_days``) scores the first N shared HC18 images at once: text
once per distinct spacing, shared prompt prefixes encoded once. The score maps of the common images must agree
within 1e-4 (the script exits with status 1 otherwise). PNG decoding is done before either clock starts.

    PYTHONPATH=src python benchmarks/zeroshot_ga.py [--model fetalclip-vit-b16] [--images 120] [--baseline-images 2]

Prints each side's images/s and, last, ``ratio: X`` (ours over baseline).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fetalclip.data.datasets import open_dataset
from fetalclip.models import create_model
from fetalclip.models.preprocess import spacing_224
from fetalclip.tasks.gestational_age import DAYS, format_spacing, load_templates, score_days, score_days_reference

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fetalclip-vit-b16", help="registered architecture (random weights, seed 0)")
    parser.add_argument("--data", default=os.environ.get("FETALCLIP_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=120, help="images scored by ours (the first N of HC18)")
    parser.add_argument("--baseline-images", type=int, default=2, help="images scored by the per-image baseline")
    parser.add_argument("--templates", default=None, help="template JSON (default: ours)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = create_model(args.model, seed=0)
    templates = load_templates(args.templates)
    dataset = open_dataset(f"hc18:{Path(args.data) / 'hc18'}")
    n = min(args.images, len(dataset))
    samples = [dataset[i] for i in range(n)]
    images = [s["image"] for s in samples]
    spacings = [spacing_224(s["pixel_spacing_mm"], width=im.shape[1], height=im.shape[0]) for s, im in zip(samples, images)]
    k = min(args.baseline_images, n)
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights), "
          f"torch threads {torch.get_num_threads()}, {len(templates)} templates x {len(DAYS)} days")
    print(f"images: {n} (distinct printed spacings: {len(set(format_spacing(s) for s in spacings))}); baseline on the first {k}")

    score_days_reference(model, images[0], spacings[0], templates[:1], DAYS[:2])  # warm-up: tokenizer, allocator

    def run_baseline(indices: range) -> tuple[list[np.ndarray], float]:
        start = time.perf_counter()
        rows = [score_days_reference(model, images[i], spacings[i], templates) for i in indices]
        return rows, time.perf_counter() - start

    # Half the baseline images before ours and half after, so a change in machine load shifts both sides alike.
    first, first_s = run_baseline(range(0, (k + 1) // 2))
    start = time.perf_counter()
    ours = score_days(model, images, spacings, templates)
    ours_s = time.perf_counter() - start
    second, second_s = run_baseline(range((k + 1) // 2, k))
    baseline, baseline_s = np.stack(first + second), first_s + second_s

    diff = float(np.abs(ours[:k] - baseline).max())
    agree = diff < args.tolerance
    base_rate, our_rate = k / baseline_s, n / ours_s
    print(f"baseline (per image, every prompt encoded): {k} images in {baseline_s:.1f} s -> {base_rate:.4f} images/s")
    print(f"ours (distinct spacings, shared prefixes):  {n} images in {ours_s:.1f} s -> {our_rate:.4f} images/s")
    print(f"score maps of the {k} common images: max |ours - baseline| = {diff:.2e} "
          f"({'within' if agree else 'EXCEEDS'} {args.tolerance:g})")
    print(f"ratio: {our_rate / base_rate:.1f}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
