"""Image preprocessing exactly as the published FetalCLIP evaluation did it, with pixel spacing carried along.

The published pipeline zero-pads an image to a centred square (``left=(side-W)//2``, ``top=(side-H)//2``),
resizes it to 224x224 with PIL's bicubic filter and normalises with the OpenAI CLIP mean/std. We keep every
step on PIL and torchvision's functional ops, so the tensor is bit-identical to open_clip's own eval
transform applied to the padded image. Because padding changes the field of view, the mm-per-pixel of the
model input is ``spacing * max(W, H) / 224`` (``fetalclip.data.sample.spacing_224``, the one rule); measurement
tasks and the gestational-age prompts need it.

Inputs may be PIL images of any mode or numpy arrays (HxW, HxWx1, HxWx3, HxWx4; uint8, uint16, bool or
float). Integer data wider than 8 bits is scaled from its full type range (uint16 65535 -> 255); float data is
taken as [0, 1] when its maximum is at most 1, else as [0, 255]. Alpha is dropped, not composited: ultrasound
exports use it for nothing but opacity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

# The one spacing rule lives with the sample dictionary (the data layer, which imports no torch); it is
# re-exported here because the model's preprocessing is where the padding it accounts for happens.
from ..data.sample import spacing_224

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Union[Image.Image, np.ndarray]

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 224
    pad_to_square: bool = True
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = field(default=OPENAI_MEAN)
    std: tuple[float, ...] = field(default=OPENAI_STD)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PreprocessConfig":
        data = dict(data or {})
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        if data.get("interpolation", "bicubic") not in _INTERPOLATION:
            raise ValueError(f"unknown interpolation {data['interpolation']!r}; use one of {sorted(_INTERPOLATION)}")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:
            array = np.clip(array, 0, None)
        top = float(info.max)
        return np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    raise TypeError(f"unsupported array dtype {array.dtype}")


def to_rgb_image(image: ImageLike) -> Image.Image:
    """Any supported PIL image or array as an 8-bit RGB PIL image."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            array = np.asarray(image)
            if image.mode.startswith("I;16"):
                array = array.astype(np.uint16)
            return to_rgb_image(array)
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        raise TypeError("preprocess takes PIL images or numpy arrays; a tensor is taken to be preprocessed already")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {array.shape}")
    array = np.ascontiguousarray(_array_to_uint8(array))
    pil = Image.fromarray(array)
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Zero-pad to a centred square: ``left=(side-W)//2``, ``top=(side-H)//2``, as published."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new(image.mode, (side, side), 0)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class Preprocessor:
    """Callable turning one image (PIL or array) into a normalised ``[3, S, S]`` float tensor."""

    def __init__(self, config: PreprocessConfig | dict[str, Any] | None = None):
        self.config = config if isinstance(config, PreprocessConfig) else PreprocessConfig.from_dict(config)
        self._filter = _INTERPOLATION[self.config.interpolation]

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def to_model_image(self, image: ImageLike) -> Image.Image:
        """The padded, resized RGB image the model sees (before tensor conversion and normalisation)."""
        rgb = to_rgb_image(image)
        if self.config.pad_to_square:
            rgb = pad_to_square(rgb)
        size = self.config.image_size
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), self._filter)
        return rgb

    def __call__(self, image: ImageLike) -> torch.Tensor:
        tensor = TF.to_tensor(self.to_model_image(image))
        return TF.normalize(tensor, self.config.mean, self.config.std)

    def with_spacing(self, image: ImageLike, spacing_mm: float | None) -> tuple[torch.Tensor, float | None]:
        """The model input and its mm per pixel (``None`` when the original spacing is unknown)."""
        width, height = _size_of(image)
        return self(image), spacing_224(spacing_mm, width=width, height=height, size=self.config.image_size)

    def batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return torch.stack([self(image) for image in images])

    def __repr__(self) -> str:
        return f"Preprocessor({self.config})"


def _size_of(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    array = np.asarray(image)
    return int(array.shape[1]), int(array.shape[0])
