"""Transfer to unseen scanners: leave-one-machine-out linear probe and zero-shot on the planes (issue 20).

A foundation model is worth its features on scans from other hospitals and machines. The data at hand has that
axis inside it: FETAL_PLANES_DB records the ultrasound machine of every image (``US_Machine``: Aloka, Voluson E6,
Voluson S10, other), and no patient was scanned on two machines. So each machine with enough images is held out
in turn: the probe trains (patient-level folds, the linear probe's own recipe) on the other machines' images and
is tested on the held-out machine's; zero-shot is scored on the held-out machine's images too (it trains on
nothing, so its per-machine numbers show how evenly it reads the machines). The headline is the mean over
held-out machines, each machine weighing the same, beside the in-domain ``probe-planes`` / ``zeroshot-planes``.

``group_by`` names the record field (or metadata field) that defines the domains, so a dataset with another
split (site, country, dataset name) is held out the same way. Patients never cross a held-out split: a patient
whose images fall in two groups makes the task refuse, rather than leak.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ..data.sample import domain_of, patient_id
from ..errors import FetalCLIPError
from .probe_tasks import LinearProbeOptions, _cache, _labelled_data
from .result import Metric, Task, TaskResult, TaskUnavailable, percent


@dataclass(frozen=True)
class TransferOptions(LinearProbeOptions):
    TASK: ClassVar[str] = "transfer-planes"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"runs": 5, "augment": 5}

    group_by: str = "us_machine"  # record or metadata field whose values are the domains held out in turn
    min_images: int = 10  # a domain with fewer labelled images is not held out (its F1 would be noise)
    zeroshot: bool = True  # also score zero-shot planes on each held-out domain
    held_out: tuple[str, ...] = ()  # hold out only these domains (e.g. the machine a pretraining run never saw); () = each
    classes: tuple[str, ...] = ()  # only these planes, e.g. an external cohort's four; () = every labelled plane

    def check(self) -> None:
        super().check()
        self.require_whole("min_images")


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "domain"


def _rows(data, indices, with_augmented: bool):
    idx = np.asarray(indices, dtype=np.int64)
    return replace(data, x=data.x[idx], labels=[data.labels[i] for i in idx], patients=[data.patients[i] for i in idx],
                   splits=None, augmented=data.augmented[:, idx] if with_augmented and data.augmented is not None else None)


class TransferPlanes(Task):
    """Leave-one-domain-out (machine, by default) linear probe and zero-shot on the six/five planes."""

    name = "transfer-planes"
    Options = TransferOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .probe import labelled_subset, linear_probe
        from .zeroshot_tasks import ZeroShotPlanes

        options = self.options
        try:
            labelled = labelled_subset(dataset, "label", options.classes or None)
        except FetalCLIPError as exc:
            raise TaskUnavailable(f"{self.name}: {exc}") from None
        domains = [domain_of(record, options.group_by) for record in labelled.records]
        counts = Counter(d for d in domains if d is not None)
        held_out = sorted(d for d, n in counts.items() if n >= options.min_images)
        missing = [d for d in options.held_out if d not in counts]
        if missing:
            raise TaskUnavailable(f"{self.name}: {dataset.name} has no labelled image with {options.group_by} = "
                                  f"{missing[0]!r} (it has {', '.join(sorted(counts)) or 'none'})")
        if options.held_out:
            held_out = [d for d in held_out if d in options.held_out]
        if len(counts) < 2 or not held_out:
            raise TaskUnavailable(f"{self.name}: {dataset.name} has {len(counts)} {options.group_by} group(s), {len(held_out)} "
                                  f"to hold out with >= {options.min_images} labelled images; holding one out needs at least two groups")
        self._check_patients(labelled.records, domains)
        cache = _cache(model, cache, progress)
        data = _labelled_data(self.name, model, labelled, cache, progress, seed, "label", (), options.augment)
        recipe = options.recipe()

        metrics: dict[str, Metric] = {}
        per_domain: dict[str, Any] = {}
        skipped: list[dict[str, str]] = []
        probe_f1s, zeroshot_f1s = [], []
        for domain in held_out:
            test_idx = [i for i, d in enumerate(domains) if d == domain]
            train_idx = [i for i, d in enumerate(domains) if d is not None and d != domain]
            key = _key(domain)
            try:
                found = linear_probe(_rows(data, train_idx, True), recipe, _rows(data, test_idx, False), seed=seed,
                                     n_bootstrap=max(n_bootstrap, 1), progress=False).report
            except FetalCLIPError as exc:  # e.g. a class the other machines never show
                skipped.append({"source": domain, "reason": str(exc)})
                continue
            f1 = percent(found["macro_f1_mean"])
            probe_f1s.append(f1)
            metrics[f"probe_macro_f1_{key}"] = Metric(f1, ci=tuple(percent(v) for v in found["macro_f1_ci"]), n=found["n_test"])
            per_domain[domain] = {"n_train": len(train_idx), "n_test": len(test_idx), "classes": found["classes"],
                                  "probe_per_class": {c: percent(row["f1_mean"]) for c, row in found["per_class"].items()}}
            if options.zeroshot:
                try:
                    zs = ZeroShotPlanes({"batch_size": options.batch_size}).run(
                        model, labelled.subset(test_idx), cache, progress=False, n_bootstrap=n_bootstrap)
                except TaskUnavailable as exc:
                    skipped.append({"source": domain, "reason": f"zero-shot: {exc}"})
                else:
                    zeroshot_f1s.append(zs.metrics["macro_f1"].value)
                    metrics[f"zeroshot_macro_f1_{key}"] = zs.metrics["macro_f1"]
        if not probe_f1s:
            raise TaskUnavailable(f"{self.name}: no {options.group_by} group could be held out ({skipped[0]['reason']})")
        headline = {"probe_macro_f1": Metric(float(np.mean(probe_f1s)), n=len(probe_f1s))}
        if zeroshot_f1s:
            headline["zeroshot_macro_f1"] = Metric(float(np.mean([v for v in zeroshot_f1s if v is not None] or [np.nan])),
                                                   n=len(zeroshot_f1s))
        return TaskResult(
            task=self.name,
            metrics={**headline, **metrics},
            details={"group_by": options.group_by, "held_out": list(per_domain), "domains": per_domain,
                     "not_held_out": sorted(d for d, n in counts.items() if n < options.min_images),
                     "no_group": sum(d is None for d in domains), "spread": "mean over held-out groups, each weighing the same"},
            skipped=skipped,
        )

    def _check_patients(self, records, domains) -> None:
        seen: dict[str, str] = {}
        for record, domain in zip(records, domains):
            if domain is None:
                continue
            patient = patient_id(record)
            if seen.setdefault(patient, domain) != domain:
                raise FetalCLIPError(f"{self.name}: patient {patient} has images in two {self.options.group_by} groups "
                                     f"({seen[patient]!r}, {domain!r}); holding one out would leak that patient")


__all__ = ["TransferOptions", "TransferPlanes", "domain_of"]
