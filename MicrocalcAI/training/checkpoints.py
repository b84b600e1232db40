"""Training checkpoints: what a run saves, how it resumes, and how weights seed a new run.

A checkpoint is a ``torch.save`` dict of tensors and plain values (loadable with
``weights_only=True``: nothing is unpickled), written atomically. ``last.pt`` holds the whole
:class:`~MicrocalcAI.training.state.TrainingState` (model, optimizer, LR schedule, AMP scaler,
patch-sampler and torch RNG states, iteration, best-so-far bookkeeping), so a resumed run
continues exactly where it stopped; ``best.pt`` holds the model of the best validation only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from MicrocalcAI.core.atomic import atomic_open
from MicrocalcAI.core.detect.network import build_detector
from MicrocalcAI.core.errors import ModelError
from MicrocalcAI.training.config import TrainConfig, TrainConfigError, model_config
from MicrocalcAI.training.state import TrainingState

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "LAST_CHECKPOINT",
    "check_initial_weights_file",
    "checkpoint_dict",
    "is_checkpoint_path",
    "load_checkpoint",
    "load_initial_weights",
    "model_from_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "microcalcai-checkpoint-1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


def checkpoint_dict(state: TrainingState, config: TrainConfig, with_training_state: bool = True) -> dict[str, Any]:
    """The checkpoint of ``state``; without the training state it holds only what export needs."""
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "iteration": state.iteration,
        "model": {k: v.detach().cpu() for k, v in getattr(state.model, "module", state.model).state_dict().items()},
        "model_config": json.dumps(model_config(config)),
        "config": json.dumps(config.to_dict()),
        "best_score": float(state.best_score),
        "best_iteration": -1 if state.best_iteration is None else int(state.best_iteration),
        "best_metrics": json.dumps(state.best_metrics),
        "bad_validations": state.bad_validations,
    }
    if with_training_state:
        ckpt.update(
            optimizer=state.optimizer.state_dict(),
            scheduler=state.scheduler.state_dict(),
            sampler_state=state.sampler.get_state(),
            torch_rng=torch.get_rng_state(),
        )
        if state.use_amp:
            ckpt["scaler"] = state.scaler.state_dict()
    return ckpt


def save_checkpoint(state: TrainingState, config: TrainConfig, path: Path, with_training_state: bool = True) -> None:
    """Write :func:`checkpoint_dict` atomically (an interrupted write leaves the old file)."""
    with atomic_open(path) as fh:
        torch.save(checkpoint_dict(state, config, with_training_state), fh)


def load_checkpoint(path: os.PathLike | str) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: tensors and plain values, no code)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # pickle/unpickling errors come in several types
        raise ModelError(f"checkpoint {path} cannot be read safely: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a MicrocalcAI training checkpoint")
    return ckpt


def restore_checkpoint(state: TrainingState, config: TrainConfig, path: Path) -> None:
    """Load ``last.pt`` into ``state`` (and the torch RNG), refusing one made with other settings."""
    ckpt = load_checkpoint(path)
    saved = json.loads(ckpt["model_config"])
    if saved != model_config(config):
        raise TrainConfigError(
            f"cannot resume {path}: it was trained with {saved}, config now says {model_config(config)}"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.use_amp and "scaler" in ckpt:
        state.scaler.load_state_dict(ckpt["scaler"])
    state.sampler.set_state(ckpt["sampler_state"])
    torch.set_rng_state(ckpt["torch_rng"])
    state.iteration = int(ckpt["iteration"])
    state.best_score = float(ckpt["best_score"])
    state.best_iteration = ckpt["best_iteration"] if ckpt["best_iteration"] >= 0 else None
    state.best_metrics = json.loads(ckpt["best_metrics"])
    state.bad_validations = int(ckpt["bad_validations"])
    log.info("resumed %s at iteration %d", path, state.iteration)


def is_checkpoint_path(path: Path) -> bool:
    return path.suffix.lower() in (".pt", ".pth")


def check_initial_weights_file(config: TrainConfig) -> None:
    """Fail before hours of standardising when ``init_weights`` cannot be used."""
    if not config.init_weights:
        return
    path = Path(config.init_weights)
    if not path.is_file():
        raise TrainConfigError(f"init_weights: file not found: {path}")
    if not is_checkpoint_path(path) and path.suffix.lower() != ".safetensors":
        raise TrainConfigError(
            f"init_weights {path}: expected a MicrocalcAI .safetensors weights file or a training checkpoint .pt"
        )


def load_initial_weights(model: torch.nn.Module, config: TrainConfig) -> None:
    """Fine-tuning start: weights from a MicrocalcAI safetensors file or a training checkpoint.

    Weight shapes do not depend on the anchor sizes or the spacing, so the settings saved
    with the weights are compared with the config: a detector trained with other anchors or
    at another spacing would load silently and then mislocate every box.
    """
    from MicrocalcAI.core.detect.weights import load_state_strict, read_weights_file

    path = Path(str(config.init_weights))
    if is_checkpoint_path(path):
        ckpt = load_checkpoint(path)
        tensors, saved = ckpt["model"], json.loads(ckpt["model_config"])
    else:
        raw, saved = read_weights_file(path)
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
    ours = model_config(config)
    clashes = [
        f"{key} {saved[key]} (config: {ours[key]})"
        for key in ("backbone", "anchor_sizes", "spacing_mm")
        if key in saved and json.dumps(saved[key]) != json.dumps(ours[key])
    ]
    if clashes:
        raise TrainConfigError(f"init_weights {path} were trained with {', '.join(clashes)}; set the config to match")
    load_state_strict(
        model, tensors, path, f"the configured {config.backbone} detector with anchors {list(config.anchor_sizes)}"
    )
    log.info("initialised the detector from %s", path)


def model_from_checkpoint(
    checkpoint_path: os.PathLike | str, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detector stored in a checkpoint (eval mode) and the checkpoint's model config."""
    ckpt = load_checkpoint(checkpoint_path)
    model_config = json.loads(ckpt["model_config"])
    model, _ = build_detector(
        model_config["backbone"],
        anchor_sizes=model_config["anchor_sizes"],
        tile_size=model_config["tile_size"],
        pretrained_backbone=False,
    )
    model.load_state_dict(ckpt["model"])
    model.eval().to(torch.device(device))
    return model, model_config
