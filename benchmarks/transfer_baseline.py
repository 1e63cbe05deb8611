"""Benchmark: leave-one-machine-out on FETAL_PLANES_DB, a frozen encoder's linear probe against a supervised
ResNet-18 trained from scratch on the very same images (the baseline issue 20 asks pretraining to beat).

For each ultrasound machine with at least ``--min-images`` images, both sides train on the other machines'
images (patients never cross: no FETAL_PLANES_DB patient was scanned on two machines) and are tested on the
held-out machine's. Ours is the ``transfer-planes`` task (``tasks.transfer_tasks``: cached embeddings, the
linear probe's patient-level folds); the baseline is torchvision's ResNet-18 (``weights=None``) on the project's
own 224 preprocessing (grey replicated to three channels), flips and small crops as augmentation, AdamW, a
fixed number of epochs, the last epoch's weights. Macro F1 per held-out machine and the mean over machines (each
weighing the same); the last line is ours over the baseline.

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/transfer_baseline.py --model runs/tiny/model [--epochs 15]
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


def resnet_macro_f1(images: torch.Tensor, labels: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int,
                    epochs: int, seed: int) -> float:
    import torchvision
    from sklearn.metrics import f1_score

    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x_train, y_train = images[train], torch.as_tensor(labels[train])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
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
        predicted = torch.cat([net(images[test][i:i + 64]).argmax(1) for i in range(0, len(test), 64)]).numpy()
    present = sorted(set(labels[test].tolist()))
    return 100.0 * f1_score(labels[test], predicted, labels=present, average="macro", zero_division=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fetalclip-tiny")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--min-images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import fetalclip
    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.transfer_tasks import TransferPlanes, domain_of

    data_root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data"))
    dataset = open_dataset(f"fpdb:{data_root / 'fetal_planes_db'}")
    model = fetalclip.load(args.model)

    started = time.perf_counter()
    ours = TransferPlanes({"min_images": args.min_images}).run(model, dataset, progress=False, seed=args.seed, n_bootstrap=1000)
    ours_s = time.perf_counter() - started

    records = dataset.records
    classes = sorted({r["label"] for r in records})
    labels = np.array([classes.index(r["label"]) for r in records])
    machines = np.array([domain_of(r, "us_machine") for r in records])
    images = torch.stack([model.preprocess(dataset[i]["image"]) for i in range(len(dataset))])
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    started = time.perf_counter()
    baseline = {}
    for machine in ours.details["held_out"]:
        test, train = np.flatnonzero(machines == machine), np.flatnonzero(machines != machine)
        baseline[machine] = resnet_macro_f1(images, labels, train, test, len(classes), args.epochs, args.seed)
    baseline_s = time.perf_counter() - started

    print(f"{'machine':14s} {'images':>6s} {'ours LP F1':>11s} {'ResNet-18 F1':>13s}")
    for machine in ours.details["held_out"]:
        key = "probe_macro_f1_" + machine.lower().replace(" ", "_")
        print(f"{machine:14s} {ours.details['domains'][machine]['n_test']:6d} {ours.metrics[key].value:11.1f} {baseline[machine]:13.1f}")
    ours_mean, base_mean = ours.metrics["probe_macro_f1"].value, float(np.mean(list(baseline.values())))
    print(f"ours ({args.model}): mean LOMO macro F1 {ours_mean:.1f} (zero-shot {ours.metrics['zeroshot_macro_f1'].value:.1f}), "
          f"{ours_s:.0f} s")
    print(f"baseline (ResNet-18 from scratch, {args.epochs} epochs): mean LOMO macro F1 {base_mean:.1f}, {baseline_s:.0f} s")
    print(f"ratio: {ours_mean / base_mean:.3f}")


if __name__ == "__main__":
    main()
