"""Benchmark: how well pretraining recipes transfer to a scanner and a hospital they never saw (issue 20).

Each ``--run`` is a training run folder (``fetalclip train --out RUN``) whose recipe held one machine out of
pretraining with ``holdout_group`` (``configs/`` recipes hold out ``us_machine=Aloka``: 72 of the 222
FETAL_PLANES_DB images, the only non-GE machine with enough of them). Every number is on images the encoder
never trained on:

- **unseen machine**: the linear probe (``transfer-planes``, trained on the other machines' images) and zero-shot
  planes (published protocol: every packaged class offered, distractors included) on the held-out machine,
  for the six FETAL_PLANES_DB planes and for the four an external cohort has (abdomen, brain, femur, thorax);
- the same four planes with a logistic-regression probe (scikit-learn, L2-normalised embeddings);
- **other hospital**: HC18's held-out patients (Radboud, another country and machine; all heads): the share a
  4-plane logistic-regression probe trained on FETAL_PLANES_DB alone calls "brain", and the share zero-shot
  calls "brain".

95% intervals: the probe's are its bootstrap over test images, zero-shot's its own bootstrap, the HC18 shares
Wilson intervals. ``--random`` adds the same architecture with random weights (the floor every recipe must
clear). Prints one markdown table (the one in docs/pretraining.md).

    FETALCLIP_DATA=/path/to/shared/data python benchmarks/transfer_recipes.py --run runs/a --run runs/b [--random]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from transfer_baseline import macro_f1_with_ci  # noqa: E402 - the same interval the ResNet baseline reports

FOUR = ("abdomen", "brain", "femur", "thorax")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(share, low, high) in percent."""
    if not n:
        return (float("nan"),) * 3
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * p, max(0.0, 100 * (centre - half)), min(100.0, 100 * (centre + half))


def fmt(metric) -> str:
    if metric is None or metric.value is None:
        return "-"
    if metric.ci is None or metric.ci[0] is None:
        return f"{metric.value:.1f}"
    return f"{metric.value:.1f} [{metric.ci[0]:.0f}, {metric.ci[1]:.0f}]"


def held_out_hc18(run: str, config: dict):
    """The run's held-out HC18 patients (the split ``fetalclip train`` drew, recomputed from its config)."""
    from fetalclip.data.datasets import open_dataset
    from fetalclip.train.heldout import held_out_patients, only_patients

    hc18 = [spec for spec in config["data"] if spec.startswith("hc18:")]
    return only_patients(open_dataset(hc18[0]), held_out_patients(run), f"{run} held out") if hc18 else None


def evaluate(model, fpdb, hc18_heads, machine: str, seed: int, n_bootstrap: int, cache_root: Path) -> dict[str, str]:
    from sklearn.linear_model import LogisticRegression

    from fetalclip.data.sample import domain_of
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.transfer_tasks import TransferPlanes
    from fetalclip.tasks.zeroshot_tasks import ZeroShotPlanes

    cache = FeatureCache(model, cache_root)  # on disk: each image is encoded once for all the columns below
    row: dict[str, str] = {}
    for tag, classes in (("6", ()), ("4", FOUR)):
        result = TransferPlanes({"group_by": "us_machine", "held_out": [machine], "classes": list(classes)}).run(
            model, fpdb, cache, progress=False, seed=seed, n_bootstrap=n_bootstrap)
        key = machine.lower().replace(" ", "_")
        row[f"probe{tag}"] = fmt(result.metrics[f"probe_macro_f1_{key}"])
        row[f"zs{tag}"] = fmt(result.metrics.get(f"zeroshot_macro_f1_{key}"))
    # The same four planes with scikit-learn's logistic regression on L2-normalised embeddings (the probe an
    # outside check is likely to use), trained on the other machines, scored on the held-out one.
    four = [i for i, r in enumerate(fpdb.records) if r.get("label") in FOUR]
    train = [i for i in four if domain_of(fpdb.records[i], "us_machine") != machine]
    test = [i for i in four if domain_of(fpdb.records[i], "us_machine") == machine]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    probe = LogisticRegression(max_iter=5000, C=1.0, class_weight="balanced").fit(
        unit(cache.embeddings(fpdb.subset(train))), [fpdb.records[i]["label"] for i in train])
    truth = np.array([fpdb.records[i]["label"] for i in test])
    f1, low, high = macro_f1_with_ci(truth, probe.predict(unit(cache.embeddings(fpdb.subset(test)))), n_bootstrap, seed)
    row["lr4"] = f"{f1:.1f} [{low:.0f}, {high:.0f}]"
    if hc18_heads is not None and len(hc18_heads):
        heads = cache.embeddings(hc18_heads)
        called = probe.predict(unit(heads))
        share, low, high = wilson(int(np.sum(called == "brain")), len(called))
        row["hc18_probe"] = f"{share:.1f} [{low:.0f}, {high:.0f}]"
        zs = ZeroShotPlanes().run(model, hc18_heads, cache, progress=False, n_bootstrap=0)
        share, low, high = wilson(int(round(zs.metrics["accuracy"].value * len(hc18_heads) / 100)), len(hc18_heads))
        row["hc18_zs"] = f"{share:.1f} [{low:.0f}, {high:.0f}]"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="a training run folder (repeatable)")
    parser.add_argument("--random", action="store_true", help="add the first run's architecture with random weights")
    parser.add_argument("--machine", default=None, help="held-out machine (default: the runs' holdout_group value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    import fetalclip
    from fetalclip.data.datasets import open_dataset

    data_root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data"))
    fpdb = open_dataset(f"fpdb:{data_root / 'fetal_planes_db'}")
    cache_root = Path(tempfile.mkdtemp(prefix="transfer-recipes-"))  # features are keyed by the weights' fingerprint
    rows = []
    configs = {run: json.loads((Path(run) / "config.json").read_text()) for run in args.run}
    for run, config in configs.items():
        machine = args.machine or (config.get("holdout_group") or "us_machine=Aloka").partition("=")[2]
        heads = held_out_hc18(run, config)
        model = fetalclip.load(str(Path(run) / "model"))
        rows.append((Path(run).name, evaluate(model, fpdb, heads, machine, args.seed, args.bootstrap, cache_root)))
        print(f"{rows[-1][0]}: {rows[-1][1]}", file=sys.stderr, flush=True)
    if args.random and configs:
        run, config = next(iter(configs.items()))
        machine = args.machine or (config.get("holdout_group") or "us_machine=Aloka").partition("=")[2]
        model = _random(config["model"], config["seed"])
        rows.append((f"{config['model']} (random weights)",
                     evaluate(model, fpdb, held_out_hc18(run, config), machine, args.seed, args.bootstrap, cache_root)))
    columns = [("probe6", "LP F1, 6 planes"), ("probe4", "LP F1, 4 planes"), ("lr4", "LR F1, 4 planes"), ("zs6", "ZS F1, 6 planes"),
               ("zs4", "ZS F1, 4 planes"), ("hc18_probe", "HC18 heads: LP says brain %"), ("hc18_zs", "HC18 heads: ZS says brain %")]
    print("| run | " + " | ".join(title for _, title in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows:
        print(f"| {name} | " + " | ".join(row.get(key, "-") for key, _ in columns) + " |")
    shutil.rmtree(cache_root, ignore_errors=True)


def _random(name: str, seed: int):
    from fetalclip.train.modeling import build_model

    return build_model(name, seed=seed).eval()


if __name__ == "__main__":
    main()
