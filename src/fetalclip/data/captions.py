"""Template captions from sample metadata, for pretraining text.

A caption names the view, the gestational age as "W weeks and D days" when known, and the 224-input pixel
spacing to two decimals, in one sentence, the shape the published captions had. Each view has several
phrasings of our own, and sentence frames, age phrases and spacing phrases vary independently, all chosen by
a seeded generator so a shard set is reproducible (and a resumed run writes the same captions).

Where a dataset has no gestational age but a head circumference (HC18), the age is read off the WHO median
head-circumference curve (``growth.ga_from_hc(hc, 0.5)``): the age at which a typical fetus has that head,
which is what a sonographer's report would state from that measurement.

``CaptionFn`` is the hook for anything smarter (an LLM rewrite done offline, a clinic's own wording): any
callable ``(sample, rng) -> str``, passed in by the caller or named as ``module:function`` on the command
line. The library itself never needs network access for captions.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import FetalCLIPError
from ..growth import ga_from_hc
from .sample import positive_finite

CaptionFn = Callable[[dict[str, Any], np.random.Generator], str]

# view key -> phrasings (a noun phrase that reads after "the"). Keys cover the canonical plane labels, the
# brain sub-planes and finer views a hospital's labels may carry (``view`` sample field).
VIEW_PHRASES: dict[str, tuple[str, ...]] = {
    # head and brain
    "brain": ("fetal brain", "fetal head", "fetal head in an axial plane", "fetal cranium and brain"),
    "trans-thalamic": ("fetal brain in the trans-thalamic plane", "trans-thalamic plane of the fetal head",
                       "fetal head at the level of the thalami", "axial trans-thalamic view of the fetal brain"),
    "trans-cerebellum": ("fetal brain in the trans-cerebellar plane", "trans-cerebellar plane of the fetal head",
                         "fetal posterior fossa with the cerebellum", "axial view of the fetal cerebellum"),
    "trans-ventricular": ("fetal brain in the trans-ventricular plane", "trans-ventricular plane of the fetal head",
                          "fetal lateral ventricles", "axial view of the fetal brain at the lateral ventricles"),
    # trunk
    "abdomen": ("fetal abdomen", "fetal abdomen at the level of the stomach", "transverse section of the fetal abdomen",
                "fetal abdominal circumference plane"),
    "thorax": ("fetal thorax with the heart", "fetal chest", "fetal heart", "transverse view of the fetal thorax"),
    "four_chamber": ("four-chamber view of the fetal heart", "fetal heart in the four-chamber view",
                     "four chambers of the fetal heart", "apical four-chamber plane of the fetal heart"),
    "lvot": ("left ventricular outflow tract of the fetal heart", "fetal heart in the LVOT view",
             "fetal aortic outflow from the left ventricle"),
    "rvot": ("right ventricular outflow tract of the fetal heart", "fetal heart in the RVOT view",
             "fetal pulmonary outflow from the right ventricle"),
    "three_vessel": ("three-vessel view of the fetal heart", "fetal three-vessel view",
                     "fetal pulmonary artery, aorta and superior vena cava in cross-section"),
    "three_vessel_trachea": ("three-vessel and trachea view of the fetal heart", "fetal 3VT view",
                             "fetal great vessels beside the trachea"),
    "spine": ("fetal spine", "fetal vertebral column", "sagittal view of the fetal spine", "fetal spine and its vertebrae"),
    "kidney": ("fetal kidneys", "fetal renal area", "transverse view of both fetal kidneys", "fetal kidney"),
    "bladder": ("fetal bladder", "fetal urinary bladder", "fetal pelvis with the bladder"),
    # face
    "profile": ("fetal profile", "fetal face in profile", "mid-sagittal view of the fetal face", "fetal facial profile"),
    "lips_nose": ("fetal lips and nose", "fetal upper lip and nostrils", "coronal view of the fetal lips and nose",
                  "fetal nose and lips"),
    "orbits": ("fetal orbits", "fetal eyes and orbits", "coronal view of the fetal orbits"),
    # limbs
    "femur": ("fetal femur", "fetal thigh bone", "fetal femur for length measurement", "long axis of the fetal femur"),
    "humerus": ("fetal humerus", "fetal upper arm bone", "long axis of the fetal humerus"),
    "limbs": ("fetal limbs", "fetal arm and leg", "fetal extremities"),
    "upper_limb": ("fetal upper limb", "fetal arm", "fetal arm and hand"),
    "lower_limb": ("fetal lower limb", "fetal leg", "fetal leg and foot"),
    "hand": ("fetal hand", "fetal hand and fingers", "open fetal hand"),
    "foot": ("fetal foot", "sole of the fetal foot", "fetal foot and toes"),
    # maternal and adnexa
    "cervix": ("maternal cervix", "uterine cervix of the mother", "maternal cervical canal", "cervix in a transvaginal view"),
    "placenta": ("placenta", "placenta and its cord insertion", "placental tissue"),
    "umbilical_cord": ("umbilical cord", "fetal umbilical cord vessels", "umbilical cord in cross-section"),
    "other": ("fetal anatomy", "fetus", "fetal structures"),
}

# Views inside another (a brain sub-plane inside the head, a cardiac view inside the thorax, a femur inside the
# leg): a view is never a negative for its ancestors or descendants (``absent_views``).
VIEW_PARENTS: dict[str, str] = {
    "trans-thalamic": "brain", "trans-cerebellum": "brain", "trans-ventricular": "brain",
    "four_chamber": "thorax", "lvot": "thorax", "rvot": "thorax", "three_vessel": "thorax",
    "three_vessel_trachea": "thorax", "femur": "lower_limb", "foot": "lower_limb", "humerus": "upper_limb",
    "hand": "upper_limb", "upper_limb": "limbs", "lower_limb": "limbs",
}


# Other names for the keys above (compared after lowercasing and turning spaces/hyphens into '_').
_VIEW_ALIASES: dict[str, str] = {
    "head": "brain", "fetal_brain": "brain", "fetal_head": "brain",
    "transthalamic": "trans-thalamic", "trans_thalamic": "trans-thalamic", "tt": "trans-thalamic",
    "trans_cerebellum": "trans-cerebellum", "trans_cerebellar": "trans-cerebellum", "transcerebellar": "trans-cerebellum",
    "tc": "trans-cerebellum",
    "trans_ventricular": "trans-ventricular", "transventricular": "trans-ventricular", "tv": "trans-ventricular",
    "heart": "thorax", "chest": "thorax", "fetal_thorax": "thorax", "fetal_heart": "thorax",
    "4ch": "four_chamber", "four_chamber_view": "four_chamber", "4_chamber": "four_chamber",
    "left_ventricular_outflow_tract": "lvot", "right_ventricular_outflow_tract": "rvot",
    "3vv": "three_vessel", "three_vessel_view": "three_vessel", "3vt": "three_vessel_trachea",
    "three_vessel_and_trachea": "three_vessel_trachea",
    "kidneys": "kidney", "renal": "kidney", "lips": "lips_nose", "nose": "lips_nose", "lips/nose": "lips_nose",
    "face": "profile", "upper_limbs": "upper_limb", "arm": "upper_limb", "lower_limbs": "lower_limb", "leg": "lower_limb",
    "limb": "limbs", "feet": "foot", "hands": "hand", "cord": "umbilical_cord", "maternal_cervix": "cervix",
    "fetal_abdomen": "abdomen", "stomach": "abdomen", "fetal_femur": "femur", "fetal_spine": "spine",
    "pelvic": "bladder", "airway": "three_vessel_trachea", "obstetric": "other",
}

# Sentence frames; {view} is a VIEW_PHRASES entry, {ga} and {spacing} are phrases below or empty.
TEMPLATES = (
    "Ultrasound image of the {view}{ga}{spacing}.",
    "A fetal ultrasound scan showing the {view}{ga}{spacing}.",
    "Sonogram of the {view}{ga}{spacing}.",
    "Obstetric ultrasound of the {view}{ga}{spacing}.",
    "This prenatal ultrasound shows the {view}{ga}{spacing}.",
    "B-mode ultrasound view of the {view}{ga}{spacing}.",
)
GA_PHRASES = (
    " at {ga}",
    " at a gestational age of {ga}",
    ", {ga} of gestation",
    " in a pregnancy of {ga}",
)
SPACING_PHRASES = (
    ", {spacing} mm per pixel",
    ", pixel spacing {spacing} mm",
    ", imaged at {spacing} mm/pixel",
    " with a pixel size of {spacing} mm",
)

# A sample's ``finding`` (a diagnosis its report states) -> sentences appended to the caption. Only cardiac
# findings so far: what the phantom's heart-defect sets carry, and what a screening report says of the heart.
NORMAL_HEART = "normal_heart"
FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    NORMAL_HEART: ("The four chambers of the heart appear normal.", "Normal four-chamber heart.",
                   "No cardiac abnormality is seen."),
    "hlhs": ("Hypoplastic left heart: the left ventricle is small.", "The left ventricle is hypoplastic.",
             "Small left ventricle, suspicious for hypoplastic left heart syndrome."),
    "vsd": ("A ventricular septal defect is seen.", "Defect in the interventricular septum.",
            "The ventricular septum is interrupted (VSD)."),
}

# Kept for callers of the first version: canonical key -> its first phrasing.
VIEW_NAMES: dict[str, str] = {key: phrases[0] for key, phrases in VIEW_PHRASES.items()}


def format_ga(ga_days: float) -> str:
    """``142`` -> ``"20 weeks and 2 days"``."""
    days = int(round(float(ga_days)))
    return f"{days // 7} weeks and {days % 7} days"


def view_key(name: str | None) -> str | None:
    """The VIEW_PHRASES key for a label or view name, or ``None`` when unknown."""
    if name is None:
        return None
    if name in VIEW_PHRASES:
        return name
    normal = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    if normal in VIEW_PHRASES:
        return normal
    return _VIEW_ALIASES.get(normal) or _VIEW_ALIASES.get(normal.replace("_", ""))


def sample_view(sample: dict[str, Any]) -> str:
    """The most specific view a sample names: ``view``, then ``brain_plane``, then ``label``.

    A known name comes back as its ``VIEW_PHRASES`` key, an unknown one as written; this is also the
    retrieval target that training evaluation matches captions by.
    """
    label = sample.get("label")
    for name in (sample.get("view"), sample.get("brain_plane"), label):
        if not name:
            continue
        key = view_key(name)
        if key == "other" and name is not label:
            continue  # an "other" sub-plane says less than the label (a brain image is still a brain image)
        return key or str(name)
    return "other"


def phrases_of_view(view: str) -> tuple[str, ...]:
    """Phrasings of a view key; an unknown name is still the best description available: used as written."""
    return VIEW_PHRASES.get(view) or (view.replace("_", " "),)


def view_phrases(sample: dict[str, Any]) -> tuple[str, ...]:
    """Phrasings for the most specific view the sample names (see ``sample_view``)."""
    return phrases_of_view(sample_view(sample))


def view_name(sample: dict[str, Any]) -> str:
    return view_phrases(sample)[0]


def caption_ga_days(sample: dict[str, Any]) -> tuple[float | None, str | None]:
    """(gestational age in days for the caption, where it came from: ``dataset`` or ``who_hc_median``)."""
    if sample.get("ga_days") is not None:
        return float(sample["ga_days"]), "dataset"
    if sample.get("hc_mm") is not None:
        return float(ga_from_hc(float(sample["hc_mm"]), 0.5)), "who_hc_median"
    return None, None


def _checked(value: Any, field: str, sample: dict[str, Any]) -> float | None:
    try:
        return positive_finite(value, field)
    except ValueError as exc:
        raise FetalCLIPError(f"{sample.get('source')}: cannot caption it: {exc}") from None


def template_caption(sample: dict[str, Any], rng: np.random.Generator) -> str:
    """One sentence from the sample's view, gestational age and 224-input pixel spacing."""
    phrases = view_phrases(sample)
    view = phrases[int(rng.integers(len(phrases)))]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    ga_days, _ = caption_ga_days(sample)
    ga_frame = GA_PHRASES[int(rng.integers(len(GA_PHRASES)))]
    spacing_frame = SPACING_PHRASES[int(rng.integers(len(SPACING_PHRASES)))]
    # Numbers that reach here from a shard or a caller's own sample are checked again: a caption must never
    # read "pixel spacing nan mm" or "-3 weeks".
    ga_days = _checked(ga_days, "gestational age (days)", sample)
    ga = ga_frame.format(ga=format_ga(ga_days)) if ga_days is not None else ""
    spacing_224 = _checked(sample.get("pixel_spacing_224_mm"), "pixel_spacing_224_mm", sample)
    spacing = spacing_frame.format(spacing=f"{spacing_224:.2f}") if spacing_224 is not None else ""
    text = template.format(view=view, ga=ga, spacing=spacing)
    finding = sample.get("finding")
    if finding:  # drawn last, so captions without a finding are what they always were
        phrases = FINDING_PHRASES.get(str(finding)) or (f"Finding: {str(finding).replace('_', ' ')}.",)
        text += " " + phrases[int(rng.integers(len(phrases)))]
    return text


def plain_caption(sample: dict[str, Any], rng: np.random.Generator) -> str:
    """The view alone in one of the sentence frames: no age, no spacing (the packaged prompts' own shape).

    For recipes that train for transfer: numbers in only one source's captions (HC18 has them, FETAL_PLANES_DB
    does not) let the towers pair "a caption with numbers" with "an image that looks like that source", and
    the prompts, which carry no numbers, then point away from that source's images.
    """
    return view_caption(sample_view(sample), rng)


def view_lineage(view: str) -> tuple[str, ...]:
    """The view and its ancestors in ``VIEW_PARENTS``, most specific first (``femur`` -> femur, lower_limb, limbs)."""
    chain = [view]
    while chain[-1] in VIEW_PARENTS:
        chain.append(VIEW_PARENTS[chain[-1]])
    return tuple(chain)


def absent_views(present: Iterable[str]) -> tuple[str, ...]:
    """The known views a training set never shows: neither one of ``present`` nor an ancestor or descendant of one.

    ``other`` is never absent (it names no anatomy). Unknown names in ``present`` relate to nothing.
    """
    lineages = [view_lineage(view) for view in present]
    return tuple(key for key in VIEW_PHRASES if key != "other"
                 and not any(key in lineage or lineage[0] in view_lineage(key) for lineage in lineages))


def view_caption(view: str, rng: np.random.Generator) -> str:
    """A plain caption of a named view (``plain_caption`` without a sample): one phrasing in one sentence frame."""
    phrases = phrases_of_view(view)
    phrase = phrases[int(rng.integers(len(phrases)))]
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(view=phrase, ga="", spacing="")


def caption_sample(sample: dict[str, Any], rng: np.random.Generator, caption_fn: CaptionFn | None = None,
                   own: bool = True) -> str:
    """The sample's own ``caption`` when it has one (and ``own``), else ``caption_fn`` (default: ``template_caption``)."""
    if own and sample.get("caption"):
        return str(sample["caption"])
    text = (caption_fn or template_caption)(sample, rng)
    if not isinstance(text, str) or not text.strip():
        raise FetalCLIPError(f"caption function returned {text!r} for {sample.get('source')}; expected a non-empty string")
    return text.strip()


def load_caption_fn(reference: str) -> CaptionFn:
    """``"package.module:function"`` -> that callable (the command line's ``--captions`` hook)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise FetalCLIPError(f"caption function {reference!r}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FetalCLIPError(f"caption function {reference!r}: cannot import {module_name} ({exc})") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise FetalCLIPError(f"caption function {reference!r}: {module_name} has no callable {attribute!r}")
    return function
