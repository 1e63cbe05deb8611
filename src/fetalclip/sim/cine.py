"""Four-chamber cine loops of normal hearts and hearts with a defect: the phantom's heart-defect (CHD) task.

A clip is one thorax sample of the image phantom (``render.plan_sample``: the same patient, age, probe,
scanner and overlay draws) played over time. Every frame re-plans that sample with a ``HeartState``: the
ventricles empty and the atria fill over each cardiac cycle, the probe drifts and turns a little (a hand is
never still), and the speckle of every frame is drawn anew (the tissue moves under the beam). Clips cover
1.5-2.5 cycles from a random start phase, so frame order alone says nothing about the class.

The defect belongs to the patient, not the clip: each synthetic patient has ``clips_per_patient`` clips, and
patients come in pairs of which exactly one has a defect (so any set of whole pairs is balanced). Defects show
the cue a four-chamber screening view shows: ``hlhs``, a small left ventricle that barely contracts, or
``vsd``, a gap in the interventricular septum; ``mixed`` draws one of the two per affected patient.

The export is an ordinary ``csv:`` manifest whose ``path`` is a folder of frames per clip; the clip probe
(``tasks.probe_clips``) reads it as any clip folder. Labels are ``chd`` and ``normal``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import FetalCLIPError
from ..io import write_csv_atomic, write_json_atomic
from .anatomy import HEART_DEFECTS, HeartState
from .dataset import ga_days_of, save_png, split_spec
from .render import RENDERER_VERSION, Plan, SimConfig, plan_sample, render_plan

CINE_DEFECTS = (*HEART_DEFECTS, "mixed")
CINE_COLUMNS = ("path", "label", "patient", "ga_days", "defect", "frames", "pixel_spacing_mm")
DEFECT_LABEL, NORMAL_LABEL = "chd", "normal"


@dataclass(frozen=True)
class CineConfig:
    """How a cine set is drawn; with a clip's index this fixes every frame of the clip."""

    seed: int = 0
    size: int = 224  # frame width in pixels (height 3/4 of it)
    frames: int = 16
    clips_per_patient: int = 2
    defect: str = "mixed"  # hlhs, vsd or mixed
    ga_days: tuple[int, int] = (126, 272)  # 18w0d-38w6d: the four-chamber view is screened from mid-gestation
    overlay: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "ga_days", tuple(int(d) for d in self.ga_days))
        if self.defect not in CINE_DEFECTS:
            raise ValueError(f"unknown cine defect {self.defect!r}; use one of {', '.join(CINE_DEFECTS)}")
        if self.frames < 2:
            raise ValueError(f"a cine loop needs at least 2 frames, not {self.frames}")
        if self.clips_per_patient < 1:
            raise ValueError("clips_per_patient must be at least 1")
        _ = self.images  # validates seed, size, age range and overlay once, with the image phantom's messages

    @property
    def images(self) -> SimConfig:
        """The image phantom that each clip is a sample of (thorax only, one patient per clips_per_patient)."""
        return SimConfig(seed=self.seed, size=self.size, classes=("thorax",), per_patient=self.clips_per_patient,
                         ga_days=self.ga_days, overlay=self.overlay)


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip except pixels: who, which defect, and how the heart and probe move."""

    index: int
    patient: str
    ga_days: float
    defect: str | None
    start_phase: float  # cycles
    cycles: float  # heart cycles the clip spans
    drift_px: tuple[float, float]  # amplitude of the probe's slow sway, x and y
    turn_rad: float  # amplitude of its slow rotation
    motion_phase: float

    @property
    def label(self) -> str:
        return DEFECT_LABEL if self.defect else NORMAL_LABEL


def patient_defect(config: CineConfig, patient_number: int) -> str | None:
    """The patient's defect (``None`` for a normal heart): exactly one of each pair of patients has one."""
    rng = np.random.default_rng([config.seed, 6, patient_number // 2])
    affected = int(rng.integers(2))  # which member of the pair
    kind = config.defect if config.defect != "mixed" else str(rng.choice(HEART_DEFECTS))
    return kind if patient_number % 2 == affected else None


def plan_clip(config: CineConfig, index: int) -> ClipPlan:
    """The clip's patient, defect and motion; a pure function of ``(config, index)``, no pixels."""
    if index < 0:
        raise IndexError(f"cine index {index} is negative")
    base = plan_sample(config.images, index)
    rng = np.random.default_rng([config.seed, 7, index])
    shift = 0.02 * config.size
    return ClipPlan(
        index=index,
        patient=base.patient,
        ga_days=base.ga_days,
        defect=patient_defect(config, index // config.clips_per_patient),
        start_phase=float(rng.uniform(0, 1)),
        cycles=float(rng.uniform(1.5, 2.5)),
        drift_px=(float(rng.uniform(0.3, 1.0) * shift), float(rng.uniform(0.3, 1.0) * shift)),
        turn_rad=float(rng.uniform(0.0, 0.06)),
        motion_phase=float(rng.uniform(0, 2 * math.pi)),
    )


def frame_plan(config: CineConfig, clip: ClipPlan, t: int) -> Plan:
    """Frame ``t``: the clip's sample with the heart at its phase and the probe where it has drifted to."""
    phase = clip.start_phase + clip.cycles * t / config.frames
    plan = plan_sample(config.images, clip.index, HeartState(phase % 1.0, clip.defect, focus=True))
    sway = math.sin(2 * math.pi * t / config.frames + clip.motion_phase)
    p = plan.placement
    placement = replace(p, ox=p.ox + clip.drift_px[0] * sway, oy=p.oy + clip.drift_px[1] * math.cos(2 * math.pi * t / config.frames),
                        angle=p.angle + clip.turn_rad * sway)
    return replace(plan, placement=placement)


def render_clip(config: CineConfig, index: int) -> tuple[ClipPlan, list[np.ndarray]]:
    """The clip's plan and its ``frames`` uint8 images in time order."""
    clip = plan_clip(config, index)
    images = [render_plan(frame_plan(config, clip, t), (config.seed, 5, index, t), (config.seed, 2, index))[0]
              for t in range(config.frames)]
    return clip, images


def parse_cine_spec(argument: str) -> tuple[int, CineConfig]:
    """``"40,seed=3,frames=8,defect=hlhs"`` -> (40, CineConfig(...)); errors name the spec."""
    spec, n, tokens = split_spec("cine", argument, "clips")
    options: dict[str, Any] = {}
    for token in filter(None, tokens):
        key, sep, value = (part.strip() for part in token.partition("="))
        if not sep:
            raise FetalCLIPError(f"{spec}: {token!r} is not key=value")
        try:
            if key in ("seed", "size", "frames", "clips_per_patient"):
                options[key] = int(value)
            elif key == "overlay":
                options[key] = float(value)
            elif key == "defect":
                options[key] = value
            elif key == "ga":
                options["ga_days"] = ga_days_of(value)
            else:
                raise FetalCLIPError(f"{spec}: unknown option {key!r}; known: seed, size, frames, "
                                     "clips_per_patient, defect, ga, overlay")
        except ValueError:
            raise FetalCLIPError(f"{spec}: bad value {value!r} for {key}") from None
    try:
        return n, CineConfig(**options)
    except ValueError as exc:
        raise FetalCLIPError(f"{spec}: {exc}") from None


def cine_config_dict(config: CineConfig) -> dict[str, Any]:
    return {**asdict(config), "ga_days": list(config.ga_days)}


def write_cine(
    n: int,
    config: CineConfig,
    out: str | Path,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Render ``n`` clips into ``out``: ``clips/NNNNNN/TTT.png``, ``manifest.csv`` and ``cine.json``.

    As with ``write_phantom``, the manifest is written last (atomically): a folder without one is an
    interrupted export.
    """
    out = Path(out)
    rows = []
    indices: Iterable[int] = range(n)
    if progress is not None:
        indices = progress(indices)
    for index in indices:
        clip, images = render_clip(config, index)
        folder = f"clips/{index:06d}"
        for t, image in enumerate(images):
            save_png(image, out / folder / f"{t:03d}.png")
        rows.append({
            "path": folder,
            "label": clip.label,
            "patient": clip.patient,
            "ga_days": f"{clip.ga_days:g}",
            "defect": clip.defect or "",
            "frames": str(config.frames),
            "pixel_spacing_mm": f"{frame_plan(config, clip, 0).spacing_mm:.6f}",
        })
    counts: dict[str, int] = {}
    for row in rows:
        key = row["defect"] or NORMAL_LABEL
        counts[key] = counts.get(key, 0) + 1
    summary = {
        "n": n,
        "renderer": RENDERER_VERSION,
        "config": cine_config_dict(config),
        "counts": dict(sorted(counts.items())),
        "patients": len({row["patient"] for row in rows}),
        "manifest": "manifest.csv",
        "spec": f"csv:{out / 'manifest.csv'}",
    }
    write_json_atomic(out / "cine.json", summary)
    write_csv_atomic(out / "manifest.csv", CINE_COLUMNS, rows)
    return summary


__all__ = [
    "CINE_DEFECTS",
    "CineConfig",
    "ClipPlan",
    "DEFECT_LABEL",
    "NORMAL_LABEL",
    "frame_plan",
    "parse_cine_spec",
    "patient_defect",
    "plan_clip",
    "render_clip",
    "write_cine",
]
