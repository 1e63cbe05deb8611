"""The training run's configuration: one flat dataclass, read from TOML/YAML/JSON, overridden from the CLI.

Flat on purpose: every setting has one name that is the same in the file, in ``--set name=value`` and in the
resolved ``config.json`` a run folder keeps, so a recipe can be read top to bottom and any value changed from
the command line without knowing which section it lives in. Files may still use TOML tables for grouping
(``[optimizer] lr = 1e-3``); table names are checked against :data:`SECTIONS` and then dropped. Unknown keys are
errors naming the file, because a misspelt setting that is silently ignored wastes a cluster run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import FetalCLIPError

LOSSES = ("clip", "siglip")
ZEROSHOT_TASKS = ("planes", "brain", "ga")  # each has a zeroshot_<task> setting
HOLDOUT = "holdout"  # a zeroshot_<task> value: evaluate on the run's held-out patients
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Tables a config file may use to group keys; purely cosmetic (they differ from every setting's name).
SECTIONS = ("architecture", "dataset", "optimizer", "objective", "run", "eval", "logging")


@dataclass
class TrainConfig:
    # -- model ---------------------------------------------------------------------------------------------
    model: str = "fetalclip-tiny"
    init: str | None = None  # our checkpoint folder or a published-format .pt; None = random init
    context_length: int | None = None  # text context; differs from init's -> position embeddings interpolated
    model_overrides: dict[str, Any] = field(default_factory=dict)  # deep-merged over the registered config
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    # -- parameter-efficient adaptation (models.lora) ------------------------------------------------------
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank instead of the towers (0 = full training)
    lora_alpha: float = 16.0  # updates scaled by lora_alpha / lora_rank
    lora_targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])  # attn (q, k, v, out) and/or mlp
    lora_towers: list[str] = field(default_factory=lambda: ["image", "text"])
    lora_dropout: float = 0.0
    lora_train_extra: list[str] = field(default_factory=list)  # also train: logit_scale, image_proj, text_proj
    # -- data ----------------------------------------------------------------------------------------------
    data: list[str] = field(default_factory=list)  # shard folders and/or dataset specs
    holdout_fraction: float = 0.0  # share of patients kept out of training for evaluation hooks
    holdout_group: str | None = None  # "FIELD=VALUE": every sample with that value is held out too (e.g. a machine)
    clean: bool = False  # remove burned-in text and what lies outside the sector from dataset specs (not shards)
    caption_fn: str = "template"  # "template", "plain" (view only) or "module:function" (a CaptionFn)
    own_captions: bool = True  # a sample's own caption (shards, phantom) wins over caption_fn; false: caption_fn for all
    balance_views: float = 0.0  # draw weight per sample ~ (samples of its view)^-balance: 0 natural, 1 views equal
    augment: str = "none"  # none | mild | ultrasound (train.augment; true/false mean mild/none)
    augment_ramp_steps: int = 0  # augmentation ramps in linearly over these first steps (0: from the start)
    cache_images: bool = False  # keep model-size images in memory after first use (data sets that fit in RAM)
    workers: int = 0  # DataLoader worker processes per training process
    # -- optimisation --------------------------------------------------------------------------------------
    steps: int = 100
    batch_size: int = 32  # GLOBAL batch per optimiser step (all processes x accumulation)
    accum_steps: int = 1
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    # -- loss ----------------------------------------------------------------------------------------------
    loss: str = "clip"
    view_positives: bool = False  # CLIP loss with every same-view pair a positive (train.objectives)
    image_image_weight: float = 0.0  # > 0: add SimCLR's image-image loss between two augmented views, this weight
    absent_view_negatives: bool = False  # captions of views the data never shows as extra negatives (train.negatives)
    local_loss: bool = True
    gather_with_grad: bool = True
    # -- run -----------------------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on GPUs, fp32 on CPU
    save_every: int = 0  # steps between resumable checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    # -- observability -------------------------------------------------------------------------------------
    log_every: int = 1
    eval_every: int = 0  # steps between evaluation hooks; 0 = only at the end (when there are hooks)
    eval_max_samples: int = 512  # images per evaluation (held-out retrieval pairs, each zero-shot dataset)
    zeroshot_planes: str | None = None  # dataset spec (e.g. "fpdb:DIR") or "holdout": zero-shot plane F1 at every evaluation
    zeroshot_brain: str | None = None  # dataset spec: zero-shot brain sub-plane F1
    zeroshot_ga: str | None = None  # dataset spec with spacing and HC (e.g. "hc18:DIR"): zero-shot GA VPR
    transfer_planes: str | None = None  # dataset spec with machines (e.g. "fpdb:DIR"): leave-one-machine-out probe F1
    eval_hooks: list[str] = field(default_factory=list)  # "package.module:factory", factory(config) -> hook
    tensorboard: bool = False
    progress: bool = True

    # ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("steps", "batch_size", "accum_steps", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("save_every", "eval_every", "warmup_steps", "workers", "keep_checkpoints", "augment_ramp_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        from .augment import AUGMENTS, augment_name

        self.augment = augment_name(self.augment)
        if self.augment not in AUGMENTS:
            problems.append(f"augment must be one of {AUGMENTS}, not {self.augment!r}")
        if self.holdout_group is not None:
            field_name, sep, value = self.holdout_group.partition("=")
            if not sep or not field_name.strip() or not value.strip():
                problems.append(f"holdout_group must read FIELD=VALUE (e.g. us_machine=Aloka), not {self.holdout_group!r}")
        if self.image_image_weight < 0:
            problems.append("image_image_weight must be >= 0")
        elif self.image_image_weight > 0 and self.augment == "none":
            problems.append("image_image_weight > 0 compares two augmented views of an image: set augment (mild or ultrasound)")
        if self.view_positives and self.loss != "clip":
            problems.append("view_positives is a form of the clip loss; use loss = \"clip\"")
        if self.absent_view_negatives and self.loss != "clip":
            problems.append("absent_view_negatives adds columns to the clip loss; use loss = \"clip\"")
        if not 0.0 <= self.balance_views <= 1.0:
            problems.append("balance_views must be in [0, 1]")
        for task in ZEROSHOT_TASKS:
            if getattr(self, f"zeroshot_{task}") == HOLDOUT and not (self.holdout_fraction or self.holdout_group):
                problems.append(f"zeroshot_{task} = {HOLDOUT!r} needs holdout_fraction > 0 or a holdout_group")
        if not 0.0 <= self.holdout_fraction < 1.0:
            problems.append("holdout_fraction must be in [0, 1)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            problems.append("need 0 <= min_lr <= lr and lr > 0")
        if self.batch_size % self.accum_steps:
            problems.append(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if self.context_length is not None and self.context_length < 2:
            problems.append("context_length must be >= 2")
        problems += self._lora_problems()
        if problems:
            raise FetalCLIPError("training config: " + "; ".join(problems))
        return self

    def _lora_problems(self) -> list[str]:
        if self.lora_rank < 0:
            return ["lora_rank must be >= 0 (0 = no adapters)"]
        if not self.lora_rank:
            return []
        problems = []
        if self.lock_image or self.lock_text:
            problems.append("lora_rank > 0 freezes both towers itself; drop lock_image / lock_text")
        try:
            self.lora()
        except FetalCLIPError as exc:  # the adapter config's own words, in this file's setting names
            for part in str(exc).removeprefix("LoRA config: ").split("; "):
                problems.append(("lora_train_" if part.startswith("extra") else "lora_") + part)
        return problems

    def lora(self) -> "LoraConfig | None":  # noqa: F821 - imported on use (models.lora)
        """The run's ``models.lora.LoraConfig`` (``None`` when ``lora_rank`` is 0: full training)."""
        if not self.lora_rank:
            return None
        from ..models.lora import LoraConfig

        return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=tuple(self.lora_targets),
                          towers=tuple(self.lora_towers), dropout=self.lora_dropout, extra=tuple(self.lora_train_extra))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw settings of a TOML, YAML or JSON recipe, sections flattened."""
    path = Path(path)
    if not path.is_file():
        raise FetalCLIPError(f"{path}: config file not found")
    try:
        # Decoded here, not by the parsers: a non-UTF-8 file is one clear error whatever its format.
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - PyYAML is optional
                raise FetalCLIPError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from exc
            raw = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise FetalCLIPError(f"{path}: config must be .toml, .yaml/.yml or .json")
    except FetalCLIPError:
        raise
    except Exception as exc:  # the parsers' own error types differ; all mean "not valid"
        # YAML and TOML messages span lines; the error stays one line.
        raise FetalCLIPError(f"{path}: cannot parse config ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise FetalCLIPError(f"{path}: config must be a mapping of settings")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key in SECTIONS and key not in _FIELDS:
            for inner, inner_value in value.items():
                _put(flat, inner, inner_value, path)
        else:
            _put(flat, key, value, path)
    return flat


def _put(flat: dict[str, Any], key: str, value: Any, source: Any) -> None:
    if key not in _FIELDS:
        raise FetalCLIPError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}")
    if key in flat:
        raise FetalCLIPError(f"{source}: setting {key!r} given twice")
    flat[key] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"lr=1e-3"`` -> ``("lr", 0.001)``, converted to the setting's type (lists split on commas)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in _FIELDS:
        raise FetalCLIPError(f"--set {text!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(_FIELDS))}")
    return key, coerce(key, value.strip())


def coerce(key: str, value: Any) -> Any:
    """Convert a command-line string (or a file value) to the declared type of setting ``key``."""
    hint = _HINTS[key]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional:
            raise FetalCLIPError(f"setting {key!r} cannot be empty")
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            number = float(value)
            # A NaN or infinite rate, clip or weight would train garbage without an error.
            if not math.isfinite(number):
                raise ValueError(f"{value!r} is not a finite number")
            return number
        if base is str:
            if isinstance(value, (dict, list, tuple, set)):
                raise ValueError(f"expected text, not a {type(value).__name__}")
            return str(value)
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            return [str(v) for v in value]
        if typing.get_origin(base) is dict or base is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FetalCLIPError(f"setting {key!r}: {exc}") from exc
    return value


def make_config(
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the recipe file, then explicit overrides (``None`` values in overrides are ignored)."""
    settings: dict[str, Any] = {}
    if file is not None:
        settings.update(read_config_file(file))
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise FetalCLIPError(f"unknown setting {key!r}")
        if value is not None:
            settings[key] = value
    values = {key: coerce(key, value) for key, value in settings.items()}
    return TrainConfig(**values).validate()


# Settings that define the trajectory of a run: resuming with different values would silently produce a
# different run, so ``--resume`` refuses. ``steps`` (extending a run) and observability settings may change.
TRAJECTORY_KEYS = (
    "model", "init", "context_length", "model_overrides", "lock_image", "lock_image_unlocked_groups", "lock_text",
    "lock_text_unlocked_layers", "lora_rank", "lora_alpha", "lora_targets", "lora_towers", "lora_dropout",
    "lora_train_extra", "data", "holdout_fraction", "holdout_group", "clean", "caption_fn", "own_captions", "balance_views",
    "augment", "augment_ramp_steps",
    "batch_size", "accum_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2", "eps", "grad_clip",
    "loss", "view_positives", "image_image_weight", "absent_view_negatives", "seed",
)


def trajectory_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    if not isinstance(saved, Mapping):
        raise FetalCLIPError(f"the run's saved config is a {type(saved).__name__}, not a mapping of settings; it is damaged")
    now = current.to_dict()
    # A setting added after the run was saved had its default there.
    defaults = TrainConfig().to_dict()
    was = {key: saved.get(key, defaults[key]) for key in TRAJECTORY_KEYS}
    from .augment import augment_name

    was["augment"] = augment_name(was["augment"])  # runs saved before it was a name said true/false
    return [f"{key}: run has {was[key]!r}, now {now[key]!r}" for key in TRAJECTORY_KEYS if was[key] != now[key]]
