"""Baseline models: any open_clip model, with weights from local disk only, behind our model interface.

The benchmark compares our checkpoints with general-domain and biomedical CLIPs (CLIP ViT-L/14, BiomedCLIP,
...). Those are open_clip models with their own preprocessing (usually resize-shortest-side + centre crop)
and their own tokenizer and context length (77 for CLIP), and they must be evaluated with those, not ours,
or the comparison is unfair to them. ``BaselineModel`` therefore subclasses our ``FetalCLIP`` wrapper
(same ``encode_image``/``encode_text``/``tokenize``/``preprocess``/``context_length``) but swaps in the
model's own transform and tokenizer. The rest of the model contract is inherited unchanged: ``input_dtype``,
``image_block_count`` and ``encode_image_intermediates`` work for open_clip's own ViT and ModifiedResNet towers
and for timm ViT trunks (BiomedCLIP); another timm trunk has no blocks to tap (``image_block_count`` is
``None``), so the tasks that need them (the segmentation probe) report it as unavailable rather than failing.

Specs (``--model`` values):

    open_clip:ViT-L-14@openai           a pretrained tag, found in open_clip's or huggingface_hub's cache
    open_clip:ViT-B-16@/path/w.pt       an architecture plus a local weights file (any open_clip checkpoint)
    open_clip:/path/folder              a folder holding open_clip_config.json and its weights
    open_clip:local-dir:/path/folder    the same, in open_clip's own spelling
    open_clip:hf-hub:ORG/REPO           an open_clip model published on a hub, from the local cache
    open_clip:ViT-B-32@random           the architecture with random weights (a floor for comparisons)
    clip-vit-l14, clip-vit-b16, biomedclip   shorthands for the first and hub forms

Nothing is ever downloaded (these machines have no network, and a benchmark must not fetch hundreds of MB
behind the user's back): weights that are not on disk are a ``WeightsNotFoundError`` naming where we looked
and how to provide them. Even the hub form is loaded from the cache snapshot folder, never through the hub.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import FetalCLIPError
from ..models.checkpoint import check_torch_file, unpickling_reason
from ..models.model import FetalCLIP
from ..models.preprocess import ImageLike, PreprocessConfig, to_rgb_image
from ..provenance import base_provenance

PREFIX = "open_clip:"
RANDOM = "random"
ALIASES = {
    "clip-vit-l14": "open_clip:ViT-L-14@openai",
    "clip-vit-b16": "open_clip:ViT-B-16@openai",
    "biomedclip": "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
}
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin")


class WeightsNotFoundError(FetalCLIPError):
    """A baseline whose weights are not on this machine (and will not be downloaded)."""


def is_baseline_spec(spec: str) -> bool:
    return spec.startswith(PREFIX) or spec in ALIASES


# -- resolving a spec to local files -------------------------------------------------------------------------
class BaselineSource:
    """Where a baseline's architecture and weights come from, all local."""

    def __init__(self, spec: str, arch: str | None, weights: Path | None, folder: Path | None, tag: str | None, tag_cfg: dict):
        self.spec, self.arch, self.weights, self.folder, self.tag, self.tag_cfg = spec, arch, weights, folder, tag, tag_cfg

    @property
    def is_random(self) -> bool:
        return self.tag == RANDOM

    def describe(self) -> str:
        if self.is_random:
            return f"{self.arch} (random weights)"
        return f"{self.arch or self.folder} from {self.weights}"


def _expand(spec: str) -> str:
    return ALIASES.get(spec, spec)


def _cache_dirs(cache_dir: str | None) -> list[Path]:
    # open_clip downloads URL weights to ~/.cache/clip unless told otherwise; honour an explicit folder first.
    dirs = [Path(cache_dir).expanduser()] if cache_dir else []
    return dirs + [Path("~/.cache/clip").expanduser()]


def _hub_cached(repo_id: str, names: Sequence[str], cache_dir: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_weight_names(filename: str | None) -> list[str]:
    if not filename:
        return list(OPEN_CLIP_WEIGHTS)
    stem, suffix = os.path.splitext(filename)
    return ([stem + ".safetensors"] if suffix in (".bin", ".pth", ".pt") else []) + [filename]


def _folder_weights(folder: Path) -> Path | None:
    for name in (*OPEN_CLIP_WEIGHTS, "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_baseline(spec: str, cache_dir: str | None = None) -> BaselineSource:
    """Local files for a baseline spec; ``WeightsNotFoundError`` when they are not on disk."""
    import open_clip

    full = _expand(spec)
    if not full.startswith(PREFIX):
        raise FetalCLIPError(f"{spec!r} is not a baseline spec (expected {PREFIX}ARCH@TAG_OR_FILE or one of {', '.join(ALIASES)})")
    body = full[len(PREFIX):]
    if not body:
        raise FetalCLIPError(f"{spec!r}: no model after {PREFIX!r}")

    # Folder forms: open_clip_config.json + weights side by side.
    if body.startswith("local-dir:") or (("@" not in body) and Path(body).expanduser().is_dir()):
        folder = Path(body.removeprefix("local-dir:")).expanduser()
        if not (folder / OPEN_CLIP_CONFIG).is_file():
            raise FetalCLIPError(f"{folder}: not an open_clip model folder ({OPEN_CLIP_CONFIG} is missing)")
        weights = _folder_weights(folder)
        if weights is None:
            raise WeightsNotFoundError(f"{folder}: has {OPEN_CLIP_CONFIG} but no weights file ({', '.join(OPEN_CLIP_WEIGHTS)})")
        return BaselineSource(spec, None, weights, folder, None, {})

    if body.startswith("hf-hub:"):
        repo_id = body.removeprefix("hf-hub:").strip("/")
        config = _hub_cached(repo_id, [OPEN_CLIP_CONFIG], cache_dir)
        weights = _hub_cached(repo_id, OPEN_CLIP_WEIGHTS, cache_dir)
        if config is None or weights is None or config.parent != weights.parent:
            raise WeightsNotFoundError(
                f"{spec}: {repo_id} is not in the local Hugging Face cache (nothing is downloaded here). On a machine "
                f"with network access run `huggingface-cli download {repo_id}` and copy the cache, or pass the "
                f"downloaded folder as {PREFIX}/path/to/folder."
            )
        return BaselineSource(spec, None, weights, config.parent, None, {})

    arch, _, tag = body.partition("@")
    if open_clip.get_model_config(arch) is None:
        raise FetalCLIPError(f"{spec!r}: unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise FetalCLIPError(
            f"{spec!r}: say which weights: {PREFIX}{arch}@TAG (known tags: {', '.join(tags) or 'none'}), "
            f"{PREFIX}{arch}@/path/to/weights, or {PREFIX}{arch}@{RANDOM}"
        )
    if tag == RANDOM:
        return BaselineSource(spec, arch, None, None, RANDOM, {})
    path = Path(tag).expanduser()
    if path.is_file():
        return BaselineSource(spec, arch, path, None, None, {})
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        if os.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise WeightsNotFoundError(f"{spec}: weights file {path} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise FetalCLIPError(f"{spec!r}: {tag!r} is neither a file nor a pretrained tag of {arch} ({', '.join(tags) or 'none'})")

    looked: list[str] = []
    if tag_cfg.get("file"):
        candidate = Path(tag_cfg["file"]).expanduser()
        if candidate.is_file():
            return BaselineSource(spec, arch, candidate, None, tag, tag_cfg)
        looked.append(str(candidate))
    if tag_cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" (default file name) or "org/repo/file.bin".
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        found = _hub_cached(repo_id, _hub_weight_names(filename or None), cache_dir)
        if found is not None:
            return BaselineSource(spec, arch, found, None, tag, tag_cfg)
        looked.append(f"Hugging Face cache for {repo_id}")
    if tag_cfg.get("url"):
        name = os.path.basename(tag_cfg["url"])
        for folder in _cache_dirs(cache_dir):
            if (folder / name).is_file():
                return BaselineSource(spec, arch, folder / name, None, tag, tag_cfg)
            looked.append(str(folder / name))
    raise WeightsNotFoundError(
        f"{spec}: the {arch} '{tag}' weights are not on this machine (looked in: {'; '.join(looked)}). "
        f"Nothing is downloaded here: fetch them where there is network access and pass the file as "
        f"{PREFIX}{arch}@/path/to/weights."
    )


# -- preprocessing and the model wrapper ---------------------------------------------------------------------
class OpenCLIPPreprocess:
    """A baseline's own eval transform behind our ``Preprocessor`` interface."""

    def __init__(self, cfg: dict[str, Any]):
        from open_clip.transform import PreprocessCfg, image_transform_v2

        known = set(PreprocessCfg.__dataclass_fields__)
        self.open_clip_cfg = {key: copy.deepcopy(value) for key, value in cfg.items() if key in known}
        transform = image_transform_v2(PreprocessCfg(**self.open_clip_cfg), is_train=False)
        steps = list(transform.transforms)
        split = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), len(steps))
        self._pil_steps, self._tensor_steps = steps[:split], steps[split:]
        size = self.open_clip_cfg.get("size", 224)
        size = size if isinstance(size, int) else int(size[0])
        self.resize_mode = self.open_clip_cfg.get("resize_mode", "shortest")
        self.config = PreprocessConfig(
            image_size=size,
            pad_to_square=self.resize_mode == "longest",
            interpolation=self.open_clip_cfg.get("interpolation", "bicubic"),
            mean=tuple(float(v) for v in self.open_clip_cfg.get("mean", PreprocessConfig().mean)),
            std=tuple(float(v) for v in self.open_clip_cfg.get("std", PreprocessConfig().std)),
        )

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def to_model_image(self, image: ImageLike):
        picture = to_rgb_image(image)
        for step in self._pil_steps:
            picture = step(picture)
        return picture

    def __call__(self, image: ImageLike) -> torch.Tensor:
        data = self.to_model_image(image)
        for step in self._tensor_steps:
            data = step(data)
        return data

    def batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return torch.stack([self(image) for image in images])

    def with_spacing(self, image: ImageLike, spacing_mm: float | None) -> tuple[torch.Tensor, float | None]:
        """Model input and its mm per pixel: shortest side fills the input when cropping, the longest when padding."""
        tensor = self(image)
        if spacing_mm is None or self.resize_mode == "squash":
            return tensor, None  # squashing makes pixels anisotropic: no single spacing
        width, height = to_rgb_image(image).size
        side = min(width, height) if self.resize_mode == "shortest" else max(width, height)
        return tensor, float(spacing_mm) * side / self.image_size

    def __repr__(self) -> str:
        return f"OpenCLIPPreprocess({self.open_clip_cfg})"


class BaselineModel(FetalCLIP):
    """An open_clip model with its own tokenizer and preprocessing, used wherever our models are."""

    def __init__(self, clip: torch.nn.Module, config: dict[str, Any], tokenizer, preprocess_cfg: dict[str, Any]):
        super().__init__(clip, config)
        self.preprocess = OpenCLIPPreprocess(preprocess_cfg)
        self._tokenizer = tokenizer

    @property
    def context_length(self) -> int:
        length = getattr(self._tokenizer, "context_length", None) or getattr(self.clip, "context_length", 77)
        return int(length)

    def tokenize(self, texts: str | Sequence[str]) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts))

    def save(self, out_dir, provenance=None, overwrite: bool = False):
        raise FetalCLIPError(f"{self.name}: baselines are open_clip models; save them with open_clip, not as fetalclip checkpoints")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Make any hub client that open_clip calls refuse the network instead of trying it."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        from huggingface_hub import constants

        saved_flag = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        constants, saved_flag = None, None
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _model_cfg(source: BaselineSource) -> dict[str, Any]:
    import open_clip

    if source.folder is not None:
        config_path = source.folder / OPEN_CLIP_CONFIG
        try:
            config = json.loads(config_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise FetalCLIPError(f"{config_path}: cannot read it as JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
        if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg:
            raise FetalCLIPError(f"{config_path}: expected an object with a 'model_cfg' object holding 'embed_dim'")
        return model_cfg
    return open_clip.get_model_config(source.arch)


def load_baseline(
    spec: str, device: str | torch.device = "cpu", seed: int = 0, cache_dir: str | None = None, label: str | None = None
) -> BaselineModel:
    """Load a baseline from local files (see the module docstring for the spec forms)."""
    import open_clip

    source = resolve_baseline(spec, cache_dir)
    if source.weights is not None and source.weights.suffix not in (".safetensors", ".npz", ".npy"):
        check_torch_file(source.weights)  # a text or HTML file named .bin is refused before torch reads it
    model_cfg = _model_cfg(source)
    forced: dict[str, Any] = {}
    if source.tag_cfg:
        # A file path bypasses open_clip's tag table, so carry over what the tag says about the model.
        forced = {key: source.tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in source.tag_cfg}
    try:
        with _offline():
            if source.folder is not None:
                clip = open_clip.create_model(f"local-dir:{source.folder}", device=device, weights_only=True)
                tokenizer = open_clip.get_tokenizer(f"local-dir:{source.folder}")
            else:
                state = torch.random.get_rng_state()
                torch.manual_seed(seed)
                try:
                    clip = open_clip.create_model(
                        source.arch,
                        pretrained=None if source.is_random else str(source.weights),
                        force_quick_gelu=bool(source.tag_cfg.get("quick_gelu", False)),
                        force_preprocess_cfg=forced or None,
                        pretrained_text=False,
                        device=device,
                        # open_clip's default today, pinned: a baseline file never gets to run pickled code.
                        weights_only=True,
                    )
                finally:
                    torch.random.set_rng_state(state)
                tokenizer = open_clip.get_tokenizer(source.arch)
    except pickle.UnpicklingError as exc:
        raise FetalCLIPError(
            f"{spec}: refused to load {source.describe()}: it is damaged or holds pickled objects other than "
            f"tensors ({unpickling_reason(exc)})"
        ) from None
    except ImportError as exc:
        raise FetalCLIPError(f"{spec}: this open_clip model needs an extra package ({exc}); install it and retry") from exc
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, IndexError, struct.error, zipfile.BadZipFile) as exc:
        # The last four: torch's reader on a truncated or damaged weights file.
        reason = unpickling_reason(exc)
        raise FetalCLIPError(f"{spec}: open_clip could not build it from {source.describe()}: {reason}") from exc
    preprocess_cfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    config = {
        "model_name": label or spec,
        "embed_dim": int(model_cfg["embed_dim"]),
        "baseline": {"spec": spec, "architecture": source.arch, "folder": str(source.folder) if source.folder else None},
        "preprocess": PreprocessConfig().to_dict(),  # replaced by the model's own transform below
        "provenance": base_provenance(
            weights="random-init" if source.is_random else "open_clip", loaded_from=str(source.weights or source.arch), seed=seed
        ),
    }
    model = BaselineModel(clip, config, tokenizer, preprocess_cfg)
    model.config["preprocess"] = model.preprocess.config.to_dict()
    return model.to(device).eval()


# -- checksums ---------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def baseline_checksum(spec: str, seed: int = 0, cache_dir: str | None = None) -> str:
    """sha256 of the weights file (or of the architecture and seed for random weights)."""
    source = resolve_baseline(spec, cache_dir)
    if source.is_random:
        payload = json.dumps({"open_clip": source.arch, "seed": seed, "weights": RANDOM}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()
    return sha256_file(source.weights)


__all__ = [
    "ALIASES",
    "BaselineModel",
    "OpenCLIPPreprocess",
    "WeightsNotFoundError",
    "baseline_checksum",
    "is_baseline_spec",
    "load_baseline",
    "resolve_baseline",
    "sha256_file",
]
