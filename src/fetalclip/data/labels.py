"""Canonical class keys and the names different sources use for them.

Every adapter maps its labels through here, so a FETAL_PLANES_DB-style name (``Fetal thorax``), a
clinician's shorthand (``4CH``) or our own key (``thorax``) all arrive at tasks as the same key. Planes and
brain sub-planes are separate vocabularies because FETAL_PLANES_DB labels both on every image.
"""

from __future__ import annotations

import re

from ..errors import FetalCLIPError

# key -> aliases (compared case-insensitively, with runs of spaces, '_' and '-' treated alike).
PLANE_ALIASES: dict[str, tuple[str, ...]] = {
    "abdomen": ("fetal abdomen", "abdominal", "abdomen plane", "stomach"),
    "brain": ("fetal brain", "head", "fetal head", "skull"),
    "femur": ("fetal femur", "thigh"),
    "thorax": ("fetal thorax", "heart", "fetal heart", "thorax/heart", "chest", "4ch", "four chamber", "four-chamber view"),
    "cervix": ("maternal cervix", "cervical"),
    "kidney": ("kidneys", "fetal kidney", "renal"),
    "lips_nose": ("lips/nose", "lips", "nose", "lips and nose", "nose and lips"),
    "profile": ("fetal profile", "face profile", "facial profile"),
    "spine": ("fetal spine", "vertebral column"),
    "other": ("others", "background", "non-standard"),
}

BRAIN_PLANE_ALIASES: dict[str, tuple[str, ...]] = {
    "trans-thalamic": ("transthalamic", "tt", "trans thalamic"),
    "trans-cerebellum": ("transcerebellar", "trans-cerebellar", "tc", "trans cerebellum", "transcerebellum"),
    "trans-ventricular": ("transventricular", "tv", "trans ventricular"),
    "other": ("others",),
}

# FETAL_PLANES_DB marks images that are not brain scans this way; they have no brain sub-plane.
NOT_A_BRAIN = ("not a brain",)

VOCABULARIES = {"plane": PLANE_ALIASES, "brain_plane": BRAIN_PLANE_ALIASES}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _lookup_table(vocabulary: str) -> dict[str, str]:
    table = {}
    for key, aliases in VOCABULARIES[vocabulary].items():
        for alias in (key, *aliases):
            table[_normalise(alias)] = key
    return table


_TABLES = {name: _lookup_table(name) for name in VOCABULARIES}


def canonical_label(name: str, vocabulary: str = "plane", strict: bool = True) -> str | None:
    """The canonical key for ``name``; unknown names raise (``strict``) or come back unchanged.

    For ``brain_plane``, FETAL_PLANES_DB's ``Not A Brain`` maps to ``None``.
    """
    if vocabulary not in _TABLES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; use one of {sorted(_TABLES)}")
    normalised = _normalise(str(name))
    if vocabulary == "brain_plane" and normalised in NOT_A_BRAIN:
        return None
    key = _TABLES[vocabulary].get(normalised)
    if key is not None:
        return key
    if strict:
        raise FetalCLIPError(
            f"unknown {vocabulary} label {name!r}; known labels: {', '.join(VOCABULARIES[vocabulary])}"
        )
    return str(name)


def known_labels(vocabulary: str = "plane") -> list[str]:
    return list(VOCABULARIES[vocabulary])
