"""The end-to-end demo: phantom data, pretraining, then the benchmark table of the pretrained model beside its
own random initialisation, on held-out phantom patients.

The demo is orchestration only. Every step is the library code a user runs on real data: ``sim.write_phantom``
writes ordinary ``csv:`` datasets, ``train.train`` pretrains ``fetalclip-tiny`` on one of them, and
``bench.run_benchmark`` / ``bench.write_report`` evaluate both models and write ``report.html``. What the demo
adds is a plan sized by one time budget and a verdict: a pretrained model that does not beat its own random
initialisation on every task of the table means something in the chain is broken, so the demo says which
task and fails.

Held out: the evaluation sets are rendered with other seeds than the training set, so their synthetic
patients (``sim{seed}-p...``), ages, probes and speckle are all new; training never sees them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import FetalCLIPError

RANDOM_LABEL = "random-init"
PRETRAINED_LABEL = "pretrained"
MODEL = "fetalclip-tiny"

# Tasks of the demo's table (plus two figure-only tasks). zeroshot-brain and the linear brain probe are left
# out: telling three brain sub-planes apart needs more training than a ten-minute budget gives the tiny model.
TABLE_TASKS = ("zeroshot-planes", "zeroshot-ga", "probe-planes", "clips", "segment-hc", "biometry-hc")
FIGURE_TASKS = ("embedding-map", "cams")

# Seconds per step of 32 images for fetalclip-tiny on 2 CPU cores (measured: 1.1-1.3 s) and the share of the
# budget that pretraining gets; the rest goes to rendering and to evaluating two models (~3 minutes).
SECONDS_PER_STEP = 1.15
TRAIN_SHARE = 0.6
DEFAULT_MINUTES = 9.0


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of every step, derived from the time budget; recorded in ``demo.json``."""

    minutes: float
    steps: int
    train_images: int  # all views
    train_head_images: int  # extra head images: zero-shot age is read on heads
    planes_images: int
    head_images: int
    batch_size: int = 32
    size: int = 224
    seed: int = 0
    segment_epochs: int = 12
    n_bootstrap: int = 1000
    clips: int = 64  # four-chamber cine loops, two per patient, half the patients with a heart defect
    clip_frames: int = 8
    train_chd: float = 0.5  # share of training patients whose thorax views show (and captions name) a defect

    @property
    def seeds(self) -> dict[str, int]:
        """Phantom seeds: one per set, all different, so no evaluation patient is a training patient."""
        base = self.seed * 10
        return {"train": base + 1, "train-heads": base + 4, "planes": base + 2, "heads": base + 3, "clips": base + 5}


def plan_demo(minutes: float = DEFAULT_MINUTES, seed: int = 0) -> DemoPlan:
    """A plan that fits ``minutes`` on 2 CPU cores: pretraining steps first, evaluation sets to match."""
    if not math.isfinite(minutes) or minutes <= 0:
        raise FetalCLIPError(f"--minutes {minutes}: must be a positive number")
    steps = max(10, int(minutes * 60 * TRAIN_SHARE / SECONDS_PER_STEP))
    small = minutes < 3  # the smoke run: a minute or two, enough to exercise every step
    # Enough distinct images that pretraining sees each one ~8 times at most; a third of them extra heads.
    distinct = min(1200, max(240, steps * 32 // 8))
    return DemoPlan(
        minutes=float(minutes),
        steps=steps,
        train_images=distinct - distinct // 3,
        train_head_images=distinct // 3,
        planes_images=96 if small else 240,  # 6 classes x 4 images per patient: whole patients per class
        # The segmentation probe trains on 80% of these: with fewer than ~200 the decoder overfits to the
        # pretrained encoder's tokens, and a random encoder's (near-linear projections of the pixels) do as well.
        head_images=48 if small else 240,
        segment_epochs=6 if small else 12,
        n_bootstrap=200 if small else 1000,
        clips=40 if small else 64,
        clip_frames=4 if small else 8,
        # A minute of pretraining learns the views only from the plain thorax views; heart close-ups would take
        # their share of it, and no plan this short reads a defect anyway.
        train_chd=0.0 if small else 0.5,
        seed=seed,
    )


# What each table task must show for the demo to pass, and why. The verdict rests on the tasks that read what
# image-text pretraining puts into the embedding: zero-shot planes and the linear probe (margins of tens of
# points in every measured run) must be won; zero-shot GA (a modest age model, ~13 points ahead) must not be
# lost. Segmentation and biometry are shown but not judged: the phantom's heads lie on a uniform background, so
# the decoder's own image branch segments them from pixels with any encoder (random init reaches ~98% Dice),
# and the encoder moves them by less than their noise. Heart-defect detection on cine loops is shown but not
# judged: the defect is a small local change at a varying position, and four minutes of pretraining do not
# put it into the tiny model's embedding (both models at chance in every measured run, see docs/demo.md).
REQUIRE_WIN = "win"
REQUIRE_NO_LOSS = "no loss"
VERDICT_RULES: dict[str, tuple[str | None, str]] = {
    "zeroshot-planes": (REQUIRE_WIN, "reads the views pretraining taught the image and text towers"),
    "probe-planes": (REQUIRE_WIN, "reads the views from the frozen image embedding"),
    "zeroshot-ga": (REQUIRE_NO_LOSS, "a modest age model on the phantom: must not be worse, need not be ahead"),
    "segment-hc": (None, "the decoder segments phantom heads from pixels with any encoder"),
    "biometry-hc": (None, "measured on the segmentation probe's masks (see segment-hc)"),
    "clips": (None, "a local cue (a small ventricle, a septal gap): at this budget neither encoder reads it"),
}

NOT_JUDGED = (None, "not judged")
WIN, TIE, LOSS, MISSING = "ahead", "tie", "behind", "missing"


def judge(pretrained: float | None, pretrained_ci: tuple[float, float] | None, random_init: float | None,
          random_ci: tuple[float, float] | None, higher_is_better: bool) -> str:
    """``ahead`` / ``behind`` only when each model's value lies outside the other's confidence interval.

    A difference inside either interval is a ``tie``, whatever its sign: on another CPU the floats of a run
    move by about that much. A side without an interval cannot be told apart from noise, so it is a tie too.
    """
    if any(v is None or not math.isfinite(v) for v in (pretrained, random_init)):
        return MISSING
    if pretrained_ci is None or random_ci is None:
        return TIE
    sign = 1.0 if higher_is_better else -1.0  # flip "lower is better" metrics so that greater is better
    p, r = sign * pretrained, sign * random_init
    p_low, p_high = sorted(sign * c for c in pretrained_ci)
    r_low, r_high = sorted(sign * c for c in random_ci)
    if p > r_high and r < p_low:
        return WIN
    if p < r_low and r > p_high:
        return LOSS
    return TIE


@dataclass
class Comparison:
    """One table column: the primary metric (and CI) of both models, the outcome and what the verdict asks."""

    task: str
    metric: str
    higher_is_better: bool
    random_init: float | None
    pretrained: float | None
    random_ci: tuple[float, float] | None = None
    pretrained_ci: tuple[float, float] | None = None

    @property
    def outcome(self) -> str:
        return judge(self.pretrained, self.pretrained_ci, self.random_init, self.random_ci, self.higher_is_better)

    @property
    def requirement(self) -> str | None:
        return VERDICT_RULES.get(self.task, NOT_JUDGED)[0]

    @property
    def reason(self) -> str:
        return VERDICT_RULES.get(self.task, NOT_JUDGED)[1]

    @property
    def passes(self) -> bool:
        """Whether this column meets its requirement (a column that is not judged always does)."""
        if self.requirement == REQUIRE_WIN:
            return self.outcome == WIN
        if self.requirement == REQUIRE_NO_LOSS:
            return self.outcome in (WIN, TIE)
        return True


@dataclass
class DemoResult:
    plan: DemoPlan
    comparisons: list[Comparison]
    table: str
    report_paths: dict[str, Path]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every judged task meets its requirement (and there is something to judge)."""
        judged = [c for c in self.comparisons if c.requirement]
        return bool(judged) and all(c.passes for c in judged)

    def failing_tasks(self) -> list[str]:
        return [c.task for c in self.comparisons if not c.passes]


def compare_models(run, first: str = RANDOM_LABEL, second: str = PRETRAINED_LABEL) -> list[Comparison]:
    """The primary metric and CI of ``first`` and ``second`` for every table column of a benchmark run."""
    from .bench.report import primary_metric, table_specs

    entries = {(entry["model"], entry["task"]): entry for entry in run.entries}

    def value(label: str, spec) -> tuple[float | None, tuple[float, float] | None]:
        metric = primary_metric(entries.get((label, spec.name)), spec)
        if metric is None:
            return None, None
        ci = metric.get("ci")
        finite = ci is not None and all(c is not None and math.isfinite(c) for c in ci)
        return metric["value"], (float(ci[0]), float(ci[1])) if finite else None

    comparisons = []
    for spec in table_specs(run):
        (random_value, random_ci), (trained_value, trained_ci) = value(first, spec), value(second, spec)
        comparisons.append(Comparison(spec.name, spec.primary, spec.higher_is_better, random_value, trained_value,
                                      random_ci, trained_ci))
    return comparisons


def _write_sets(plan: DemoPlan, data_dir: Path, echo: Callable[[str], None], progress: bool) -> dict[str, str]:
    """Render the phantom sets (each reused when a finished one with the same spec is already there)."""
    import json

    from .sim.cine import cine_config_dict, parse_cine_spec, write_cine
    from .sim.dataset import config_dict, parse_sim_spec, write_phantom
    from .sim.render import RENDERER_VERSION

    images = (parse_sim_spec, config_dict, write_phantom, "sim.json", "images")
    cine = (parse_cine_spec, cine_config_dict, write_cine, "cine.json", "clips")
    sets = {
        "train": (images, f"{plan.train_images},chd={plan.train_chd}"),
        "train-heads": (images, f"{plan.train_head_images},classes=brain"),
        "planes": (images, f"{plan.planes_images}"),
        "heads": (images, f"{plan.head_images},classes=brain"),
        "clips": (cine, f"{plan.clips},frames={plan.clip_frames}"),
    }
    specs = {}
    for name, ((parse, as_dict, write, info_name, unit), spec) in sets.items():
        folder = data_dir / name
        n, config = parse(f"{spec},seed={plan.seeds[name]},size={plan.size}")
        manifest = folder / "manifest.csv"
        # The info file records what was rendered; the manifest is written last, so both present = finished.
        info = folder / info_name
        recorded = json.loads(info.read_text()) if manifest.is_file() and info.is_file() else {}
        wanted = json.loads(json.dumps(as_dict(config)))  # as it reads back from JSON
        if recorded.get("n") == n and recorded.get("config") == wanted and recorded.get("renderer") == RENDERER_VERSION:
            echo(f"phantom {name}: reusing {manifest}")
        else:
            from .progress import progress_bar

            bar = (lambda it, n=n, name=name, unit=unit: progress_bar(it, total=n, desc=f"phantom {name}", unit=unit,
                                                                      leave=False)) if progress else None
            summary = write(n, config, folder, progress=bar)
            echo(f"phantom {name}: {n} {unit}, {summary['patients']} patients -> {manifest}")
        specs[name] = f"csv:{manifest}"
    return specs


def _pretrain(plan: DemoPlan, train_specs: list[str], run_dir: Path, echo: Callable[[str], None], progress: bool):
    """Pretrain fetalclip-tiny from scratch on the training phantom.

    A finished run of the same plan is reused and an interrupted one resumed from its last checkpoint; a run
    of another plan in the demo's own folder, or one with nothing left to resume but no model, is replaced.
    """
    import json
    import shutil

    from .models.checkpoint import is_checkpoint_dir
    from .train import make_config, train
    from .train.checkpointing import list_checkpoints
    from .train.config import trajectory_differences

    model_dir = run_dir / "model"
    config = make_config(overrides={
        "model": MODEL, "data": list(train_specs), "steps": plan.steps, "batch_size": plan.batch_size,
        "lr": 1e-3, "warmup_steps": max(2, plan.steps // 12), "min_lr": 1e-5, "weight_decay": 0.2,
        "cache_images": True, "seed": plan.seed, "device": "cpu", "precision": "fp32", "progress": progress,
        "save_every": max(25, plan.steps // 4),
    })
    saved_file = run_dir / "config.json"
    same_plan = False
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        same_plan = not trajectory_differences(saved, config) and saved.get("steps") == config.steps
        if same_plan and is_checkpoint_dir(model_dir):
            echo(f"pretraining: reusing {model_dir}")
            return model_dir, None
        checkpoints = list_checkpoints(run_dir)
        if same_plan and checkpoints and checkpoints[-1][0] >= config.steps:
            same_plan = False  # trained to the end, but the exported model is gone: nothing to resume
        if same_plan and not checkpoints:
            same_plan = False  # killed before its first checkpoint: nothing to resume
        if not same_plan:
            echo(f"pretraining: {run_dir} holds a run of another plan or without its model; starting again")
            shutil.rmtree(run_dir)
    echo(f"pretraining {MODEL} from scratch: {plan.steps} steps of {plan.batch_size} image-text pairs"
         + (" (resuming)" if same_plan else ""))
    result = train(config, run_dir, resume=same_plan)
    losses = (result.losses[0], result.losses[-1]) if result.losses else None
    if losses:
        echo(f"pretraining: loss {losses[0]:.3f} -> {losses[1]:.3f}, {result.images_per_s:.1f} images/s")
    return result.model_dir or model_dir, losses


def run_demo(
    out_dir: str | Path = "demo-out",
    minutes: float = DEFAULT_MINUTES,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    plan: DemoPlan | None = None,
) -> DemoResult:
    """Phantom sets -> pretraining -> benchmark of random init vs pretrained -> report, under ``out_dir``."""
    from .bench.harness import ModelRef, run_benchmark
    from .bench.report import markdown_table, write_report
    from .io import write_json_atomic
    from .sim.cine import DEFECT_LABEL

    plan = plan or plan_demo(minutes, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    specs = _write_sets(plan, out_dir / "data", echo, progress)
    timings["phantom"] = time.perf_counter() - started

    started = time.perf_counter()
    model_dir, losses = _pretrain(plan, [specs["train"], specs["train-heads"]], out_dir / "run", echo, progress)
    timings["pretraining"] = time.perf_counter() - started

    started = time.perf_counter()
    models = [ModelRef(RANDOM_LABEL, MODEL), ModelRef(PRETRAINED_LABEL, str(model_dir))]
    data = {"planes": specs["planes"], "ga": specs["heads"], "seg": specs["heads"], "clips": specs["clips"]}
    options = {"segment-hc": {"epochs": plan.segment_epochs},
               "clips": {"frames": plan.clip_frames, "positive": DEFECT_LABEL}}
    run = run_benchmark(
        models, data, out_dir / "benchmark", [*TABLE_TASKS, *FIGURE_TASKS], seed=plan.seed,
        n_bootstrap=plan.n_bootstrap, options=options, progress=progress, echo=echo,
    )
    report_paths = write_report(run, out_dir)
    timings["evaluation"] = time.perf_counter() - started

    result = DemoResult(plan, compare_models(run), markdown_table(run), report_paths, timings)
    write_json_atomic(out_dir / "demo.json", {
        "plan": asdict(plan),
        "data": specs,
        "model": str(model_dir),
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "train_loss_first_last": losses,
        "comparisons": [{**asdict(c), "outcome": c.outcome, "requirement": c.requirement, "passes": c.passes,
                         "reason": c.reason} for c in result.comparisons],
        "passed": result.passed,
    })
    return result


__all__ = [
    "Comparison",
    "DemoPlan",
    "DemoResult",
    "FIGURE_TASKS",
    "PRETRAINED_LABEL",
    "RANDOM_LABEL",
    "TABLE_TASKS",
    "VERDICT_RULES",
    "compare_models",
    "judge",
    "plan_demo",
    "run_demo",
]
