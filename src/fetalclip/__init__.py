"""fetalclip: a vision-language foundation model of fetal ultrasound (after FetalCLIP, Maani et al.).

``fetalclip.load(name_or_path)`` is the entry point; everything else lives in subpackages: ``models``,
``data``, ``train``, ``tasks``, ``bench``, ``sim``, ``serve``.
"""

__version__ = "0.1.0"

from .errors import FetalCLIPError  # noqa: E402
from .models import FetalCLIP, create_model, list_models, load  # noqa: E402

__all__ = ["FetalCLIP", "FetalCLIPError", "__version__", "create_model", "list_models", "load"]
