"""The benchmark harness: every requested task for every model, resumable, with provenance.

``run_benchmark`` checks everything that can fail cheaply before computing anything (model specs resolve to
weights on disk, data specs open, task names exist), because discovering a missing baseline after two hours
of encoding is the failure users hate most. It then walks models (outer loop: a ViT-L is loaded once) and
tasks (inner loop), reusing every stored result whose fingerprint matches (see ``results.py``) and loading a
model only if one of its cells must actually be computed. Each finished cell is persisted before the next
starts, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import FetalCLIPError
from ..provenance import base_provenance
from .baselines import baseline_checksum, is_baseline_spec, load_baseline, sha256_file
from .results import STATUS_DONE, STATUS_FAILED, ResultsStore
from .tasks import DATA_KEYS, TaskContext, TaskRegistry, TaskUnavailable, default_registry

STORE_DIR = "store"
CACHE_DIR = "cache"
_LABEL = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


@dataclass(frozen=True)
class ModelRef:
    label: str  # the row name in the table
    spec: str  # what loads it: registered name, checkpoint path, hf-hub: or open_clip: reference


def parse_model_args(values: Sequence[str]) -> list[ModelRef]:
    """``--model`` values, each ``SPEC`` or ``LABEL=SPEC``; labels default to a short form of the spec and are unique."""
    refs: list[ModelRef] = []
    seen: dict[str, int] = {}
    for value in values:
        match = _LABEL.match(value)
        if match and not Path(value).exists():
            label, spec = match.group(1), match.group(2)
        else:
            spec = value
            label = _default_label(spec)
        if label in seen:
            seen[label] += 1
            label = f"{label}#{seen[label]}"
        else:
            seen[label] = 1
        refs.append(ModelRef(label, spec))
    return refs


def _default_label(spec: str) -> str:
    """A short row name: a path's last component, an open_clip spec without its prefix or weights folder."""
    body = spec.removeprefix("open_clip:")
    arch, at, weights = body.partition("@")
    if at:
        return f"{arch}@{Path(weights).name or weights}"
    path = Path(body.removeprefix("local-dir:"))
    return path.name if path.name and (os.sep in body or path.exists()) else body


def parse_data_args(values: Sequence[str]) -> dict[str, str]:
    """``--data KEY=SPEC`` values (KEY in planes, brain, ga, seg, clips) -> {key: spec}."""
    data: dict[str, str] = {}
    for value in values:
        key, sep, spec = value.partition("=")
        if not sep or not spec:
            raise FetalCLIPError(f"--data {value!r}: expected KEY=SPEC, e.g. planes=fpdb:DIR (keys: {', '.join(DATA_KEYS)})")
        if key not in DATA_KEYS:
            raise FetalCLIPError(f"--data {value!r}: unknown key {key!r}; use one of {', '.join(DATA_KEYS)}")
        data[key] = spec
    return data


# -- checksums -----------------------------------------------------------------------------------------------
class ChecksumMemo:
    """sha256 of large files, remembered by (path, size, mtime) so reruns do not rehash gigabytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._memo = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self._memo = {}

    def file(self, file: Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self._memo:
            self._memo[key] = sha256_file(file)
            from ..io import write_json_atomic

            write_json_atomic(self.path, self._memo)
        return self._memo[key]


def model_checksum(spec: str, seed: int = 0, memo: ChecksumMemo | None = None) -> str:
    """sha256 identifying a model's weights: of the weights file, or of (architecture, seed) for random init."""
    from ..models.checkpoint import WEIGHTS_FILE, is_checkpoint_dir
    from ..models.hub import PREFIX as HUB_PREFIX
    from ..models.hub import resolve_hub_reference
    from ..models.registry import get_model_config, list_models

    hash_file = memo.file if memo is not None else sha256_file
    if is_baseline_spec(spec):
        return baseline_checksum(spec, seed=seed)
    path = resolve_hub_reference(spec) if spec.startswith(HUB_PREFIX) else Path(spec).expanduser()
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise FetalCLIPError(f"{path}: folder is not a fetalclip checkpoint (needs config.json and model.safetensors)")
        return hash_file(path / WEIGHTS_FILE)
    if path.is_file():
        return hash_file(path.parent / WEIGHTS_FILE if path.name == "config.json" else path)
    if spec in list_models():
        payload = json.dumps({"model": spec, "seed": seed, "config": get_model_config(spec)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()
    raise FetalCLIPError(f"--model {spec!r}: not a registered model, checkpoint, file, hf-hub: or open_clip: reference")


def load_model(spec: str, device: str = "cpu", seed: int = 0, label: str | None = None):
    """Our loader for our models, the baseline loader for open_clip ones."""
    if is_baseline_spec(spec):
        return load_baseline(spec, device=device, seed=seed, label=label)
    from ..models import load

    return load(spec, device=device, seed=seed)


# Fields that define what a dataset *is* for a benchmark (paths are made relative to the data root).
_MANIFEST_FIELDS = ("label", "brain_plane", "patient", "split", "pixel_spacing_mm", "hc_mm", "ga_days", "frame_index")


def manifest_checksum(dataset) -> str:
    """sha256 of the dataset's manifest: each record's relative file name, file size and labelled fields."""
    sources = [str(record["source"]) for record in dataset.records]
    root = os.path.commonpath([os.path.dirname(s) for s in sources]) if sources else ""
    digest = hashlib.sha256()
    for record, source in zip(dataset.records, sources):
        try:
            size = os.path.getsize(source)
        except OSError:
            size = -1
        relative = os.path.relpath(source, root) if root else source
        row = {"file": relative, "size": size}
        row.update({key: record.get(key) for key in _MANIFEST_FIELDS if record.get(key) is not None})
        if row.get("patient") == source:
            row["patient"] = relative  # adapters without patient ids use the path itself
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkRun:
    """What a run produced: entries in (model, task) order, skip notes and provenance."""

    models: list[ModelRef]
    tasks: list[str]
    entries: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    provenance: dict[str, Any]
    registry: TaskRegistry = field(repr=False, default_factory=default_registry)
    computed: int = 0
    reused: int = 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _primary_text(entry: Mapping[str, Any], primary: str | None) -> str:
    value = (entry.get("metrics") or {}).get(primary or "")
    if not value or value.get("value") is None:
        return ""
    text = f"{primary} {value['value']:.2f}"
    return text + (f" [{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]" if value.get("ci") else "")


def run_benchmark(
    models: Sequence[ModelRef],
    data: Mapping[str, str],
    out_dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    n_bootstrap: int = 10_000,
    options: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
    fresh: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    model_loader: Callable[..., Any] = load_model,
    held_out_of: str | os.PathLike | None = None,
) -> BenchmarkRun:
    """Compute (or reuse) every requested task for every model; results land in ``out_dir/store``.

    ``held_out_of``: a training run folder; every dataset keeps only the patients that run never trained on
    (recomputed from its config), so a pretrained model is scored on unseen patients. The restricted manifest
    has its own checksum, so stored results of the whole datasets are never reused for it.
    """
    from ..data.datasets import open_dataset
    from ..progress import progress_bar
    from ..train.heldout import held_out_patients, only_patients

    registry = registry or default_registry()
    task_names = list(tasks) if tasks else registry.names()
    specs = [registry.get(name) for name in task_names]  # unknown names fail here, before any work
    if not models:
        raise FetalCLIPError("no --model given")
    unknown_data = sorted(set(data) - set(DATA_KEYS))
    if unknown_data:
        raise FetalCLIPError(f"unknown data key(s) {unknown_data}; use {', '.join(DATA_KEYS)}")
    out_dir = Path(out_dir)
    store = ResultsStore(out_dir / STORE_DIR)
    cache_dir = out_dir / CACHE_DIR
    memo = ChecksumMemo(store.root / "checksums.json")

    # Every task's effective options (defaults + given), checked now: a misspelt option fails before any work.
    unknown_tasks = sorted(set(options or {}) - set(registry.names()))
    if unknown_tasks:
        raise FetalCLIPError(f"options for unknown task(s) {', '.join(unknown_tasks)}; known tasks: {', '.join(registry.names())}")
    resolved = {spec.name: spec.resolve_options((options or {}).get(spec.options_key)) for spec in specs}

    skipped: list[dict[str, Any]] = []
    runnable = []
    for spec in specs:
        if spec.data_key in data:
            runnable.append(spec)
        else:
            reason = f"no data: pass --data {spec.data_key}=SPEC"
            skipped.append({"task": spec.name, "model": None, "reason": reason})
            echo(f"skip {spec.name}: {reason}")

    patients = held_out_patients(held_out_of) if held_out_of is not None else None
    datasets, data_info = {}, {}
    for key in sorted({spec.data_key for spec in runnable}):
        datasets[key] = open_dataset(data[key])
        if patients is not None:
            datasets[key] = only_patients(datasets[key], patients, f"that {held_out_of} held out of training")
        data_info[key] = {"spec": data[key], "manifest_sha256": manifest_checksum(datasets[key]), "n": len(datasets[key])}
        if patients is not None:
            data_info[key]["held_out_of"] = str(held_out_of)
        if datasets[key].missing:
            echo(f"data {key}: {len(datasets[key].missing)} listed files are missing and left out")

    model_info = {}
    for ref in models:  # resolving every model first: a missing baseline is reported before hours of work
        model_info[ref.label] = {"spec": ref.spec, "sha256": model_checksum(ref.spec, seed=seed, memo=memo)}

    entries: list[dict[str, Any]] = []
    computed = reused = 0
    total = len(models) * len(runnable)
    position = 0
    bar = progress_bar(total=total, disable=not progress or total == 0, unit="cell", desc="benchmark")

    def say(line: str) -> None:
        # Lines go above the progress bar when there is one, else to ``echo`` (tests capture it).
        (bar.write if not bar.disable else echo)(line)

    try:
        for ref in models:
            model = None
            for spec in runnable:
                position += 1
                bar.set_description(f"{ref.label} / {spec.name}")
                task_options = resolved[spec.name]
                fingerprint = {
                    "model_sha256": model_info[ref.label]["sha256"],
                    "data_sha256": data_info[spec.data_key]["manifest_sha256"],
                    "seed": seed,
                    "task_version": spec.version,
                    "n_bootstrap": n_bootstrap,
                    "options": task_options,
                }
                prefix = f"[{position}/{total}] {ref.label} / {spec.name}"
                stored = None if fresh else store.lookup(ref.label, spec.name, fingerprint)
                if stored is not None:
                    entries.append(stored)
                    reused += 1
                    say(f"{prefix}: stored result reused {_primary_text(stored, spec.primary)}".rstrip())
                    bar.update(1)
                    continue
                if model is None:
                    model = model_loader(ref.spec, device=device, seed=seed, label=ref.label)
                context = TaskContext(
                    cache_dir=cache_dir,
                    seed=seed,
                    device=device,
                    n_bootstrap=n_bootstrap,
                    progress=progress,
                    model_label=ref.label,
                    options={**(options or {}), spec.options_key: task_options},
                    data_sha256=data_info[spec.data_key]["manifest_sha256"],
                )
                started = time.perf_counter()
                try:
                    output = spec.fn(model, datasets[spec.data_key], context)
                    status, error = STATUS_DONE, None
                except TaskUnavailable as exc:
                    skipped.append({"task": spec.name, "model": ref.label, "reason": str(exc)})
                    say(f"{prefix}: skipped ({exc})")
                    bar.update(1)
                    continue
                except FetalCLIPError as exc:
                    output, status, error = {}, STATUS_FAILED, str(exc)
                elapsed = time.perf_counter() - started
                entry = {
                    "model": ref.label,
                    "task": spec.name,
                    "status": status,
                    "error": error,
                    "fingerprint": fingerprint,
                    "metrics": output.get("metrics", {}),
                    "details": output.get("details", {}),
                    "figures": output.get("figures", {}),
                    "elapsed_s": round(elapsed, 3),
                    "finished_utc": _now(),
                    "provenance": {
                        "model_spec": ref.spec,
                        "model_sha256": fingerprint["model_sha256"],
                        "model_weights": (getattr(model, "config", {}) or {}).get("provenance", {}).get("weights"),
                        "data_spec": data[spec.data_key],
                        "data_manifest_sha256": fingerprint["data_sha256"],
                        "seed": seed,
                        **{key: value for key, value in base_provenance().items() if key != "created_utc"},
                    },
                }
                store.put(entry)
                entries.append(entry)
                computed += 1
                summary = f"failed: {error}" if error else f"done in {elapsed:.1f}s {_primary_text(entry, spec.primary)}"
                say(f"{prefix}: {summary}".rstrip())
                bar.update(1)
            del model
    finally:
        bar.close()

    provenance = {
        **base_provenance(),
        "seed": seed,
        "device": device,
        "n_bootstrap": n_bootstrap,
        "models": model_info,
        "data": data_info,
    }
    return BenchmarkRun(list(models), task_names, entries, skipped, provenance, registry, computed, reused)


__all__ = [
    "BenchmarkRun",
    "ModelRef",
    "load_model",
    "manifest_checksum",
    "model_checksum",
    "parse_data_args",
    "parse_model_args",
    "run_benchmark",
]
