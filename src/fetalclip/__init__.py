"""fetalclip: a vision-language foundation model of fetal ultrasound (after FetalCLIP, Maani et al.).

``fetalclip.load(name_or_path)`` is the entry point; everything else lives in subpackages: ``models``,
``data``, ``train``, ``tasks``, ``bench``, ``sim``, ``serve``. The model names are resolved lazily so that
``import fetalclip.sim`` or ``fetalclip.growth`` does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import FetalCLIPError  # noqa: E402

_LAZY = {"FetalCLIP", "create_model", "list_models", "load"}

__all__ = ["FetalCLIP", "FetalCLIPError", "__version__", "create_model", "list_models", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'fetalclip' has no attribute {name!r}")
