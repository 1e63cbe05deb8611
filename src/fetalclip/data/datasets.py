"""Dataset specs (``hc18:DIR``, ``fpdb:DIR``, ``csv:FILE``, ``folder:DIR``, ``shards:DIR``, ``sim:N``): the registry.

Every command opens its data with ``open_dataset(spec)``, which looks the scheme up here and returns a
``SampleDataset`` (records plus a loader, see ``records``; every adapter's samples have the same keys, see
``sample``). Adapters register under a scheme name. The table readers (``manifests``) register on import;
``sim`` (``fetalclip.sim``) and ``shards`` (``fetalclip.data.shards``) are imported only when asked for,
keeping this module free of the phantom's dependencies and of the shard format. The names of ``records`` and
``manifests`` are importable from here as well, as they were before those modules were split out.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

from ..errors import FetalCLIPError
from .manifests import (
    CSV_OPTIONAL_FLOATS,
    FPDB_COLUMNS,
    FPDB_CSV,
    HC18_COLUMNS,
    HC18_CSV,
    hc18_subject,
    load_hc18_record,
    open_csv,
    open_folder,
    open_fpdb,
    open_hc18,
)
from .records import Loader, Record, SampleDataset, image_size, load_record_image

log = logging.getLogger("fetalclip")


_ADAPTERS: dict[str, Callable[[str], SampleDataset]] = {}
# scheme -> module that registers it on import (the phantom's dependencies, the shard package, only when asked for)
_LAZY_ADAPTERS = {"sim": "fetalclip.sim", "shards": "fetalclip.data.shards"}


def register_adapter(scheme: str, factory: Callable[[str], SampleDataset]) -> None:
    _ADAPTERS[scheme] = factory


def parse_spec(spec: str) -> tuple[str, str]:
    scheme, sep, argument = spec.partition(":")
    if not sep or not argument:
        raise FetalCLIPError(f"dataset spec {spec!r}: expected SCHEME:ARG with scheme one of {', '.join(known_schemes())}")
    return scheme, argument


def known_schemes() -> list[str]:
    return sorted(set(_ADAPTERS) | set(_LAZY_ADAPTERS))


def open_dataset(spec: str) -> SampleDataset:
    """Open a dataset from its command-line spec."""
    scheme, argument = parse_spec(spec)
    if scheme not in _ADAPTERS and scheme in _LAZY_ADAPTERS:
        importlib.import_module(_LAZY_ADAPTERS[scheme])
    if scheme not in _ADAPTERS:
        raise FetalCLIPError(f"dataset spec {spec!r}: unknown scheme {scheme!r}; known: {', '.join(known_schemes())}")
    dataset = _ADAPTERS[scheme](argument)
    # Every command opens its data here, so this is where left-out rows are announced (once per dataset).
    summary = dataset.describe_problems()
    if summary:
        log.warning("%s", summary)
    return dataset


register_adapter("hc18", open_hc18)
register_adapter("fpdb", open_fpdb)
register_adapter("csv", open_csv)
register_adapter("folder", open_folder)


def dataset_root(spec: str) -> Path:
    """The folder a file-based spec points into (for relative outputs and provenance)."""
    scheme, argument = parse_spec(spec)
    path = Path(argument)
    return path.parent if scheme == "csv" else path


__all__ = [
    "CSV_OPTIONAL_FLOATS",
    "FPDB_COLUMNS",
    "FPDB_CSV",
    "HC18_COLUMNS",
    "HC18_CSV",
    "Loader",
    "Record",
    "SampleDataset",
    "dataset_root",
    "hc18_subject",
    "known_schemes",
    "image_size",
    "load_hc18_record",
    "load_record_image",
    "open_csv",
    "open_dataset",
    "open_folder",
    "open_fpdb",
    "open_hc18",
    "parse_spec",
    "register_adapter",
]
