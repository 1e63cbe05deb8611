"""Benchmark: what a warm ``Predictor`` adds to the bare image-tower forward of one scan, and its cold start.

Both sides see the same HC18 head image with the same randomly initialised ``fetalclip-vit-b16`` weights
(seed 0). The baseline is the least any answer needs: preprocess the decoded image and run
``encode_image`` on it under ``inference_mode``. Ours is ``Predictor(model)(image, spacing_mm=...)``: the
plane and sub-plane scores and, because the plane is forced to "brain" here so that every call takes the
longest path, the gestational-age day scores from the text bank cached on the first call. The sides
alternate for several rounds (load that comes and goes on a shared machine hits both) and medians are
compared; the last line is the steady-state overhead. Cold start = model load + predictor build + first
answer, for a model name (random weights, nothing read from disk but the image).

The sweep part times a 64-frame phantom sweep (PNG frames in a folder, ``sim.sweep``): ``Predictor.sweep`` on
the folder (every frame's plane, the best frame per plane, the head answer of the best brain frame) against
``fetalclip embed``'s throughput path (``tasks.embed.embed_files``, mode ``exact``) on the same files, both
with batches of 32, alternating for ``--sweep-rounds`` rounds after one warm-up each; the last line is the
ratio of frames/s, ours over embed's (the issue asks for at least 0.9).

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/predict.py [--model fetalclip-vit-b16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

SPACING_MM = 0.15


def hc18_image() -> Path:
    root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data")) / "hc18" / "training_set"
    files = sorted(root.glob("*_HC.png"))
    if not files:
        sys.exit(f"no HC18 images under {root} (set FETALCLIP_DATA)")
    return files[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fetalclip-vit-b16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="calls per side per round")
    parser.add_argument("--frames", type=int, default=64, help="frames of the sweep")
    parser.add_argument("--sweep-rounds", type=int, default=3)
    args = parser.parse_args()

    from fetalclip.data.readers import read_frame
    from fetalclip.models import create_model
    from fetalclip.tasks.predictor import Predictor

    path = hc18_image()
    started = time.perf_counter()
    model = create_model(args.model, seed=0).eval()
    predictor = Predictor(model, plane_prompts={"brain": ["Ultrasound image of the fetal brain"]})
    first = predictor(path, spacing_mm=SPACING_MM)
    cold = time.perf_counter() - started
    assert first.gestational_age is not None and first.gestational_age.days is not None
    image = read_frame(path)["image"]

    def bare() -> None:
        with torch.inference_mode():
            model.encode_image(model.preprocess(image)[None], normalize=True)

    def ours() -> None:
        predictor(image, spacing_mm=SPACING_MM)

    times: dict[str, list[float]] = {"bare forward": [], "predictor": []}
    for _ in range(args.rounds):
        for name, call in (("bare forward", bare), ("predictor", ours)):
            began = time.perf_counter()
            for _ in range(args.calls):
                call()
            times[name].append((time.perf_counter() - began) / args.calls)
    base, mine = statistics.median(times["bare forward"]), statistics.median(times["predictor"])
    print(f"{args.model}, one {image.shape[1]}x{image.shape[0]} image, {args.rounds} rounds x {args.calls} calls, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  cold start (load, build, first answer incl. GA text bank): {cold:.2f} s")
    for name, values in times.items():
        print(f"  {name:<13} median {1000 * statistics.median(values):7.1f} ms  "
              f"(min {1000 * min(values):.1f}, max {1000 * max(values):.1f})")
    print(f"predictor / bare forward: {mine / base:.3f}x  (overhead {100 * (mine / base - 1):+.1f}%)")
    sweep_ratio = sweep_throughput(model, predictor, args.frames, args.sweep_rounds)
    print(f"ratio: {sweep_ratio:.3f}")


def sweep_throughput(model, predictor, frames: int, rounds: int, batch_size: int = 32) -> float:
    """Frames/s of ``Predictor.sweep`` over those of ``embed_files`` on one phantom sweep's PNG frames."""
    from fetalclip.sim.sweep import SweepConfig, write_sweeps
    from fetalclip.tasks.embed import embed_files

    with tempfile.TemporaryDirectory() as tmp:
        write_sweeps(1, SweepConfig(frames=frames), tmp)
        folder = Path(tmp) / "sweeps" / "000000"
        files = sorted(folder.glob("*.png"))
        sides = {"embed_files": lambda: embed_files(model, files, batch_size=batch_size, mode="exact"),
                 "Predictor.sweep": lambda: predictor.sweep(folder, spacing_mm=SPACING_MM, batch_size=batch_size)}
        for call in sides.values():  # warm-up: the exact mode's weight packing, the GA text bank
            call()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, call in sides.items():
                began = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - began)
    rates = {name: frames / statistics.median(values) for name, values in times.items()}
    print(f"sweep of {frames} frames ({rounds} rounds, batch {batch_size}):")
    for name, rate in rates.items():
        print(f"  {name:<16} {rate:7.1f} frames/s  (median {statistics.median(times[name]):.2f} s)")
    return rates["Predictor.sweep"] / rates["embed_files"]


if __name__ == "__main__":
    main()
