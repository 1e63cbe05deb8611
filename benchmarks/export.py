"""Benchmark: the exported towers on ONNX Runtime against the plain open_clip/PyTorch loop, in one process.

Both sides run the same randomly initialised ``fetalclip-vit-b16`` weights (seed 0) on the same inputs in the
same batches: HC18 images preprocessed once by the project's preprocessing (identical for every side, so only
the tower is timed), and the packaged prompts tokenised once. Sides for the image tower:

- ``torch``: the baseline, ``CLIP.encode_image`` under ``no_grad`` (what a user writes with open_clip alone);
- ``torch-exact`` / ``torch-int8``: the project's own fast CPU paths (``models.accelerate``), for reference;
- ``ort-fp32``: the exported fp32 graph, ORT's full graph optimisation;
- ``ort-int8-plain``: ``quantize_dynamic`` straight on the exported graph (the plain dynamic quantisation);
- ``ort-int8``: what ``fetalclip export --int8`` writes (ORT's pre-processing, then the matrix products quantised);
- ``ort-int8-fused``: ORT's transformer optimiser (attention, GELU and layer-norm fusion) before quantising.

The machine may be shared, so after a cold run per side the sides alternate for ``--rounds`` rounds and medians
are compared. Accuracy is checked against the baseline's outputs: fp32 max abs diff <= 1e-5 (unnormalised and
normalised), int8 min cosine >= 0.999. Peak RSS is sampled (every 5 ms) while each side runs; the number given is
the peak over the baseline process before the side's session was opened (its weights included). The text tower
gets the same treatment for torch / ort-fp32 / ort-int8. The last line is ``ratio: X``, ORT fp32 images/s over
the baseline's.

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/export.py [--images 32] [--batch-size 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory (MB) while the block runs, sampled by a thread."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def hc18_pixels(model, count: int) -> torch.Tensor:
    from PIL import Image

    root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data")) / "hc18" / "training_set"
    files = sorted(root.glob("*_HC.png"))[:count]
    if len(files) < count:
        sys.exit(f"need {count} HC18 images under {root} (set FETALCLIP_DATA), found {len(files)}")
    return model.preprocess.batch([Image.open(f) for f in files])


def batched(fn, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def build_int8_variants(model, folder: Path, log) -> dict[str, Path]:
    """The three ways to the int8 image graph the benchmark compares, with their build times logged."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from fetalclip.export.graphs import quantise_int8

    fp32 = folder / "image.onnx"
    paths = {"ort-int8-plain": folder / "image.plain-int8.onnx", "ort-int8": folder / "image.int8.onnx",
             "ort-int8-fused": folder / "image.fused-int8.onnx"}
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice to pre-process: that is the next variant
    started = time.perf_counter()
    quantize_dynamic(str(fp32), str(paths["ort-int8-plain"]), weight_type=QuantType.QInt8, per_channel=True)
    log(f"quantise plain: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    quantise_int8(fp32, paths["ort-int8"])
    log(f"quantise (export --int8): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    vision = model.clip.visual
    width = vision.conv1.out_channels
    heads = vision.transformer.resblocks[0].attn.num_heads
    fused = optimize_model(str(fp32), model_type="vit", num_heads=heads, hidden_size=width, opt_level=1)
    fused_fp32 = folder / "image.fused.onnx"
    fused.save_model_to_file(str(fused_fp32))
    # Fused ops (com.microsoft domain) carry no inferred types; their outputs are fp32.
    quantize_dynamic(str(fused_fp32), str(paths["ort-int8-fused"]), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    log(f"fuse + quantise: {time.perf_counter() - started:.1f} s")
    return paths


def measure(factories: dict, inputs: torch.Tensor, batch_size: int, rounds: int) -> dict:
    """``factories`` map a side to a function building its batch function (a session, packed weights), so
    that building is part of the side's cold run and of its peak memory."""
    outputs, cold, wall, peak, sides = {}, {}, {name: [] for name in factories}, {}, {}
    for name, factory in factories.items():
        before = rss_mb()
        with PeakRSS() as memory:
            started = time.perf_counter()
            sides[name] = factory()
            outputs[name] = batched(sides[name], inputs, batch_size)
            cold[name] = time.perf_counter() - started
        peak[name] = memory.peak - before
    for _ in range(rounds):
        for name, fn in sides.items():
            started = time.perf_counter()
            batched(fn, inputs, batch_size)
            wall[name].append(time.perf_counter() - started)
    return {"outputs": outputs, "cold": cold, "wall": wall, "peak": peak}


def accuracy(name: str, ours: torch.Tensor, reference: torch.Tensor) -> tuple[bool, str]:
    normalised = F.normalize(ours, dim=-1), F.normalize(reference, dim=-1)
    if "int8" in name:
        cosine = float((normalised[0] * normalised[1]).sum(1).min())
        return cosine >= 0.999, f"min cosine {cosine:.5f} (>= 0.999: {'ok' if cosine >= 0.999 else 'FAILED'})"
    raw, unit = float((ours - reference).abs().max()), float((normalised[0] - normalised[1]).abs().max())
    ok = raw <= 1e-5 and unit <= 1e-5
    return ok, f"max|d| {raw:.1e}, normalised {unit:.1e} (<= 1e-5: {'ok' if ok else 'FAILED'})"


def report(title: str, result: dict, count: int, unit: str) -> dict[str, float]:
    print(title)
    base = statistics.median(result["wall"]["torch"])
    print(f"  {'side':<15} {unit + '/s':>9} {'cold':>8} {'x torch':>8} {'peak MB':>8}  accuracy")
    speeds = {}
    for name in result["wall"]:
        steady = statistics.median(result["wall"][name])
        speeds[name] = count / steady
        verdict = "reference" if name == "torch" else accuracy(name, result["outputs"][name], result["outputs"]["torch"])[1]
        print(f"  {name:<15} {count / steady:9.2f} {count / result['cold'][name]:8.2f} {base / steady:8.2f} "
              f"{result['peak'][name]:8.0f}  {verdict}")
    return {name: speed / speeds["torch"] for name, speed in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fetalclip.export.graphs import export_image_graph, export_text_graph, quantise_int8
    from fetalclip.export.runtime import open_session
    from fetalclip.models import create_model
    from fetalclip.models.accelerate import image_encoder
    from fetalclip.tasks.zeroshot import load_prompts

    model = create_model("fetalclip-vit-b16", seed=0)
    pixels = hc18_pixels(model, args.images)
    prompts = [t for texts in load_prompts(task="planes").values() for t in texts] * 8
    tokens = model.tokenize(prompts[: args.prompts])
    print(f"{len(pixels)} HC18 images, {len(tokens)} prompts, fetalclip-vit-b16 (random init, seed 0), batch {args.batch_size}, "
          f"{args.threads} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        export_image_graph(model, folder / "image.onnx")
        image_export = time.perf_counter() - started
        started = time.perf_counter()
        export_text_graph(model, folder / "text.onnx")
        text_export = time.perf_counter() - started
        print(f"export: image tower {image_export:.1f} s, text tower {text_export:.1f} s")
        int8_paths = build_int8_variants(model, folder, lambda line: print("  " + line))
        quantise_int8(folder / "text.onnx", folder / "text.int8.onnx")

        def ort(path, input_name):
            def build():
                session = open_session(path, threads=args.threads)
                return lambda batch: torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])
            return build

        with torch.no_grad():
            image_sides = {"torch": lambda: model.clip.encode_image,
                           "torch-exact": lambda: image_encoder(model, "exact", cache=False),
                           "torch-int8": lambda: image_encoder(model, "int8", cache=False),
                           "ort-fp32": ort(folder / "image.onnx", "pixel_values")}
            for name, path in int8_paths.items():
                image_sides[name] = ort(path, "pixel_values")
            image = measure(image_sides, pixels, args.batch_size, args.rounds)
            text_sides = {"torch": lambda: model.clip.encode_text, "ort-fp32": ort(folder / "text.onnx", "input_ids"),
                          "ort-int8": ort(folder / "text.int8.onnx", "input_ids")}
            text = measure(text_sides, tokens, args.batch_size * 4, args.rounds)
    ratios = report("image tower", image, len(pixels), "img")
    report("text tower", text, len(tokens), "txt")
    print("rounds (wall s): " + "; ".join(f"{k} " + ",".join(f"{s:.1f}" for s in v) for k, v in image["wall"].items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"ratio: {ratios['ort-fp32']:.2f}")


if __name__ == "__main__":
    main()
