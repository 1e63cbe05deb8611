"""Synthetic fetal ultrasound phantom: standard planes with known anatomy, age, spacing and masks.

A new user has no fetal ultrasound data; the phantom lets every part of the system (pretraining, zero-shot
planes and age, probes, segmentation and biometry) run and be checked on a fresh machine. Images are drawn,
not sampled from a model: anatomy sized from growth references at a known gestational age (``anatomy``),
placed in a probe's field of view at a known pixel spacing, then passed through a simple ultrasound physics
model (``render``). Ground truth is therefore exact, and sample ``i`` of seed ``s`` is a pure function of
``(s, i)``.

Use it as a dataset spec (``sim:N[,seed=S,size=PX,classes=...]``, see ``dataset``), from Python
(``render_sample(i, SimConfig(...))``, ``sim_dataset(n, config)``), or export it with ``fetalclip sim``.
Importing this module registers the ``sim`` scheme with ``fetalclip.data.datasets``.
"""

from __future__ import annotations

from ..data.datasets import register_adapter
from .anatomy import ABDOMEN_LABELS, CERVIX_LABELS, FEMUR_LABELS, HEAD_LABELS, THORAX_LABELS
from .dataset import MANIFEST_COLUMNS, open_sim, parse_sim_spec, render_sample, sim_dataset, write_phantom
from .geometry import ellipse_perimeter
from .render import DEFAULT_CLASSES, SimConfig, plan_sample, render_plan

register_adapter("sim", open_sim)

__all__ = [
    "ABDOMEN_LABELS",
    "CERVIX_LABELS",
    "DEFAULT_CLASSES",
    "FEMUR_LABELS",
    "HEAD_LABELS",
    "MANIFEST_COLUMNS",
    "THORAX_LABELS",
    "SimConfig",
    "ellipse_perimeter",
    "open_sim",
    "parse_sim_spec",
    "plan_sample",
    "render_plan",
    "render_sample",
    "sim_dataset",
    "write_phantom",
]
