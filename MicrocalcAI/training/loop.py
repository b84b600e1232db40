"""Where the detector is trained (``microcalcai train CONFIG``): the loop and its step.

Training draws fixed-size patches from COCO-annotated mammograms that went through the same
read + standardise path as inference (:mod:`MicrocalcAI.training.data`), so the network learns in
the canonical frame it later sees. The package, by stage:

    config.py        TrainConfig (JSON in, validated)
    data.py          canonical images (cached) and the patch sampler
    state.py         TrainingState: everything that changes while training
    loop.py          this file: set-up, train_step, validation tracking, the loop
    validation.py    whole-image validation measured by MicrocalcAI.evaluation
    checkpoints.py   save / resume / initial weights
    export.py        fp16 weights + manifest entry with operating points

:func:`train` reads top to bottom: build the state (or resume it), then repeat
:func:`train_step`, log, validate and checkpoint until the iteration budget or early stopping.
A distributed runner can reuse :func:`build_training_state`, :func:`train_step` and the
checkpoint functions around a wrapped model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.detect.network import build_detector, image_to_tensor, select_device, set_input_size
from MicrocalcAI.core.errors import CancelledError, DatasetError, ModelError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    check_initial_weights_file,
    load_checkpoint,
    load_initial_weights,
    restore_checkpoint,
    save_checkpoint,
)
from MicrocalcAI.training.config import TrainConfig, TrainConfigError
from MicrocalcAI.training.data import CanonicalSample, CocoMammogramDataset, PatchSampler
from MicrocalcAI.training.distributed import (
    distributed_context,
    restore_rank_states,
    save_checkpoint_distributed,
    use_rank_sampler,
)
from MicrocalcAI.training.state import TrainingState
from MicrocalcAI.training.validation import set_batchnorm_eval, validate

__all__ = [
    "LOG_FILE",
    "TrainResult",
    "build_training_state",
    "train",
    "train_from_config_file",
    "train_step",
    "training_samples",
]

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: str
    iterations: int  # iterations completed
    last_checkpoint: str
    best_checkpoint: Optional[str]  # None when no validation ran
    best_iteration: Optional[int]
    best_metrics: dict[str, Any]
    stopped_early: bool
    elapsed_s: float

    def __str__(self) -> str:
        best = (
            f"best {self.best_checkpoint} (iteration {self.best_iteration})"
            if self.best_checkpoint
            else "no validation"
        )
        return f"trained {self.iterations} iterations in {self.elapsed_s:.0f} s; last {self.last_checkpoint}; {best}"


# ------------------------------------------------------------------------------------ set-up


def _lr_factor(config: TrainConfig, iteration: int) -> float:
    """LR multiplier after ``iteration`` optimizer steps (linear warm-up, then cosine/constant)."""
    if config.warmup_iterations and iteration < config.warmup_iterations:
        return 0.001 + (1.0 - 0.001) * iteration / config.warmup_iterations
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.iterations - config.warmup_iterations, 1)
    progress = min(max(iteration - config.warmup_iterations, 0) / span, 1.0)
    return config.min_lr_factor + (1.0 - config.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters: decaying them only hurts.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def _apply_training_sampling(model: torch.nn.Module, config: TrainConfig) -> None:
    """Set the RPN/ROI sampling sizes used while training (inference values stay the model's)."""
    detector: Any = model  # torchvision's FasterRCNN: its heads are untyped submodules
    detector.roi_heads.fg_bg_sampler.batch_size_per_image = int(config.roi_batch_size_per_image)
    detector.rpn._pre_nms_top_n["training"] = int(config.rpn_pre_nms_top_n_train)
    detector.rpn._post_nms_top_n["training"] = int(config.rpn_post_nms_top_n_train)


def _prepared_dataset(
    config: TrainConfig, coco: os.PathLike | str, cache_dir: Path, progress: ProgressCallback
) -> CocoMammogramDataset:
    dataset = CocoMammogramDataset(
        coco,
        spacing_mm=config.spacing_mm,
        assumed_input_spacing_mm=config.assumed_input_spacing_mm,
        cache_dir=cache_dir,
        skip_unusable=config.skip_unusable_images,
        noise_equalisation=config.noise_equalisation,
    )
    dataset.prepare(lambda f, m: progress(0.0, m))
    return dataset


def training_samples(
    config: TrainConfig, cache_dir: Path, progress: ProgressCallback = no_progress
) -> list[CanonicalSample]:
    """Every usable image of every ``train_coco`` source, standardised, pooled in source order.

    Pooling (rather than alternating sources) keeps patch sampling class balanced over all
    lesions; to weight a small real dataset up, list its COCO file more than once.
    """
    sources = config.train_sources
    unique: dict[str, CocoMammogramDataset] = {}
    for coco in sources:  # a file listed twice (to weight it up) is loaded once
        key = str(Path(coco).resolve())
        if key not in unique:
            unique[key] = _prepared_dataset(config, coco, cache_dir, progress)
    datasets = [unique[str(Path(coco).resolve())] for coco in sources]
    num_lesions = sum(ds.num_lesions for ds in datasets)
    if num_lesions == 0:
        raise DatasetError(f"{', '.join(sources)}: no lesion annotations to train on")
    samples = [ds[i] for ds in datasets for i in range(len(ds))]
    log.info("training on %d images (%d lesions) from %d source(s)", len(samples), num_lesions, len(sources))
    return samples


def build_training_state(
    config: TrainConfig, samples: Sequence[CanonicalSample], device: torch.device, *, resuming: bool
) -> TrainingState:
    """A fresh state: detector (ImageNet, ``init_weights`` or random), optimiser, schedule, sampler."""
    use_amp = bool(config.mixed_precision and device.type == "cuda")
    sampler = PatchSampler(list(samples), config.patch, seed=config.seed)
    model, _ = build_detector(
        config.backbone,
        anchor_sizes=config.anchor_sizes,
        tile_size=config.tile_size,
        # ImageNet weights would be overwritten at once by init_weights or the checkpoint.
        pretrained_backbone=config.pretrained_backbone and not config.init_weights and not resuming,
    )
    if config.init_weights and not resuming:
        load_initial_weights(model, config)
    set_input_size(model, config.patch.patch_size)
    _apply_training_sampling(model, config)
    model.to(device)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _lr_factor(config, it))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return TrainingState(
        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler, use_amp=use_amp
    )


# ------------------------------------------------------------------------------------ the loop


def _patches_to_batch(
    patches: Sequence[Any], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    for p in patches:
        images.append(image_to_tensor(p.image).to(device))
        targets.append(
            {
                "boxes": torch.as_tensor(p.boxes, dtype=torch.float32).reshape(-1, 4).to(device),
                "labels": torch.as_tensor(p.labels, dtype=torch.int64).to(device),
            }
        )
    return images, targets


def train_step(state: TrainingState, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """One optimiser step on one sampled batch; returns its losses (and ``loss``, their sum)."""
    patches = state.sampler.sample_batch(config.batch_size)
    images, targets = _patches_to_batch(patches, device)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=state.use_amp):
        losses = state.model(images, targets)
        loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise ModelError(
            f"training diverged at iteration {state.iteration + 1} (loss {float(loss)}); "
            "lower lr or raise warmup_iterations"
        )
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    return {k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach())}


class _JsonlLog:
    """Append-only JSON-lines log: one record per logged iteration or validation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def _log_window(
    state: TrainingState,
    config: TrainConfig,
    window: list[dict[str, float]],
    since: float,
    started: float,
    train_log: _JsonlLog,
) -> None:
    """Write the mean losses of the iterations since the last log line."""
    now = time.monotonic()
    record: dict[str, Any] = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
    record.update(
        iteration=state.iteration,
        lr=state.optimizer.param_groups[0]["lr"],
        s_per_iteration=(now - since) / len(window),
        elapsed_s=now - started,
    )
    train_log.write(record)
    log.info(
        "iteration %d/%d loss %.4f (%.2f s/it)",
        state.iteration,
        config.iterations,
        record["loss"],
        record["s_per_iteration"],
    )


def _validate_and_track(
    state: TrainingState,
    config: TrainConfig,
    val_set: CocoMammogramDataset,
    device: torch.device,
    train_log: _JsonlLog,
    best_path: Path,
) -> None:
    """Validate, keep ``best.pt`` when the selection score improves, log the result."""
    rng_state = torch.get_rng_state()
    metrics = validate(getattr(state.model, "module", state.model), val_set, config, device)  # not via DDP
    torch.set_rng_state(rng_state)  # validation must not change the training draw
    score = metrics["selection_score"]
    improved = state.record_validation(score, metrics)
    if improved:
        save_checkpoint(state, config, best_path, with_training_state=False)
    train_log.write({"iteration": state.iteration, "validation": metrics, "improved": improved})
    log.info(
        "validation at %d: score %.4f (sensitivity %s at threshold %.2f, %.2f FP/image, AUC %s)%s",
        state.iteration,
        score,
        metrics["lesion_sensitivity"],
        metrics["score_threshold"],
        metrics["fp_per_image"] or 0.0,
        metrics["lesion_auc_benign_vs_malignant"],
        " new best" if improved else "",
    )


def _due(iteration: int, every: int, last: int) -> bool:
    return iteration % every == 0 or iteration == last


def train(config: TrainConfig, progress: Optional[ProgressCallback] = None, resume: bool = False) -> TrainResult:
    """Train a detector as ``config`` says; resumable from ``<output_dir>/last.pt``.

    A ``progress`` callback that raises :class:`CancelledError` stops the run after a
    checkpoint of the current iteration is written, so ``resume=True`` picks it up exactly.
    Without ``resume``, an output folder that already holds a checkpoint is refused rather
    than overwritten.
    """
    progress = progress or no_progress
    started = time.monotonic()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / LAST_CHECKPOINT, out / BEST_CHECKPOINT
    if last_path.exists() and not resume:
        raise TrainConfigError(
            f"{out} already holds a training checkpoint ({last_path}); resume it (--resume) or choose another output_dir"
        )

    torch.set_num_threads(config.num_threads)
    ctx = distributed_context(select_device(config.device))  # torchrun: K processes, DDP
    device = ctx.device(select_device(config.device))
    torch.manual_seed(config.seed)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"
    resuming = resume and last_path.exists()
    if not resuming:
        check_initial_weights_file(config)
    progress(0.0, "preparing training images")
    with ctx.main_first():  # rank 0 fills the standardised-image cache, the others read it
        samples = training_samples(config, cache_dir, progress)
        val_set = _prepared_dataset(config, config.val_coco, cache_dir, progress) if config.val_coco else None
    log.info("validating on %s images", len(val_set) if val_set is not None else 0)
    state = build_training_state(config, samples, device, resuming=resuming)
    use_rank_sampler(state, config, ctx)
    if resuming:
        restore_checkpoint(state, config, last_path)
        restore_rank_states(load_checkpoint(last_path), state, ctx, last_path)
    elif resume:
        log.warning("resume requested but %s does not exist: starting from scratch", last_path)
    if state.iteration == 0 and ctx.is_main:
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    state.model = ctx.wrap(state.model, device)

    train_log = _JsonlLog(out / LOG_FILE)
    state.model.train()
    if config.freeze_batchnorm:
        set_batchnorm_eval(state.model)
    stopped_early = False
    window: list[dict[str, float]] = []
    tick = time.monotonic()
    try:
        while state.iteration < config.iterations:
            window.append(train_step(state, config, device))
            if _due(state.iteration, config.log_every, config.iterations):
                if ctx.is_main:
                    _log_window(state, config, window, tick, started, train_log)
                window, tick = [], time.monotonic()
            if val_set is not None and _due(state.iteration, config.val_every, config.iterations):
                if ctx.is_main:  # one validation, on rank 0; the others wait for its verdict
                    _validate_and_track(state, config, val_set, device, train_log, best_path)
                tick = time.monotonic()  # validation time is not iteration time
                patience = config.early_stopping_patience
                stopped_early = ctx.agree(bool(patience and state.bad_validations >= patience))
            if _due(state.iteration, config.checkpoint_every, config.iterations) or stopped_early:
                save_checkpoint_distributed(state, config, last_path, ctx)
            progress(state.iteration / config.iterations, f"iteration {state.iteration}/{config.iterations}")
            if stopped_early:
                log.info(
                    "early stopping at iteration %d: no improvement in %d validations",
                    state.iteration,
                    state.bad_validations,
                )
                break
    except (CancelledError, KeyboardInterrupt) as exc:
        # Across processes a Ctrl-C lands at a different point in each: keep the last periodic
        # checkpoint. A cancel through the progress callback comes at the same step in all.
        if not (ctx.distributed and isinstance(exc, KeyboardInterrupt)):
            save_checkpoint_distributed(state, config, last_path, ctx)
        log.info("stopped at iteration %d; checkpoint %s (resume to continue)", state.iteration, last_path)
        raise
    finally:
        ctx.close()

    return TrainResult(
        output_dir=str(out),
        iterations=state.iteration,
        last_checkpoint=str(last_path),
        best_checkpoint=str(best_path) if best_path.exists() else None,
        best_iteration=state.best_iteration,
        best_metrics=state.best_metrics,
        stopped_early=stopped_early,
        elapsed_s=time.monotonic() - started,
    )


def train_from_config_file(path: str, resume: bool = False, progress: Optional[ProgressCallback] = None) -> TrainResult:
    """Entry point of ``microcalcai train CONFIG [--resume]``."""
    return train(TrainConfig.from_json(path), progress=progress, resume=resume)
