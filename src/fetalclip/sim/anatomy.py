"""The phantom's standard planes as shapes in millimetres, sized from growth references.

Each builder returns an ``Anatomy``: shapes in a local frame centred on the structure (x along its main axis;
for heads x points anteriorly along the midline), the label map's names, the extent that decides zoom, which
outline must stay inside the field of view, and caliper points. Sizes come from the gestational age: head
circumference from the WHO median (so the head mask's perimeter *is* the HC that the age implies, which is what
biometry tests and the zero-shot age demo rely on), abdominal circumference and femur length from Hadlock 1984.
Relative positions of inner structures are rough textbook proportions: enough for each plane to look like
itself (thalami vs. choroid plexus vs. cerebellum; stomach bubble and umbilical vein; four chambers), not an
anatomical atlas. Echo levels are power relative to bone (``db(x) = 10^(x/10)``); everything random is drawn
from the generator passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..growth import hadlock_ac, hadlock_fl, who_hc
from .geometry import semi_axes_for_perimeter
from .shapes import Capsule, Ellipse, Shape

HEAD_LABELS = {
    "head": 1,
    "cavum_septi_pellucidi": 2,
    "thalami": 3,
    "lateral_ventricle": 4,
    "choroid_plexus": 5,
    "cerebellum": 6,
    "cisterna_magna": 7,
}
ABDOMEN_LABELS = {"abdomen": 1, "stomach": 2, "umbilical_vein": 3, "spine": 4}
THORAX_LABELS = {"heart": 1, "left_ventricle": 2, "right_ventricle": 3, "left_atrium": 4, "right_atrium": 5}
FEMUR_LABELS = {"femur": 1}
CERVIX_LABELS = {"cervix": 1, "cervical_canal": 2}

BRAIN_PLANES = ("trans-thalamic", "trans-cerebellum", "trans-ventricular")


def db(level: float) -> float:
    return 10.0 ** (level / 10.0)


@dataclass
class Anatomy:
    shapes: list[Shape]
    labels: dict[str, int]
    extent_mm: float  # the length that the zoom fraction applies to
    zoom: tuple[float, float]  # range of extent / image height
    fit: list[Shape] = field(default_factory=list)  # shapes whose outlines must be fully visible
    calipers: list[tuple[float, float]] = field(default_factory=list)
    angle_range: tuple[float, float] = (-math.pi, math.pi)  # of the local x axis on the image (y down)
    flip: bool = False  # may also appear turned by 180 degrees
    mirror: bool = True  # may appear mirrored (left-right of the fetus is not visible in these planes)
    probe: str = "curvilinear"  # or "transvaginal"
    background: str = "fluid"  # or "tissue"
    measurements: dict[str, float] = field(default_factory=dict)
    variant: str | None = None


def _fluid(rng: np.random.Generator) -> float:
    return db(rng.uniform(-48, -40))


def head(rng: np.random.Generator, ga_days: float, plane: str) -> Anatomy:
    if plane not in BRAIN_PLANES:
        raise ValueError(f"unknown brain plane {plane!r}; use one of {BRAIN_PLANES}")
    hc = float(who_hc(ga_days))
    a, b = semi_axes_for_perimeter(hc, rng.uniform(0.74, 0.86))
    skull = 1.0 + 0.09 * (ga_days / 7 - 14)  # mm; thin and poorly ossified early, ~3.5 mm at term
    # Ossification: the calvarium echoes more and shadows more as it mineralises, a cue to age that does not
    # depend on the zoom (early skulls are faint beside the brain; at term they shine and shadow).
    ossified = float(np.clip((ga_days / 7 - 14) / 24, 0.0, 1.0))
    fluid = _fluid(rng)
    brain = db(rng.uniform(-25, -19))
    outline = Ellipse(0, 0, a, b, level=brain, label="head")
    shapes: list[Shape] = [
        outline,
        # Bone scatters moderately; the bright skull echoes are specular, so the walls facing the beam shine
        # and the lateral walls stay dimmer, as on a scanner.
        Ellipse(0, 0, a, b, level=db(-16 + 12 * ossified + rng.uniform(-1.5, 1.5)),
                edge=(1.0 + 3.5 * ossified) * rng.uniform(0.85, 1.15), edge_px=rng.uniform(0.8, 1.3),
                hole_a=a - skull, hole_b=b - skull, bone=0.1 + 0.4 * ossified),
    ]
    falx = dict(half_width=0.0, edge=rng.uniform(0.5, 1.1), edge_px=0.8)
    csp = Ellipse(0.38 * a, 0, 0.11 * a, 0.05 * b, level=fluid, edge=0.4, label="cavum_septi_pellucidi")
    if plane == "trans-thalamic":
        shapes += [Capsule(-0.9 * a, 0, -0.18 * a, 0, **falx), Capsule(0.52 * a, 0, 0.9 * a, 0, **falx), csp]
        for side in (-1, 1):
            shapes.append(Ellipse(-0.03 * a, side * 0.15 * b, 0.2 * a, 0.14 * b, angle=side * 0.3,
                                  level=db(rng.uniform(-36, -32)), edge=0.2, label="thalami"))
        shapes.append(Capsule(-0.16 * a, 0, 0.22 * a, 0, half_width=0.0, edge=0.5, edge_px=0.7))  # third ventricle
    elif plane == "trans-ventricular":
        shapes += [Capsule(-0.9 * a, 0, 0.25 * a, 0, **falx), Capsule(0.52 * a, 0, 0.9 * a, 0, **falx), csp]
        for side in (-1, 1):
            shapes.append(Ellipse(0.56 * a, side * 0.1 * b, 0.09 * a, 0.045 * b, angle=side * 0.3, level=fluid,
                                  edge=0.3, label="lateral_ventricle"))
            tilt = side * rng.uniform(0.15, 0.35)
            shapes.append(Ellipse(-0.48 * a, side * 0.33 * b, 0.32 * a, 0.13 * b, angle=tilt, level=fluid, edge=0.5,
                                  label="lateral_ventricle"))
            # The echogenic choroid plexus filling the atrium is this plane's landmark.
            shapes.append(Ellipse(-0.5 * a, side * 0.33 * b, 0.23 * a, 0.09 * b, angle=tilt,
                                  level=db(rng.uniform(-4, -1)), edge=0.8, label="choroid_plexus"))
    else:  # trans-cerebellum
        shapes += [Capsule(0.52 * a, 0, 0.9 * a, 0, **falx), Capsule(-0.2 * a, 0, 0.25 * a, 0, **falx), csp]
        for side in (-1, 1):
            shapes.append(Ellipse(-0.14 * a, side * 0.1 * b, 0.12 * a, 0.08 * b, level=db(rng.uniform(-31, -27))))
            shapes.append(Ellipse(-0.5 * a, side * 0.22 * b, 0.16 * a, 0.2 * b, level=db(rng.uniform(-23, -19)),
                                  edge=1.5, label="cerebellum"))
        vermis = Ellipse(-0.5 * a, 0, 0.12 * a, 0.07 * b, level=db(rng.uniform(-7, -4)), edge=0.5, label="cerebellum")
        shapes.append(vermis)
        # Fluid behind the cerebellum: a dark crescent in the posterior fossa.
        shapes.append(Ellipse(-0.76 * a, 0, 0.11 * a, 0.28 * b, level=fluid, edge=0.3, label="cisterna_magna"))
    return Anatomy(
        shapes=shapes,
        labels=HEAD_LABELS,
        extent_mm=2 * a,
        zoom=(0.55, 0.9),
        fit=[outline],
        calipers=[(0, b), (0, -b), (a, 0), (-a, 0)],
        angle_range=(-0.5, 0.5),
        flip=True,
        measurements={"hc_mm": hc, "bpd_mm": 2 * b, "ofd_mm": 2 * a},
        variant=plane,
    )


# The spine (local -x) points down or sideways, as sonographers avoid imaging through it.
SPINE_AWAY = (-math.pi - 0.3, 0.3)


def _spine(x: float, r: float, half_gap: float, label: str | None = "spine") -> list[Shape]:
    """Vertebral body plus two posterior ossification centres: three bright dots that shadow."""
    bone = dict(level=db(-2), edge=3.0, bone=0.7, label=label)
    arches = [Ellipse(x - 1.9 * r, s * half_gap, 0.6 * r, 0.6 * r, **bone) for s in (-1, 1)]
    return [Ellipse(x, 0, r, r, **bone), *arches]


def _ribs(rng: np.random.Generator, a: float, b: float, count: int, around: float) -> list[Shape]:
    ribs = []
    for _ in range(count):
        t = around + rng.choice([-1, 1]) * rng.uniform(0.7, 1.5)
        ribs.append(Ellipse(0.9 * a * math.cos(t), 0.9 * b * math.sin(t), 0.07 * a, 0.025 * a, angle=t + math.pi / 2,
                            level=db(-3), edge=2.0, bone=0.8))
    return ribs


def abdomen(rng: np.random.Generator, ga_days: float) -> Anatomy:
    ac = float(hadlock_ac(ga_days))
    a, b = semi_axes_for_perimeter(ac, rng.uniform(0.84, 0.97))
    fluid = _fluid(rng)
    side = rng.choice([-1, 1])
    outline = Ellipse(0, 0, a, b, level=db(rng.uniform(-20, -16)), edge=rng.uniform(0.6, 1.2), label="abdomen")
    shapes: list[Shape] = [
        outline,
        *_ribs(rng, a, b, 2, math.pi),
        Ellipse(0.05 * a, side * 0.38 * b, 0.26 * a * rng.uniform(0.8, 1.2), 0.19 * b * rng.uniform(0.8, 1.2),
                angle=rng.uniform(-0.5, 0.5), level=fluid, edge=0.4, label="stomach"),
        Capsule(0.78 * a, -side * 0.05 * b, 0.15 * a, -side * 0.12 * b, 0.05 * a, level=fluid, edge=0.35,
                label="umbilical_vein"),
        Ellipse(-0.42 * a, side * 0.12 * b, 0.05 * a, 0.05 * a, level=fluid, edge=0.3),  # aorta
        *_spine(-0.62 * a, 0.09 * a, 0.085 * b),
    ]
    return Anatomy(
        shapes=shapes,
        labels=ABDOMEN_LABELS,
        extent_mm=2 * a,
        zoom=(0.5, 0.85),
        fit=[outline],
        calipers=[(a, 0), (-a, 0), (0, b), (0, -b)],
        angle_range=SPINE_AWAY,
        measurements={"ac_mm": ac},
    )


@dataclass(frozen=True)
class HeartState:
    """The beating heart of a cine frame: where it is in the cycle and which defect it has, if any.

    ``phase`` is the cardiac phase in cycles (0 = end-diastole, 0.5 = end-systole): the ventricles empty and
    the atria fill in systole, then the reverse. Defects are the two whose cue a four-chamber view shows:
    ``hlhs`` (hypoplastic left heart: a small left ventricle that barely contracts) and ``vsd`` (a missing
    segment of the interventricular septum, so the ventricles' blood pools meet).
    """

    phase: float = 0.0
    defect: str | None = None
    focus: bool = False  # zoom on the heart, as a fetal echocardiogram does (a screening thorax view does not)

    def __post_init__(self) -> None:
        if self.defect not in (None, *HEART_DEFECTS):
            raise ValueError(f"unknown heart defect {self.defect!r}; use one of {', '.join(HEART_DEFECTS)}")

    def scale(self, chamber: str) -> float:
        """Size of a chamber relative to its end-diastolic size in a normal heart."""
        systole = 0.5 - 0.5 * math.cos(2 * math.pi * self.phase)  # 0 at end-diastole, 1 at end-systole
        hlhs = self.defect == "hlhs"
        if chamber.endswith("ventricle"):
            if chamber == "left_ventricle" and hlhs:
                return 0.3 * (1.0 - 0.05 * systole)  # a slit that barely contracts
            # In HLHS the right ventricle carries the whole output and is dilated.
            return (1.15 if hlhs else 1.0) * (1.0 - 0.2 * systole)
        return (0.7 if hlhs and chamber == "left_atrium" else 1.0) * (0.85 + 0.2 * systole)  # atria fill in systole


HEART_DEFECTS = ("hlhs", "vsd")


def thorax(rng: np.random.Generator, ga_days: float, heart: HeartState | None = None) -> Anatomy:
    # No growth reference is wired in for the chest; at mid-gestation its circumference is close to 0.9 AC.
    tc = 0.9 * float(hadlock_ac(ga_days))
    a, b = semi_axes_for_perimeter(tc, rng.uniform(0.86, 0.98))
    fluid = _fluid(rng)
    side = rng.choice([-1, 1])
    shapes: list[Shape] = [
        Ellipse(0, 0, a, b, level=db(rng.uniform(-14, -10)), edge=0.8),  # lungs fill the chest
        *_ribs(rng, a, b, 3, math.pi),
        *_spine(-0.68 * a, 0.1 * a, 0.09 * b, label=None),  # the chest is context: the heart is segmented
        Ellipse(-0.45 * a, side * 0.15 * b, 0.055 * a, 0.055 * a, level=fluid, edge=0.3),  # descending aorta
    ]
    hx, hy = 0.1 * a, side * 0.1 * b
    ah, bh = 0.5 * a * rng.uniform(0.9, 1.1), 0.38 * a * rng.uniform(0.9, 1.1)
    ang = side * (math.pi / 4 + rng.uniform(-0.15, 0.15))
    outline = Ellipse(hx, hy, ah, bh, angle=ang, level=db(rng.uniform(-21, -17)), edge=0.8, label="heart")
    shapes.append(outline)
    c, s = math.cos(ang), math.sin(ang)
    chambers = (
        ("left_ventricle", 0.22, -0.43 * side, 0.42, 0.34),
        ("right_ventricle", 0.22, 0.43 * side, 0.42, 0.34),
        ("left_atrium", -0.55, -0.42 * side, 0.27, 0.3),
        ("right_atrium", -0.55, 0.42 * side, 0.27, 0.3),
    )
    for name, u, v, au, bv in chambers:
        k = heart.scale(name) if heart is not None else 1.0
        if k != 1.0:  # a chamber shrinks towards the septum and the valve plane, as a real one empties
            u += 0.5 * (1 - k) * au * (-1 if u > 0 else 1)
            v += 0.5 * (1 - k) * bv * (-1 if v > 0 else 1)
        u, v = u * ah, v * bh
        shapes.append(Ellipse(hx + c * u - s * v, hy + s * u + c * v, k * au * ah, k * bv * bh, angle=ang,
                              level=fluid, edge=0.35, label=name))
    if heart is not None and heart.defect == "vsd":  # a large gap in the septum: the ventricles' blood pools meet
        u = 0.2 * ah
        shapes.append(Ellipse(hx + c * u, hy + s * u, 0.3 * ah, 0.16 * bh, angle=ang, level=fluid, edge=0.2))
    anatomy = Anatomy(
        shapes=shapes,
        labels=THORAX_LABELS,
        extent_mm=2 * a,
        zoom=(0.5, 0.85),
        fit=[outline],
        angle_range=SPINE_AWAY,
        measurements={"thoracic_circumference_mm": tc},
    )
    if heart is not None and heart.focus:
        anatomy.extent_mm, anatomy.zoom = 2 * ah, (0.5, 0.75)
    return anatomy


def femur(rng: np.random.Generator, ga_days: float) -> Anatomy:
    fl = float(hadlock_fl(ga_days))
    r = max(0.065 * fl, 0.8)
    bow = rng.uniform(-0.04, 0.04) * fl
    bone = dict(level=db(-1), edge=rng.uniform(3, 5), bone=2.0, label="femur")
    shaft = [Capsule(-fl / 2 + r, 0, 0, bow, r, **bone), Capsule(0, bow, fl / 2 - r, 0, r, **bone)]
    shapes: list[Shape] = [
        Ellipse(0, rng.uniform(-0.05, 0.05) * fl, 0.75 * fl, 0.38 * fl,  # the thigh's soft tissue
                level=db(rng.uniform(-20, -16)), edge=0.6),
        *(Ellipse(s * (fl / 2 + 0.07 * fl), 0, 0.08 * fl, 0.07 * fl, level=db(rng.uniform(-32, -28))) for s in (-1, 1)),
        *shaft,
    ]
    return Anatomy(
        shapes=shapes,
        labels=FEMUR_LABELS,
        extent_mm=fl,
        zoom=(0.35, 0.7),
        fit=shaft,
        calipers=[(-fl / 2, 0), (fl / 2, 0)],
        angle_range=(-0.35, 0.35),
        flip=True,
        measurements={"fl_mm": fl},
    )


def cervix(rng: np.random.Generator, ga_days: float) -> Anatomy:
    length = rng.uniform(28, 45) - 0.15 * max(0.0, ga_days / 7 - 24)  # shortens a little late in pregnancy
    width = length * rng.uniform(0.45, 0.65)
    fluid = _fluid(rng)
    outline = Ellipse(0, 0, length / 2, width / 2, level=db(rng.uniform(-13, -9)), edge=0.6, label="cervix")
    shapes: list[Shape] = []
    if rng.random() < 0.6:  # the bladder sits between probe and cervix
        shapes.append(Ellipse(rng.uniform(-0.3, 0.1) * length, -0.85 * width, 0.5 * length, 0.3 * width,
                              level=fluid, edge=0.5))
    shapes += [
        outline,
        Ellipse(0, 0, 0.42 * length, 0.14 * width, level=db(rng.uniform(-22, -18))),  # glandular zone
        Capsule(-0.44 * length, 0, 0.44 * length, 0, 0.4, level=db(-2), edge=1.2, label="cervical_canal"),
    ]
    for _ in range(rng.integers(0, 3)):  # Nabothian cysts
        t = rng.uniform(0, 2 * math.pi)
        shapes.append(Ellipse(0.3 * length * math.cos(t), 0.3 * width * math.sin(t), 1.5, 1.5, level=fluid, edge=0.3))
    return Anatomy(
        shapes=shapes,
        labels=CERVIX_LABELS,
        extent_mm=length,
        zoom=(0.55, 0.95),
        fit=[outline],
        angle_range=(-0.5, 0.5),
        mirror=False,  # keeps the bladder between probe and cervix
        probe="transvaginal",
        background="tissue",
        measurements={"cervical_length_mm": length},
    )


def other(rng: np.random.Generator, ga_days: float) -> Anatomy:
    """Views outside the standard planes: placenta, cord loops, a limb in cross-section or a hand."""
    k = ga_days / 7 / 30  # structures scale roughly with the fetus
    fluid = _fluid(rng)
    variant = str(rng.choice(["placenta", "cord", "limb", "hand"]))
    shapes: list[Shape] = []
    if variant == "placenta":
        a, b = 55 * k * rng.uniform(0.8, 1.2), 16 * k * rng.uniform(0.8, 1.3)
        shapes.append(Ellipse(0, 0, a, b, level=db(rng.uniform(-13, -9)), edge=1.0))
        shapes.append(Capsule(-0.9 * a, 0.9 * b, 0.9 * a, 0.9 * b, 0.0, edge=1.2))  # chorionic plate
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(-0.6, 0.6) * a, rng.uniform(-0.4, 0.4) * b
            shapes.append(Ellipse(x, y, 0.08 * a, 0.2 * b, level=fluid))  # venous lakes
        extent = 1.6 * a
    elif variant == "cord":
        for _ in range(rng.integers(2, 6)):
            x, y, r = rng.uniform(-18, 18) * k, rng.uniform(-12, 12) * k, 5 * k * rng.uniform(0.8, 1.2)
            shapes.append(Ellipse(x, y, r, r * rng.uniform(0.7, 1.0), angle=rng.uniform(0, math.pi),
                                  level=db(rng.uniform(-20, -16)), edge=0.6))
            for dx, dy, rv in ((-0.35, -0.3, 0.22), (0.35, -0.3, 0.22), (0.0, 0.35, 0.35)):
                shapes.append(Ellipse(x + dx * r, y + dy * r, rv * r, rv * r, level=fluid, edge=0.25))
        extent = 45 * k
    elif variant == "limb":
        for x in (-9 * k, 9 * k):
            r = 8 * k * rng.uniform(0.8, 1.2)
            shapes.append(Ellipse(x, rng.uniform(-4, 4) * k, r, 0.75 * r, angle=rng.uniform(0, math.pi),
                                  level=db(rng.uniform(-17, -13)), edge=0.6))
            shapes.append(Ellipse(x, 0, 0.22 * r, 0.22 * r, level=db(-2), edge=2.5, bone=1.5))
        extent = 38 * k
    else:  # hand: fingers as thin bones fanning out of a palm
        shapes.append(Ellipse(0, 0, 9 * k, 6 * k, level=db(rng.uniform(-17, -13)), edge=0.6))
        for t in np.linspace(-0.7, 0.7, 4):
            x1, y1 = 22 * k * math.cos(t), 22 * k * math.sin(t)
            shapes.append(Capsule(7 * k * math.cos(t), 7 * k * math.sin(t), x1, y1, 2.2 * k, level=db(-17), edge=0.5))
            shapes.append(Capsule(8 * k * math.cos(t), 8 * k * math.sin(t), 0.9 * x1, 0.9 * y1, 0.5 * k, level=db(-3),
                                  edge=1.5, bone=1.0))
        extent = 35 * k
    return Anatomy(shapes=shapes, labels={}, extent_mm=extent, zoom=(0.35, 0.8), variant=variant)


BUILDERS = {"abdomen": abdomen, "thorax": thorax, "femur": femur, "cervix": cervix, "other": other}


def build(rng: np.random.Generator, label: str, ga_days: float, brain_plane: str | None = None,
          heart: HeartState | None = None) -> Anatomy:
    """The anatomy of one view; ``heart`` (thorax only) sets the cardiac phase and defect of a cine frame."""
    if label == "brain":
        return head(rng, ga_days, brain_plane or "trans-thalamic")
    if label not in BUILDERS:
        raise ValueError(f"the phantom renders brain, {', '.join(BUILDERS)}; not {label!r}")
    if heart is not None:
        if label != "thorax":
            raise ValueError(f"a heart state applies to the thorax view, not {label!r}")
        return thorax(rng, ga_days, heart)
    return BUILDERS[label](rng, ga_days)
