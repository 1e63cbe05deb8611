"""Benchmark: leave-one-machine-out on FETAL_PLANES_DB, a frozen encoder's linear probe against a supervised
ResNet-18 trained from scratch on the very same images (the baseline issue 20 asks pretraining to beat).

For each ultrasound machine with at least ``--min-images`` images, both sides train on the other machines'
images (patients never cross: no FETAL_PLANES_DB patient was scanned on two machines) and are tested on the
held-out machine's. Ours is the ``transfer-planes`` task (``tasks.transfer_tasks``: cached embeddings, the
linear probe's patient-level folds); the baseline is torchvision's ResNet-18 (``weights=None``) on the project's
own 224 preprocessing (grey replicated to three channels), AdamW with a cosine decay, a fixed number of
epochs, the last epoch's weights. Its augmentation is either flips and small shifts (``--augment basic``, the
first baseline) or the pretraining's own scanner-look augmentation (``--augment ultrasound``,
``train.augment.UltrasoundAugmentation``, the stronger baseline: what a user would train with this library).
Macro F1 per held-out machine with a 95% bootstrap interval over the test images, and the mean over machines
(each weighing the same); the last line is ours over the baseline.

``--machines Aloka`` holds out only that machine (the one ``configs/`` recipes keep out of pretraining, so the
comparison is on a scanner neither side trained on); ``--classes abdomen,brain,femur,thorax`` keeps the four
planes an external cohort has.

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/transfer_baseline.py --model runs/tiny/model [--epochs 15]
    FETALCLIP_DATA=... python benchmarks/transfer_baseline.py --model runs/laptop/model --machines Aloka \
        --classes abdomen,brain,femur,thorax --augment ultrasound --epochs 40
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def macro_f1_with_ci(truth: np.ndarray, predicted: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float, float]:
    """Macro F1 over the classes present in ``truth`` (percent), with a 95% bootstrap interval over test images."""
    from sklearn.metrics import f1_score

    present = sorted(set(truth.tolist()))
    score = lambda idx: 100.0 * f1_score(truth[idx], predicted[idx], labels=present, average="macro", zero_division=0)  # noqa: E731
    rng = np.random.default_rng(seed)
    draws = [score(rng.integers(0, len(truth), len(truth))) for _ in range(n_bootstrap)]
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return score(np.arange(len(truth))), float(low), float(high)


def _augmented_batch(squares, rng, augmentation, preprocess):
    from PIL import Image
    from torchvision.transforms import functional as TF

    config = preprocess.config
    out = []
    for square in squares:
        image = augmentation(Image.fromarray(square), rng, config.image_size, preprocess._filter)
        out.append(TF.normalize(TF.to_tensor(image), config.mean, config.std))
    return torch.stack(out)


def resnet_predictions(images: torch.Tensor, squares, labels: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int,
                       epochs: int, seed: int, augment: str, preprocess) -> np.ndarray:
    """A ResNet-18 trained from scratch on ``train``; its predictions for ``test``."""
    import torchvision

    from fetalclip.train.augment import UltrasoundAugmentation
    from fetalclip.train.schedule import WarmupCosine, set_lr

    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x_train, y_train = images[train], torch.as_tensor(labels[train])
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    augmentation = UltrasoundAugmentation() if augment == "ultrasound" else None
    steps_per_epoch = -(-len(train) // 32)
    schedule = WarmupCosine(1e-3, epochs * steps_per_epoch, steps_per_epoch, 1e-5)
    step = 0
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            set_lr(optimizer, schedule(step))
            step += 1
            if augmentation is not None:
                x = _augmented_batch([squares[train[int(i)]] for i in batch], rng, augmentation, preprocess)
            else:
                x = x_train[batch]
                if torch.rand(1, generator=generator) < 0.5:
                    x = x.flip(-1)
                shift = torch.randint(-12, 13, (2,), generator=generator).tolist()
                x = torch.roll(x, shifts=shift, dims=(-2, -1))  # a small translation, as a crop would give
            loss = torch.nn.functional.cross_entropy(net(x), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(images[test][i:i + 64]).argmax(1) for i in range(0, len(test), 64)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fetalclip-tiny")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--min-images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--machines", default="", help="comma-separated machines to hold out (default: each in turn)")
    parser.add_argument("--classes", default="", help="comma-separated planes to keep (default: all six)")
    parser.add_argument("--augment", choices=("basic", "ultrasound"), default="basic", help="the baseline's augmentation")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    machines = [m.strip() for m in args.machines.split(",") if m.strip()]
    kept = [c.strip() for c in args.classes.split(",") if c.strip()]

    import fetalclip
    from fetalclip.data.datasets import open_dataset
    from fetalclip.data.sample import domain_of
    from fetalclip.models.preprocess import pad_to_square, to_rgb_image
    from fetalclip.tasks.transfer_tasks import TransferPlanes
    from fetalclip.train.augment import UltrasoundAugmentation

    data_root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data"))
    dataset = open_dataset(f"fpdb:{data_root / 'fetal_planes_db'}")
    if kept:
        dataset = dataset.subset([i for i, r in enumerate(dataset.records) if r["label"] in kept])
    model = fetalclip.load(args.model)

    started = time.perf_counter()
    ours = TransferPlanes({"min_images": args.min_images, "held_out": machines}).run(
        model, dataset, progress=False, seed=args.seed, n_bootstrap=args.bootstrap)
    ours_s = time.perf_counter() - started

    records = dataset.records
    classes = sorted({r["label"] for r in records})
    labels = np.array([classes.index(r["label"]) for r in records])
    images = torch.stack([model.preprocess(dataset[i]["image"]) for i in range(len(dataset))])
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    squares = None
    if args.augment == "ultrasound":  # the padded squares the augmentation crops from, as pretraining caches them
        side = UltrasoundAugmentation().source_side(model.preprocess.config.image_size)
        squares = [np.array(pad_to_square(to_rgb_image(dataset[i]["image"])).resize((side, side), model.preprocess._filter))
                   for i in range(len(dataset))]
    machine_of = np.array([domain_of(r, "us_machine") for r in records])
    started = time.perf_counter()
    baseline = {}
    for machine in ours.details["held_out"]:
        test, train = np.flatnonzero(machine_of == machine), np.flatnonzero(machine_of != machine)
        predicted = resnet_predictions(images, squares, labels, train, test, len(classes), args.epochs, args.seed, args.augment,
                                       model.preprocess)
        baseline[machine] = macro_f1_with_ci(labels[test], predicted, args.bootstrap, args.seed)
    baseline_s = time.perf_counter() - started

    print(f"{'machine':14s} {'images':>6s} {'ours LP F1 [95% CI]':>22s} {'ResNet-18 F1 [95% CI]':>24s}")
    for machine in ours.details["held_out"]:
        metric = ours.metrics["probe_macro_f1_" + machine.lower().replace(" ", "_")]
        f1, low, high = baseline[machine]
        print(f"{machine:14s} {ours.details['domains'][machine]['n_test']:6d} "
              f"{metric.value:8.1f} [{metric.ci[0]:.1f}, {metric.ci[1]:.1f}] {f1:10.1f} [{low:.1f}, {high:.1f}]")
    ours_mean, base_mean = ours.metrics["probe_macro_f1"].value, float(np.mean([v[0] for v in baseline.values()]))
    print(f"ours ({args.model}): mean LOMO macro F1 {ours_mean:.1f} (zero-shot {ours.metrics['zeroshot_macro_f1'].value:.1f}), "
          f"{ours_s:.0f} s")
    print(f"baseline (ResNet-18 from scratch, {args.epochs} epochs, {args.augment} augmentation): mean LOMO macro F1 "
          f"{base_mean:.1f}, {baseline_s:.0f} s")
    print(f"ratio: {ours_mean / base_mean:.3f}")


if __name__ == "__main__":
    main()
