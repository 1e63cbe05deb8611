"""Planning and rendering one phantom image: what is in it (cheap) and what it looks like (the pixel work).

``plan_sample(config, index)`` decides everything about sample ``index`` from ``(seed, index)`` alone: class,
patient, gestational age, anatomy, probe sector, zoom (hence pixel spacing), placement and scanner settings.
It touches no pixels, so listing a dataset of thousands costs milliseconds and any subset renders exactly as
it would inside the full set. ``render_plan`` then draws the echo fields on the beam-line grid and simulates
the scanner: fully developed speckle (a complex Gaussian scattering field, weighted by tissue echogenicity and
smoothed by a Gaussian point-spread function over the resolution cell, whose magnitude is Rayleigh
distributed; the cell is drawn in mm, so its size in pixels follows the spacing as on a scanner, down to about
one sample), coherent specular boundaries, two-way attenuation down each beam behind bone (shadows) and with
depth, random gain and dynamic range in log compression, and scan conversion to pixels. Optional burned-in
text, a depth ruler and caliper crosses are drawn last, as a scanner overlays them.

Pixel spacing: an image is ``size`` pixels wide and 3/4 of that high; the zoom draws the main structure's
extent as a random fraction of the image height, and the spacing follows from its true size in mm. At 256
pixels that gives about 0.15-1.5 mm per pixel; scaled to a scanner's ~800-pixel frame that is the 0.05-0.5 mm
of real machines (HC18: 0.05-0.39 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .anatomy import HEART_DEFECTS, Anatomy, HeartState, build
from .burn import burn_overlay
from .geometry import PolarGrid, Sector, scan_conversion
from .shapes import Fields, Placement, Shape, paint_mask
from .speckle import quantise_psf, smooth_profile, speckle

BRAIN_SLOTS = ("trans-thalamic", "trans-cerebellum", "trans-ventricular")
DEFAULT_CLASSES = ("brain", "abdomen", "femur", "thorax", "cervix", "other")
ASPECT = 0.75  # height / width, as on most scanner displays
# Bumped whenever the same config renders different pixels, so that a folder rendered by an older version is
# told apart from a current one (the demo re-renders instead of reusing it).
RENDERER_VERSION = 2


@dataclass(frozen=True)
class SimConfig:
    """How a phantom dataset is drawn; together with a sample's index this fixes the sample."""

    seed: int = 0
    size: int = 256  # image width in pixels; height is 3/4 of it
    classes: tuple[str, ...] = DEFAULT_CLASSES  # plane keys and/or brain sub-plane keys
    per_patient: int = 4  # consecutive images sharing a synthetic patient (and so a gestational age)
    ga_days: tuple[int, int] = (98, 272)  # inclusive; 14w0d-38w6d, the zero-shot age prompts' range
    overlay: float = 0.5  # probability of burned-in text, depth ruler and calipers
    chd: float = 0.0  # share of patients with a heart defect, seen (and captioned) in their thorax views

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "ga_days", tuple(int(d) for d in self.ga_days))
        if self.seed < 0:
            raise ValueError(f"phantom seed {self.seed} must be non-negative")
        if self.size < 64:
            raise ValueError(f"phantom size {self.size} is too small (at least 64 pixels wide)")
        if self.per_patient < 1:
            raise ValueError("per_patient must be at least 1")
        lo, hi = self.ga_days
        if not 56 <= lo <= hi <= 300:
            raise ValueError(f"gestational age range {self.ga_days} days must lie within 8-43 weeks")
        if not 0.0 <= self.overlay <= 1.0:
            raise ValueError(f"overlay probability {self.overlay} is not in [0, 1]")
        if not 0.0 <= self.chd <= 1.0:
            raise ValueError(f"heart-defect share {self.chd} is not in [0, 1]")
        slots(self.classes)

    @property
    def width(self) -> int:
        return self.size

    @property
    def height(self) -> int:
        return int(round(self.size * ASPECT))


@lru_cache(maxsize=64)
def slots(classes: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """The repeating cycle of (label, brain_plane) that sample indices walk through.

    ``brain`` contributes its three sub-planes, spread evenly through the cycle so consecutive images (one
    patient's) mix views; any N at least as long as the cycle holds every requested class.
    """
    planes, brains = [], []
    for name in classes:
        if name == "brain":
            brains += [p for p in BRAIN_SLOTS if p not in brains]
        elif name in BRAIN_SLOTS:
            if name not in brains:
                brains.append(name)
        elif name in ("abdomen", "femur", "thorax", "cervix", "other"):
            if name not in planes:
                planes.append(name)
        else:
            raise ValueError(
                f"the phantom has no class {name!r}; use brain, abdomen, femur, thorax, cervix, other "
                f"or a brain plane ({', '.join(BRAIN_SLOTS)})"
            )
    keyed = [(k / len(brains), ("brain", p)) for k, p in enumerate(brains)]
    keyed += [((j + 0.5) / len(planes), (p, None)) for j, p in enumerate(planes)]
    if not keyed:
        raise ValueError("no phantom classes requested")
    return tuple(slot for _, slot in sorted(keyed, key=lambda item: item[0]))


@dataclass
class Scanner:
    """Per-image settings of the simulated machine and the tissue layers outside the anatomy."""

    background: float
    wall_px: float
    wall_level: float
    wall_lines: list[tuple[float, float]]
    far_wall_px: float | None
    far_level: float
    psf_axial_mm: float  # resolution cell (Gaussian sigma) along the beam
    psf_lateral_mm: float  # and across it
    dynamic_range_db: float
    gain_db: float
    attenuation: float  # nepers of amplitude lost over the full depth (what TGC did not correct)
    modulation: float  # strength of slow brightness variation (log amplitude)


@dataclass
class Overlay:
    text_left: list[str]
    text_right: list[str]
    brightness: int
    ruler: bool
    calipers: list[tuple[float, float]]


@dataclass
class Plan:
    index: int
    label: str
    brain_plane: str | None
    patient: str
    ga_days: float
    width: int
    height: int
    spacing_mm: float
    sector: Sector
    anatomy: Anatomy
    placement: Placement
    labels: dict[str, int]
    scanner: Scanner
    overlay: Overlay | None
    measurements: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    probe: str = "curvilinear"
    heart: HeartState | None = None

    @property
    def shapes(self) -> list[Shape]:
        """The anatomy in pixel coordinates (placed on demand: listing a dataset never needs it)."""
        return [shape.placed(self.placement) for shape in self.anatomy.shapes]

    @property
    def spacing_224_mm(self) -> float:
        return self.spacing_mm * max(self.width, self.height) / 224

    @property
    def depth_mm(self) -> float:
        return (self.sector.r_max - self.sector.r_min) * self.spacing_mm


def patient_of(config: SimConfig, index: int) -> tuple[str, float]:
    """Synthetic patient id and its gestational age (days), shared by ``per_patient`` consecutive images."""
    patient = index // config.per_patient
    lo, hi = config.ga_days
    ga = int(np.random.default_rng([config.seed, 0, patient]).integers(lo, hi + 1))
    return f"sim{config.seed}-p{patient:06d}", float(ga)


def heart_of(config: SimConfig, index: int) -> HeartState | None:
    """The heart of a thorax sample in a set with heart defects (``chd`` > 0); ``None`` otherwise.

    The defect is the patient's (all their thorax views show it); the cardiac phase and the view (an echo
    close-up of the heart or the whole chest) are the image's. Drawn from generators of their own, so a set
    without defects renders exactly as it did before they existed.
    """
    if config.chd <= 0:
        return None
    patient = index // config.per_patient
    rng = np.random.default_rng([config.seed, 8, patient])
    defect = str(rng.choice(HEART_DEFECTS)) if rng.random() < config.chd else None
    view = np.random.default_rng([config.seed, 9, index])
    # Half the views are echo close-ups of the heart (where a defect is read), half whole-chest screening views.
    return HeartState(float(view.uniform()), defect, focus=bool(view.random() < 0.5))


def _sector(rng: np.random.Generator, height: int, width: int, probe: str) -> Sector:
    top = rng.uniform(2, max(3.0, 0.05 * height))
    bottom = height * rng.uniform(0.9, 1.08)
    if probe == "transvaginal":
        r_min = rng.uniform(0.03, 0.08) * height
        half = math.radians(rng.uniform(55, 72))
    else:
        r_min = rng.uniform(0.15, 0.9) * height
        half = math.radians(rng.uniform(26, 40))
    apex_y = float(round(top - r_min))  # whole rows and the centre column: scan conversion reuses one table
    r_max = bottom - apex_y
    if probe != "transvaginal":
        # Curvilinear fans mostly fit the display, now and then cut by its sides.
        half = min(half, math.asin(min(1.0, rng.uniform(0.9, 1.2) * width / 2 / r_max)))
    return Sector(width / 2, apex_y, r_min, r_max, half)


def _layout(
    rng: np.random.Generator, anatomy: Anatomy, sector: Sector, height: int, width: int, near_px: float
) -> Placement:
    """Zoom and place the anatomy so the outlines that must be measurable lie inside the visible fan."""
    angle = rng.uniform(*anatomy.angle_range)
    if anatomy.flip and rng.random() < 0.5:
        angle += math.pi  # the fetus lies either way round
    mirror = anatomy.mirror and bool(rng.random() < 0.5)
    zoom = rng.uniform(*anatomy.zoom)
    depth = sector.r_max - sector.r_min
    for attempt in range(60):  # each retry zooms out 6%; a dozen retries is the most seen in practice
        spacing = anatomy.extent_mm / (zoom * height * 0.94**attempt)
        r = sector.r_min + near_px + rng.uniform(0.3, 0.7) * (depth - near_px)
        phi = rng.uniform(-0.4, 0.4) * sector.half_angle
        x, y = sector.apex_x + r * math.sin(phi), sector.apex_y + r * math.cos(phi)
        placement = Placement(spacing, angle, x, y, mirror)
        if not anatomy.fit or _fits(anatomy, placement, sector, height, width, near_px):
            return placement
    # Masks are ground truth only for structures wholly in view, so never hand out a placement that is not.
    raise RuntimeError(f"could not fit the {anatomy.variant or 'anatomy'} into the field of view")


def _fits(anatomy: Anatomy, placement: Placement, sector: Sector, height: int, width: int, near_px: float) -> bool:
    for shape in anatomy.fit:
        xs, ys = shape.placed(placement).outline()
        if not (np.all((xs >= 2) & (xs <= width - 3) & (ys >= 2) & (ys <= height - 3))
                and np.all(sector.contains(xs, ys, margin_px=2.0, near_px=near_px))):
            return False
    return True


def _scanner(rng: np.random.Generator, sector: Sector, anatomy: Anatomy) -> Scanner:
    depth = sector.r_max - sector.r_min
    wall_px = rng.uniform(0.04, 0.12) * depth
    lines = [(rng.uniform(0.1, 1.0) * wall_px, rng.uniform(0.3, 1.0)) for _ in range(rng.integers(1, 4))]
    tissue = anatomy.background == "tissue"
    far = None if tissue or rng.random() < 0.5 else rng.uniform(0.8, 0.97) * depth
    return Scanner(
        background=10 ** (rng.uniform(-16, -12) / 10) if tissue else 10 ** (rng.uniform(-50, -42) / 10),
        wall_px=wall_px,
        wall_level=10 ** (rng.uniform(-16, -11) / 10),
        wall_lines=lines,
        far_wall_px=far,
        far_level=10 ** (rng.uniform(-17, -12) / 10),
        psf_axial_mm=rng.uniform(0.15, 0.35),
        psf_lateral_mm=rng.uniform(0.35, 0.8),
        dynamic_range_db=rng.uniform(42, 60),
        gain_db=rng.uniform(-5, 4),
        attenuation=rng.uniform(0.0, 1.0),
        modulation=rng.uniform(0.1, 0.35),
    )


PROBES = {"curvilinear": ("C5-1", "C1-6", "AB2-7", "C2-9", "4C1"), "transvaginal": ("IC5-9", "RIC5-9", "EV4-8")}


def _overlay(rng: np.random.Generator, plan: Plan, calipers: list[tuple[float, float]]) -> Overlay:
    probe = str(rng.choice(PROBES[plan.probe]))
    left = [probe, str(rng.choice(["OB", "OB/GYN", "Fetal", "OB 2/3"]))]
    if rng.random() < 0.5:
        left.append(f"FR {int(rng.integers(12, 45))}Hz")
    right = [f"D{plan.depth_mm / 10:.1f}cm", f"G{int(rng.integers(30, 70))}"]
    if rng.random() < 0.5:
        right.append(f"DR{int(rng.integers(50, 80))}")
    return Overlay(
        text_left=left,
        text_right=right,
        brightness=int(rng.integers(170, 256)),
        ruler=bool(rng.random() < 0.7),
        calipers=calipers if rng.random() < 0.5 else [],
    )


def plan_sample(config: SimConfig, index: int, heart: HeartState | None = None) -> Plan:
    """Everything about sample ``index`` except its pixels; a pure function of ``(config, index)``.

    ``heart`` makes the sample a frame of a cine loop (``sim.cine``): the same draws, so the same patient,
    probe and scanner, with the heart at that phase and with that defect. Without it nothing changes.
    """
    if index < 0:
        raise IndexError(f"phantom index {index} is negative")
    cycle = slots(config.classes)
    label, brain_plane = cycle[index % len(cycle)]
    patient, ga = patient_of(config, index)
    rng = np.random.default_rng([config.seed, 1, index])
    if heart is None and label == "thorax":
        heart = heart_of(config, index)
    anatomy = build(rng, label, ga, brain_plane, heart)
    height, width = config.height, config.width
    sector = _sector(rng, height, width, anatomy.probe)
    scanner = _scanner(rng, sector, anatomy)
    placement = _layout(rng, anatomy, sector, height, width, near_px=scanner.wall_px + 2)
    if scanner.far_wall_px is not None:
        # The uterine wall lies behind the fetus, never through it.
        placed = (shape.placed(placement) for shape in anatomy.shapes)
        behind = max(math.hypot(p.centre[0] - sector.apex_x, p.centre[1] - sector.apex_y) + p.radius for p in placed)
        far = max(scanner.far_wall_px, behind - sector.r_min + 3)
        scanner.far_wall_px = far if far < sector.r_max - sector.r_min - 3 else None
    plan = Plan(
        index=index,
        label=label,
        brain_plane=brain_plane,
        patient=patient,
        ga_days=ga,
        width=width,
        height=height,
        spacing_mm=placement.spacing_mm,
        sector=sector,
        anatomy=anatomy,
        placement=placement,
        labels=dict(anatomy.labels),
        scanner=scanner,
        overlay=None,
        measurements=dict(anatomy.measurements),
        variant=anatomy.variant,
        probe=anatomy.probe,
        heart=heart,
    )
    if rng.random() < config.overlay:
        plan.overlay = _overlay(rng, plan, [placement.point(x, y) for x, y in anatomy.calipers])
    return plan


def echo_fields(plan: Plan, grid: PolarGrid, shapes: list[Shape]) -> Fields:
    """Tissue echo power, specular amplitude and bone attenuation on the beam-line grid."""
    sc = plan.scanner
    echo = np.full((grid.n_r, grid.n_lines), sc.background, np.float32)
    specular = np.zeros_like(echo)
    depth = grid.r - plan.sector.r_min
    wall = int(np.searchsorted(depth, sc.wall_px))
    echo[:wall] = sc.wall_level
    for at, amplitude in sc.wall_lines:
        specular[min(int(at / grid.dr), grid.n_r - 1)] += amplitude
    if sc.far_wall_px is not None:
        k = int(np.searchsorted(depth, sc.far_wall_px))
        echo[k:] = sc.far_level
        specular[min(k, grid.n_r - 1)] += 1.0
    fields = Fields(grid, echo, specular, np.zeros_like(echo))
    for shape in shapes:
        shape.paint(fields)
    return fields


def render_plan(plan: Plan, noise_seed: tuple[int, ...], shading_seed: tuple[int, ...] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 image and the uint8 label mask of a planned sample (mask zero outside the fan).

    ``noise_seed`` draws the speckle and, unless ``shading_seed`` is given, the slow brightness variation
    too; frames of one cine loop share a shading seed, since tissue and beam profile do not flicker.
    """
    sc = plan.scanner
    grid = PolarGrid(plan.sector, n_r=plan.height, n_lines=max(32, plan.width // 2))
    shapes = plan.shapes
    fields = echo_fields(plan, grid, shapes)
    rng = np.random.default_rng(list(noise_seed))
    shading = rng if shading_seed is None else np.random.default_rng(list(shading_seed))

    # Slow brightness variation (uneven tissue, beam profile) as a separable log-amplitude field.
    log_mod = smooth_profile(shading, grid.n_r, sc.modulation)[:, None]
    log_mod = log_mod + smooth_profile(shading, grid.n_lines, sc.modulation)[None, :]
    # The resolution cell is fixed in mm by the transducer; in grid units it follows the spacing, but never
    # drops below about one sample, where a display could no longer show speckle as grains.
    line_mm = 0.5 * (plan.sector.r_min + plan.sector.r_max) * grid.dphi * plan.spacing_mm
    psf_depth = quantise_psf(max(0.7, sc.psf_axial_mm / (grid.dr * plan.spacing_mm)))
    psf_lateral = quantise_psf(max(0.6, sc.psf_lateral_mm / line_mm))
    envelope = speckle(fields.echo * np.exp(2 * log_mod), fields.specular, psf_depth, psf_lateral, rng)

    # Two-way loss in amplitude: bone behind the sample (exclusive cumulative sum) and uncorrected depth loss.
    step_mm = np.float32(grid.dr * plan.spacing_mm)
    loss = np.empty_like(envelope)
    loss[:] = (sc.attenuation * np.linspace(0, 1, grid.n_r, dtype=np.float32))[:, None]
    if fields.bone_lines is not None:  # cumulative sums are slow: only down the lines that cross bone
        rows, lines = slice(fields.bone_lines[0], None), slice(*fields.bone_lines[1:])
        bone = fields.bone[rows, lines]
        loss[rows, lines] += (np.cumsum(bone, axis=0) - bone) * step_mm
    top_db = 6.0 - sc.gain_db  # a bright (bone-like) scatterer sits near the top of the display range
    level = (20 * np.log10(envelope + np.float32(1e-6)) - np.float32(20 / math.log(10)) * loss - np.float32(top_db))
    polar = np.clip(level * np.float32(255 / sc.dynamic_range_db) + np.float32(255), 0, 255)

    conversion = scan_conversion(grid, plan.height, plan.width)
    image = np.zeros((plan.height, plan.width), np.float32)
    conversion.apply(polar, image)
    image = image.astype(np.uint8)
    mask = paint_mask(shapes, plan.labels, plan.height, plan.width)
    mask[~conversion.fan] = 0
    if plan.overlay is not None:
        image = burn_overlay(image, plan)
    return image, mask
