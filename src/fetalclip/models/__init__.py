"""Models: registry, checkpoints (ours and the published format), tokenizer and preprocessing."""

from .checkpoint import read_published_state_dict, write_published_checkpoint
from .loading import create_model, infer_model_name, load
from .model import FetalCLIP
from .preprocess import PreprocessConfig, Preprocessor, pad_to_square, spacing_224, to_rgb_image
from .registry import count_parameters, get_model_config, list_models, register_model

__all__ = [
    "FetalCLIP",
    "PreprocessConfig",
    "Preprocessor",
    "count_parameters",
    "create_model",
    "get_model_config",
    "infer_model_name",
    "list_models",
    "load",
    "pad_to_square",
    "read_published_state_dict",
    "register_model",
    "spacing_224",
    "to_rgb_image",
    "write_published_checkpoint",
]
