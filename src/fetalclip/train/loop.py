"""The training loop: contrastive pretraining from a laptop CPU to a torchrun cluster, one code path.

``train(config, run_dir)`` runs single-process or under torchrun (``distributed.init_distributed`` decides).
Per optimiser step: each process takes its slice of the global batch (``data.StepBatchSampler``), computes
normalised features, and open_clip's ``ClipLoss``/``SigLipLoss`` gathers features across processes (with
gradients) so every process sees all negatives; DDP averages gradients. Gradient accumulation follows the
exact large-batch recipe: features of all micro-batches are first computed without gradients, then each
micro-batch is recomputed with gradients against the cached features of the others, so accumulating ``A``
micro-batches of ``b`` optimises the same loss as one batch of ``A*b`` (at the cost of a second forward pass).
Then: gradient clipping, AdamW, the temperature clamped to at most 100 (as CLIP does).

The run folder gets ``config.json`` (the resolved config, reusable as ``--config``), ``train_log.csv``,
``eval_log.csv``, ``checkpoints/`` (resumable) and, at the end, ``model/`` (our checkpoint format, what
``fetalclip.load`` opens) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import FetalCLIPError
from ..io import write_json_atomic
from .augment import make_augmentation
from .checkpointing import (
    UNREADABLE_SUFFIX,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, trajectory_differences
from .data import (
    PairDataset,
    StepBatchSampler,
    held_out_dataset,
    held_out_pairs,
    make_loader,
    open_sources,
    resolve_caption_fn,
    split_by_patient,
    view_balance_weights,
)
from .distributed import DistContext, barrier, broadcast_object, gather_objects, init_distributed, mean_across, shutdown_distributed
from .hooks import EvalHook, RetrievalHook, configured_hooks, has_configured_hooks
from .modeling import adapt_for_training, build_model, save_trained_model
from .negatives import AbsentViewCaptions
from .objectives import make_objective
from .optim import build_optimizer
from .rundir import CONFIG_FILE, MODEL_DIR, SUMMARY_FILE, has_history, prepare_run_dir
from .runlog import RunLog
from .schedule import WarmupCosine, set_lr

log = logging.getLogger("fetalclip.train")

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int
    end_step: int
    losses: list[float] = field(default_factory=list)  # this session's per-step losses (global mean)
    images_per_s: float = float("nan")  # over this session's steps after the first
    peak_memory_mb: float = float("nan")
    eval: dict[str, float] = field(default_factory=dict)  # last evaluation's metrics
    model_dir: Path | None = None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None  # bf16 autocast on CPU is usually slower than fp32 and changes numerics
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    hooks: Sequence[EvalHook] = (),
    builtin_hooks: bool = True,
    restart: bool = False,
) -> TrainResult:
    """Train per ``config`` into ``run_dir``; with ``resume`` continue from its latest readable checkpoint.

    A folder that holds a run is never silently started over: without ``resume`` or ``restart`` it is an
    error, and so is ``resume`` when no checkpoint can be read but steps were already logged (starting again
    would truncate the log). ``restart`` moves the old run aside (``previous-<time>/``) and starts fresh.

    ``hooks`` are extra evaluation callables ``(model, step) -> metrics``; with ``builtin_hooks`` and a
    ``holdout_fraction`` the held-out retrieval hook runs too.
    """
    config.validate()
    run_dir = Path(run_dir)
    ctx = init_distributed(config.device)
    try:
        return _train(config, run_dir, resume, restart, list(hooks), builtin_hooks, ctx)
    finally:
        shutdown_distributed(ctx)


def _train(config: TrainConfig, run_dir: Path, resume: bool, restart: bool, hooks: list, builtin_hooks: bool,
           ctx: DistContext) -> TrainResult:
    prepare_run_dir(run_dir, resume, restart, ctx)
    device = ctx.device
    per_step = ctx.world_size * config.accum_steps
    if config.batch_size % per_step:
        raise FetalCLIPError(
            f"batch_size {config.batch_size} (global) is not divisible by processes x accum_steps = {per_step}"
        )
    micro_batch = config.batch_size // per_step
    autocast_dtype = resolve_precision(config.precision, device)

    # -- state to resume ------------------------------------------------------------------------------------
    checkpoint = load_latest_checkpoint(run_dir, set_aside_unreadable=ctx.is_main) if resume else None
    if resume and checkpoint is None and has_history(run_dir):
        raise FetalCLIPError(f"{run_dir}: --resume found no readable checkpoint to continue from (damaged ones are "
                             f"set aside as *{UNREADABLE_SUFFIX}); pass --restart to start over, keeping the old run aside")
    if checkpoint is not None:
        differences = trajectory_differences(checkpoint["config"], config)
        if differences:
            raise FetalCLIPError(f"{checkpoint['path']}: cannot resume with a different recipe: " + "; ".join(differences))
    start_step = 0 if checkpoint is None else int(checkpoint["step"])
    if start_step >= config.steps:
        raise FetalCLIPError(f"{run_dir}: already at step {start_step} of {config.steps}; raise --steps to train further")

    # Data first: a wrong path should fail before minutes of model building.
    sources = open_sources(config.data, config.clean)
    train_items, holdout_items = split_by_patient(sources, config.holdout_fraction, config.seed, config.holdout_group)
    caption_fn = resolve_caption_fn(config.caption_fn)
    # Configured evaluations open their datasets now, so a wrong path fails before the model is built.
    config_hooks = configured_hooks(config, held_out_dataset(sources, holdout_items)) if ctx.is_main else []

    random.seed(config.seed + ctx.rank)
    np.random.seed(config.seed + ctx.rank)
    torch.manual_seed(config.seed + ctx.rank)

    # -- model, optimiser -------------------------------------------------------------------------------------
    model = build_model(config.model, config.init, config.context_length, config.model_overrides, config.seed, config.loss)
    clip = model.clip
    if config.lock_image:
        clip.lock_image_tower(unlocked_groups=config.lock_image_unlocked_groups, freeze_bn_stats=False)
    if config.lock_text:
        clip.lock_text_tower(unlocked_layers=config.lock_text_unlocked_layers, freeze_layer_norm=True)
    adapt_for_training(model, config.lora())  # lora_rank > 0: towers frozen, adapters train
    if config.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    model.to(device).train()
    clip.output_dict = True
    optimizer = build_optimizer(clip, config.lr, config.weight_decay, (config.beta1, config.beta2), config.eps, device)
    schedule = WarmupCosine(config.lr, config.steps, config.warmup_steps, config.min_lr)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    if checkpoint is not None:
        clip.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("world_size") == ctx.world_size:
            set_rng_state(checkpoint["rng"][ctx.rank])
        else:
            log.warning("resuming on %d processes (was %d): data order is unchanged, process RNG states are not restored",
                        ctx.world_size, checkpoint.get("world_size"))
    trained = clip
    if ctx.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(clip, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = make_objective(config, ctx.rank, ctx.world_size)

    # -- data -----------------------------------------------------------------------------------------------
    dataset = PairDataset(
        sources, train_items, model.preprocess, model.context_length, config.seed, caption_fn,
        make_augmentation(config.augment), view_balance_weights(sources, train_items, config.balance_views),
        two_views=loss_fn.needs_second_image, own_captions=config.own_captions,
        augment_ramp=config.augment_ramp_steps * config.batch_size,
    )
    if config.cache_images:
        dataset.enable_cache()
    negatives = None
    if config.absent_view_negatives:
        negatives = AbsentViewCaptions.for_dataset(dataset, model.context_length, config.seed)
        if ctx.is_main:
            log.info("absent-view negatives: %s", ", ".join(negatives.views) or "none (the data shows every known view)")
    sampler = StepBatchSampler(micro_batch, config.accum_steps, ctx.rank, ctx.world_size, start_step, config.steps)
    loader = make_loader(dataset, sampler, config.workers, device)
    builtin = builtin_hooks and len(holdout_items) >= 2
    # The same on every process: evaluation ends in a collective.
    evaluating = bool(hooks) or builtin or has_configured_hooks(config)
    hooks = config_hooks + hooks
    if ctx.is_main and builtin:
        hooks = [RetrievalHook(held_out_pairs(sources, holdout_items, config.seed, caption_fn, config.eval_max_samples,
                                                config.own_captions))] + hooks

    # -- run folder -----------------------------------------------------------------------------------------
    runlog = None
    if ctx.is_main:
        write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())
        runlog = RunLog(run_dir, start_step if checkpoint is not None else None, config.tensorboard)
        log.info(
            "training %s on %d samples (%d held out) for steps %d..%d, global batch %d = %d processes x %d accum x %d",
            model.name, len(train_items), len(holdout_items), start_step, config.steps, config.batch_size,
            ctx.world_size, config.accum_steps, micro_batch,
        )

    result = TrainResult(run_dir=run_dir, start_step=start_step, end_step=start_step)
    progress = _progress_bar(ctx.is_main and config.progress, config.steps, start_step)
    batches = iter(loader)
    session_start = time.perf_counter()
    timed_images, timed_seconds = 0, 0.0
    try:
        for step in range(start_step, config.steps):
            step_start = time.perf_counter()
            lr = schedule(step)
            set_lr(optimizer, lr)
            micro = [next(batches) for _ in range(config.accum_steps)]
            data_s = time.perf_counter() - step_start
            micro = [tuple(t.to(device, non_blocking=True) for t in batch) for batch in micro]
            negative_tokens = negatives.tokens(step).to(device) if negatives else None
            loss = _optimizer_step(trained, clip, micro, loss_fn, optimizer, scaler, autocast_dtype, config.grad_clip, ctx,
                                   negative_tokens)
            with torch.no_grad():
                clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            loss_value = float(mean_across(ctx, loss))
            if not math.isfinite(loss_value):
                raise FetalCLIPError(f"step {step + 1}: loss is {loss_value}; lower --lr or check the data")
            step_s = time.perf_counter() - step_start
            done = step + 1
            result.losses.append(loss_value)
            result.end_step = done
            if done > start_step + 1:  # the first step carries start-up costs
                timed_images += config.batch_size
                timed_seconds += step_s
            if runlog is not None and (done % config.log_every == 0 or done == config.steps):
                runlog.train({
                    "step": done, "loss": loss_value, "lr": lr, "logit_scale": float(clip.logit_scale.detach().exp()),
                    "images_per_s": config.batch_size / step_s, "data_s": data_s, "step_s": step_s,
                    "epoch": done * config.batch_size / len(dataset), "elapsed_s": time.perf_counter() - session_start,
                })
            if progress is not None:
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{config.batch_size / step_s:.1f}", refresh=False)
                progress.update(1)

            last = done == config.steps
            if (config.save_every and done % config.save_every == 0) or last:
                _save(run_dir, done, config, clip, optimizer, scaler, schedule, ctx)
            if evaluating and ((config.eval_every and done % config.eval_every == 0) or last):
                metrics = _evaluate(model, hooks, done, autocast_dtype, ctx)
                if runlog is not None and metrics:
                    runlog.eval(done, metrics)
                    result.eval = metrics
    finally:
        if progress is not None:
            progress.close()
        if runlog is not None:
            runlog.close()
        clip.output_dict = False

    result.images_per_s = timed_images / timed_seconds if timed_seconds else float("nan")
    result.peak_memory_mb = _peak_memory_mb(device)
    if ctx.is_main:
        result.model_dir = _export(model, run_dir, config, ctx, result)
    barrier(ctx)
    return result


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from ..progress import progress_bar

    return progress_bar(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _optimizer_step(trained, clip, micro, loss_fn, optimizer, scaler, autocast_dtype, grad_clip, ctx,
                    negative_tokens=None) -> torch.Tensor:
    """One optimiser step over the micro-batches; returns the (local) loss of the full batch.

    ``negative_tokens``: text-only negatives, encoded in the same forward call as the batch's captions.
    """
    device = ctx.device
    optimizer.zero_grad(set_to_none=True)

    def backward(loss):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def forward(batch):
        # (images, tokens, views[, second augmented images]): both image views go through one forward pass.
        images, tokens, views, *second = batch
        texts = tokens if negative_tokens is None else torch.cat([tokens, negative_tokens])
        out = dict(trained(torch.cat([images, *second]) if second else images, texts))
        if negative_tokens is not None:
            out["negative_text_features"] = out["text_features"][len(tokens):]
            out["text_features"] = out["text_features"][:len(tokens)]
        if second:
            out["image2_features"] = out["image_features"][len(tokens):]
            out["image_features"] = out["image_features"][:len(tokens)]
        out["views"] = views
        return out

    if len(micro) == 1:
        with _autocast(device, autocast_dtype):
            loss = loss_fn(**forward(micro[0]))
        backward(loss)
    else:
        with torch.no_grad(), _autocast(device, autocast_dtype):
            cached = [forward(batch) for batch in micro]
        batched = [key for key in ("image_features", "text_features", "image2_features", "views") if key in cached[0]]
        for j, batch in enumerate(micro):
            # DDP all-reduces gradients on the last micro-batch only.
            sync = contextlib.nullcontext() if (j == len(micro) - 1 or not ctx.distributed) else trained.no_sync()
            with sync:
                with _autocast(device, autocast_dtype):
                    out = forward(batch)
                    features = {key: torch.cat([c[key] for c in cached[:j]] + [out[key]] + [c[key] for c in cached[j + 1:]])
                                for key in batched}
                    extras = {key: out[key] for key in ("logit_scale", "logit_bias") if key in out}
                    if negative_tokens is not None:  # their gradient once per step, not once per micro-batch
                        extras["negative_text_features"] = (out if j == 0 else cached[0])["negative_text_features"]
                    loss = loss_fn(**features, **extras)
                backward(loss)

    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(clip.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach().float()


def _save(run_dir, step, config, clip, optimizer, scaler, schedule, ctx) -> None:
    rng = gather_objects(ctx, rng_state())
    if ctx.is_main:
        save_checkpoint(
            run_dir,
            step,
            {
                "model": clip.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "schedule": schedule.state_dict(),
                "data_position": step * config.batch_size,
                "config": config.to_dict(),
                "world_size": ctx.world_size,
                "rng": rng,
            },
            keep=config.keep_checkpoints,
        )
    barrier(ctx)


def _evaluate(model, hooks, step, autocast_dtype, ctx) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if ctx.is_main:
        was_training = model.training
        model.eval()
        model.clip.output_dict = False
        try:
            with torch.no_grad(), _autocast(ctx.device, autocast_dtype):
                for hook in hooks:
                    metrics.update({name: float(value) for name, value in hook(model, step).items()})
        finally:
            model.clip.output_dict = True
            model.train(was_training)
    return broadcast_object(ctx, metrics)


def _export(model, run_dir: Path, config: TrainConfig, ctx: DistContext, result: TrainResult) -> Path:
    """The trained model in our checkpoint format, and the run summary."""
    model_dir = save_trained_model(
        model, run_dir / MODEL_DIR,
        provenance={
            "training": {
                "steps": result.end_step, "data": list(config.data), "loss": config.loss, "seed": config.seed,
                "batch_size": config.batch_size, "run_dir": str(run_dir),
            }
        },
        overwrite=True,
    )
    summary: dict[str, Any] = {
        "steps": result.end_step,
        "resumed_from": result.start_step or None,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "final_loss": result.losses[-1] if result.losses else None,
        "images_per_s": result.images_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "eval": result.eval,
        "model": str(model_dir),
    }
    write_json_atomic(run_dir / SUMMARY_FILE, json.loads(json.dumps(summary, default=str)))
    return Path(model_dir)
