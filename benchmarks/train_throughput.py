"""Training throughput: our loop vs open_clip's reference trainer (``open_clip_train``), same model, data and batch.

Both sides train fetalclip-tiny from the same random initialisation for the same number of steps, on the same
image-text batches (our data pipeline feeds both, in the same order), with the same optimiser settings
(AdamW, cosine schedule with warm-up, gradient clipping at 1.0, fp32 on CPU). The baseline is
``open_clip_train.train.train_one_epoch``, the loop behind open_clip's own training script.

Images/s excludes each side's first step (start-up). Peak memory is the process's resident set sampled every
2 ms during each side's run, reported as the rise above its level just before that run (on CUDA: peak
allocated tensor memory). Sides alternate for ``--rounds`` rounds (open_clip first in odd rounds, ours first
in even ones); the best and the median images/s and the highest peak of each are reported. Data: the shared
HC18 + FETAL_PLANES_DB images when present (``FETALCLIP_DATA``), else generated images.

    python benchmarks/train_throughput.py [--steps 24] [--batch-size 16] [--rounds 4]

Last line: ``ratio: X`` = our best images/s over open_clip's best (higher is better); the line before it
gives the ratio of the medians.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


class PeakRSS:
    """Peak resident memory (MiB) above the level at entry, sampled by a thread."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self):
        gc.collect()
        try:  # hand freed heap back to the OS so the previous side's garbage does not mask this one's growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.start) / 2**20


def data_specs(tmp: Path) -> list[str]:
    shared = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data"))
    if (shared / "hc18").is_dir() and (shared / "fetal_planes_db").is_dir():
        return [f"hc18:{shared / 'hc18'}", f"fpdb:{shared / 'fetal_planes_db'}"]
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp / "imgs").mkdir()
    rows = ["path,label,patient"]
    for i in range(256):
        Image.fromarray(rng.integers(0, 255, (300, 400), dtype=np.uint8)).save(tmp / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{('brain', 'abdomen', 'femur', 'thorax')[i % 4]},p{i}")
    (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
    return [f"csv:{tmp / 'pairs.csv'}"]


def recipe(specs, steps, batch_size):
    from fetalclip.train import make_config

    return make_config(None, {
        "model": "fetalclip-tiny", "data": specs, "steps": steps, "batch_size": batch_size, "lr": 5e-4,
        "warmup_steps": 2, "weight_decay": 0.2, "grad_clip": 1.0, "precision": "fp32", "device": "cpu",
        "progress": False, "seed": 0,
    })


def run_ours(config, run_dir: Path) -> float:
    from fetalclip.train import train

    result = train(config, run_dir, builtin_hooks=False)
    return result.images_per_s


def run_open_clip(config) -> float:
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    from fetalclip.train.data import PairDataset, StepBatchSampler, make_loader, open_sources, split_by_patient
    from fetalclip.train.modeling import build_model

    model = build_model(config.model, seed=config.seed)
    clip = model.clip.train()
    clip.output_dict = True
    sources = open_sources(config.data)
    items, _ = split_by_patient(sources, 0.0, config.seed)
    dataset = PairDataset(sources, items, model.preprocess, model.context_length, config.seed)
    loader = make_loader(dataset, StepBatchSampler(config.batch_size, 1, 0, 1, 0, config.steps), 0, torch.device("cpu"))
    loader.num_batches, loader.num_samples = config.steps, config.steps * config.batch_size

    stamps: list[float] = []

    class TimedLoader:  # records when each batch is requested, i.e. when each step starts
        num_batches, num_samples = loader.num_batches, loader.num_samples

        def __iter__(self):
            for batch in loader:
                yield batch
                stamps.append(time.perf_counter())

        def __len__(self):
            return len(loader)

    # open_clip's own parameter grouping (main.py): no decay on gains, biases and the temperature.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(clip.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": config.weight_decay}],
        lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
    )
    scheduler = cosine_lr(optimizer, config.lr, config.warmup_steps, config.steps)
    args = SimpleNamespace(
        device="cpu", precision="fp32", accum_freq=1, distill=False, skip_scheduler=False, grad_clip_norm=config.grad_clip,
        horovod=False, log_every_n_steps=10**9, batch_size=config.batch_size, world_size=1, rank=0, local_rank=0,
        wandb=False, distributed=False,
    )
    data = {"train": SimpleNamespace(dataloader=TimedLoader(), set_epoch=lambda epoch: None)}
    train_one_epoch(clip, data, ClipLoss(), 0, optimizer, None, scheduler, None, args)
    # stamps[i]: the loop asked for the batch after step i, i.e. step i ended; the first step is excluded.
    return (config.steps - 1) * config.batch_size / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = recipe(data_specs(tmp), options.steps, options.batch_size)
        print(f"fetalclip-tiny, {options.steps} steps x batch {options.batch_size}, data {', '.join(config.data)}, "
              f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
        speeds: dict[str, list[float]] = {"open_clip_train": [], "fetalclip": []}
        peak = {"open_clip_train": 0.0, "fetalclip": 0.0}
        for round_ in range(options.rounds):
            # Alternate which side goes first, so neither always inherits the other's heap and caches.
            order = ("open_clip_train", "fetalclip") if round_ % 2 == 0 else ("fetalclip", "open_clip_train")
            for side in order:
                with PeakRSS() as memory:
                    if side == "fetalclip":
                        speed = run_ours(config, tmp / f"run{round_}")
                    else:
                        speed = run_open_clip(config)
                speeds[side].append(speed)
                peak[side] = max(peak[side], memory.mib)
                print(f"  round {round_ + 1} {side:16s} {speed:7.2f} images/s  peak +{memory.mib:6.0f} MiB")
        best = {side: max(values) for side, values in speeds.items()}
        median = {side: float(np.median(values)) for side, values in speeds.items()}
        for side in speeds:
            print(f"{side:16s} best {best[side]:7.2f}  median {median[side]:7.2f} images/s  peak memory +{peak[side]:.0f} MiB")
        print(f"memory ratio (ours/open_clip, lower is better): {peak['fetalclip'] / max(peak['open_clip_train'], 1e-9):.2f}")
        print(f"median ratio: {median['fetalclip'] / median['open_clip_train']:.2f}")
        print(f"ratio: {best['fetalclip'] / best['open_clip_train']:.2f}")


if __name__ == "__main__":
    main()
