"""LoRA against its baselines: the frozen linear probe on real data, and full fine-tuning's cost at full scale.

1. Probe (``--part probe``): FETAL_PLANES_DB (``FETALCLIP_DATA``), the model at ``--model`` (default: the
   ``configs/tiny-cpu.toml`` run's ``/tmp/runs/tiny-cpu/model``). For a few training-set sizes (patients drawn,
   seeded, from the non-test patients; the dataset's own patient-disjoint test split fixed throughout), the frozen
   linear probe and the LoRA probe (head + rank-``--rank`` image-tower adapters) train with one and the same
   recipe and splits; each prints macro F1 with its bootstrap CI, trainable parameters and wall time.
2. Memory (``--part memory``): fetalclip-vit-l14 (the published architecture, random weights), one optimiser
   step (CLIP loss, AdamW, batch ``--batch-size``) with LoRA on attention + MLP of both towers, and one with full
   fine-tuning, each in its own fresh process, without and with gradient checkpointing: trainable parameters,
   the peak resident memory during the step (sampled; ``getrusage``'s process-lifetime peak beside it), and the
   rise of that peak over the memory held before the step (model built, optimiser made, freed heap trimmed).
   LoRA's weight-space update materialises each adapted weight (W + BA) in the forward pass and autograd keeps
   it for the backward one; checkpointing keeps one block's worth at a time.

    python benchmarks/lora.py [--part probe|memory|all] [--sizes 40,146] [--epochs 15]

Last line: ``ratio: X`` = full fine-tuning's trainable parameters over LoRA's (higher is better for LoRA); the
line before it gives the ratio of the step's memory rise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepPeak:
    """Peak resident memory (MiB) while the block runs, sampled every 2 ms; freed heap is handed back first, so
    set-up garbage (a parametrization's shape check, say) is not counted as the step's."""

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.before = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


MODES = ("lora", "full", "lora+ckpt", "full+ckpt")


def one_step(mode: str, batch_size: int, rank: int) -> dict:
    """One optimiser step of fetalclip-vit-l14 (``mode``: one of MODES; +ckpt = gradient checkpointing), here."""
    import torch
    from open_clip.loss import ClipLoss

    from fetalclip.models import create_model
    from fetalclip.models.lora import LoraConfig, apply_lora, count_trainable
    from fetalclip.train.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model("fetalclip-vit-l14", seed=0).train()
    if mode.startswith("lora"):
        apply_lora(model, LoraConfig(rank=rank, alpha=2 * rank), base_fingerprint="benchmark")
    if mode.endswith("+ckpt"):
        model.clip.set_grad_checkpointing(True)
    optimizer = build_optimizer(model.clip, 1e-5, 0.1)
    images = torch.randn(batch_size, 3, 224, 224)
    tokens = model.tokenize([f"an ultrasound image number {i}" for i in range(batch_size)])
    with StepPeak() as memory:
        start = time.perf_counter()
        image, text, scale = model(images, tokens)
        loss = ClipLoss()(image, text, scale)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"mode": mode, "trainable": count_trainable(model), "total": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": memory.peak, "lifetime_peak_mib": lifetime, "before_step_mib": memory.before,
            "step_rise_mib": memory.peak - memory.before, "step_s": seconds}


def memory_part(args) -> tuple[dict, dict]:
    results = {}
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--batch-size", str(args.batch_size),
                               "--rank", str(args.rank)], capture_output=True, text=True, timeout=1800,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if done.returncode != 0:
            raise SystemExit(f"{mode} step failed: {done.stderr[-2000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"vit-l14 {mode:9s} step (batch {args.batch_size}): trainable {r['trainable']:,} of {r['total']:,}; "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB in the step ({r['lifetime_peak_mib']:.0f} process lifetime), "
              f"rise over pre-step {r['step_rise_mib']:.0f} MiB; {r['step_s']:.1f} s")
    return results["lora"], results["full"]


def _sized(dataset, n_patients: int, seed: int):
    """All test records plus the records of ``n_patients`` non-test patients drawn with ``seed``."""
    from fetalclip.data.sample import patient_id

    pool = sorted({patient_id(r) for r in dataset.records if r.get("split") != "test"})
    chosen = set(np.random.default_rng(seed).permutation(pool)[:n_patients].tolist())
    keep = [i for i, r in enumerate(dataset.records) if r.get("split") == "test" or patient_id(r) in chosen]
    return dataset.subset(keep)


def probe_part(args) -> None:
    import torch

    from fetalclip.data.datasets import open_dataset
    from fetalclip.models import load
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.probe import ProbeRecipe, linear_probe, probe_data
    from fetalclip.tasks.probe_lora import LoraProbeSettings, image_set, lora_probe

    torch.set_num_threads(args.threads)
    data_root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data"))
    dataset = open_dataset(f"fpdb:{data_root / 'fetal_planes_db'}")
    model = load(args.model)
    recipe = ProbeRecipe(lr=args.lr, weight_decay=0.01, epochs=args.epochs, batch_size=args.probe_batch, folds=1,
                         runs=args.runs)
    print(f"probe: {args.model} on FETAL_PLANES_DB ({len(dataset)} images), six planes; recipe {recipe.to_dict()}")
    for n in [int(x) for x in args.sizes.split(",")]:
        subset = _sized(dataset, n, args.seed)
        start = time.perf_counter()
        run = linear_probe(probe_data(FeatureCache(model, None, progress=False), subset), recipe, seed=args.seed,
                           n_bootstrap=args.bootstrap)
        linear_s, linear = time.perf_counter() - start, run.report
        linear_params = run.head.weight.size + run.head.bias.size
        start = time.perf_counter()
        lora = lora_probe(model, image_set(model, subset), recipe, LoraProbeSettings(rank=args.rank), seed=args.seed,
                          n_bootstrap=args.bootstrap).report
        lora_s = time.perf_counter() - start
        for name, report, params, seconds in (("linear", linear, linear_params, linear_s),
                                              ("lora  ", lora, lora["lora"]["trainable_parameters"], lora_s)):
            low, high = report["macro_f1_ci"]
            print(f"  {n:>3} patients ({report['n_train_val']} images), {name}: macro F1 {100 * report['macro_f1_mean']:.2f} "
                  f"CI [{100 * low:.2f}, {100 * high:.2f}] on {report['n_test']} test images; trainable {params:,}; "
                  f"{seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("probe", "memory", "all"), default="all")
    parser.add_argument("--model", default="/tmp/runs/tiny-cpu/model")
    parser.add_argument("--sizes", default="40,146", help="training patients (FETAL_PLANES_DB subset: 146 non-test)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--probe-batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the vit-l14 memory steps")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one_step(args.child, args.batch_size, args.rank)))
        return
    if args.part in ("probe", "all"):
        probe_part(args)
    if args.part in ("memory", "all"):
        lora, full = memory_part(args)
        print(f"step memory rise: full {full['step_rise_mib']:.0f} MiB / LoRA {lora['step_rise_mib']:.0f} MiB = "
              f"{full['step_rise_mib'] / max(lora['step_rise_mib'], 1.0):.2f}x")
        print(f"ratio: {full['trainable'] / lora['trainable']:.1f}")


if __name__ == "__main__":
    main()
