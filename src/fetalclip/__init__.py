"""fetalclip: a vision-language foundation model of fetal ultrasound (after FetalCLIP, Maani et al.).

Entry points (``import fetalclip`` loads none of them until first use, so it does not import torch):

- ``load(name_or_path)``: a model by registry name, checkpoint folder, published ``FetalCLIP_weights.pt`` or
  ``hf-hub:ORG/REPO``; ``create_model(name)`` builds one randomly initialised; ``list_models()`` names them;
  ``FetalCLIP`` is the model class (``encode_image``, ``encode_text``, ``tokenize``, ``preprocess``).
- ``Predictor(model, calibration)(image, spacing_mm=...)``: one scan in, one answer out
  (``fetalclip.tasks.predictor``); ``calibrate_planes(model, dataset)`` fits the calibration it uses and
  ``load_calibration(path)`` reads a saved one (``fetalclip.tasks.calibration``).
- ``FetalCLIPError``: the base of every expected failure (``fetalclip.errors``).

Everything else lives in subpackages: ``models``, ``data``, ``train``, ``tasks``, ``bench``, ``sim``, ``serve``;
the command line is ``fetalclip`` (or ``python -m fetalclip``, ``torchrun -m fetalclip train``). The names above
resolve lazily through a module ``__getattr__``; ``__dir__`` and ``__all__`` list them, so ``dir(fetalclip)``,
``help(fetalclip)`` and editors see the public API all the same.
"""

import importlib as _importlib  # private names: dir(fetalclip) is the public API

from .errors import FetalCLIPError

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "FetalCLIP": "fetalclip.models",
    "create_model": "fetalclip.models",
    "list_models": "fetalclip.models",
    "load": "fetalclip.models",
    "Predictor": "fetalclip.tasks.predictor",
    "calibrate_planes": "fetalclip.tasks.calibration",
    "load_calibration": "fetalclip.tasks.calibration",
}

__all__ = ["FetalCLIPError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fetalclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
