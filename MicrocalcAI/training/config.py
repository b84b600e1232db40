"""Training configuration: :class:`TrainConfig`, read from ``microcalcai train CONFIG.json``.

Unknown keys are an error (a typo must not silently fall back to a default) and relative paths
are resolved against the config file's folder, so a config and its data can move together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from MicrocalcAI.core.detect.network import BACKBONES
from MicrocalcAI.core.equalise import NoiseEqualisation
from MicrocalcAI.core.errors import DatasetError, InputError
from MicrocalcAI.training.data import PatchConfig

__all__ = ["TrainConfig", "TrainConfigError", "model_config"]


class TrainConfigError(InputError):
    """A training configuration is malformed or inconsistent with an existing run."""


@dataclass
class TrainConfig:
    """Everything one training run depends on; ``from_json`` reads it from a file.

    Relative paths in a JSON file are resolved against the file's folder, so a config and
    its data can move together.
    """

    #: One COCO file, or a list of them to mix sources (e.g. simulated + converted real data);
    #: their images are pooled, and lesion patches stay class balanced across the pool.
    train_coco: Union[str, list[str]]
    output_dir: str
    val_coco: Optional[str] = None
    cache_dir: Optional[str] = None  # default: <output_dir>/cache
    #: Drop (with a warning) images that read/standardise refuse instead of stopping.
    skip_unusable_images: bool = False
    backbone: str = "mobilenet_v2"
    pretrained_backbone: bool = True
    #: Start from these weights instead of ImageNet/random: a MicrocalcAI ``.safetensors``
    #: file (e.g. the shipped default model, to fine-tune on your own data) or a training
    #: checkpoint ``.pt``. Must fit the configured backbone and anchors. Ignored on resume.
    init_weights: Optional[str] = None
    spacing_mm: float = 0.1
    assumed_input_spacing_mm: float = 0.05
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    tile_size: int = 512  # inference tiling (validation and the exported manifest)
    tile_overlap: int = 128
    patch: PatchConfig = field(default_factory=PatchConfig)
    batch_size: int = 4
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    iterations: int = 2000
    warmup_iterations: int = 100
    lr_schedule: str = "cosine"  # "cosine" (to min_lr_factor * lr) or "constant" after warm-up
    min_lr_factor: float = 0.05
    grad_clip_norm: float = 10.0
    #: Training-only sampling sizes (inference settings and the weights layout are unaffected).
    #: Patches hold one or two lesions, so a few hundred sampled ROIs and proposals are plenty,
    #: and the ROI box head is the most expensive part of a CPU iteration.
    roi_batch_size_per_image: int = 128
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    freeze_batchnorm: bool = False  # keep BN statistics of the initialisation (eval-mode BN)
    checkpoint_every: int = 100
    val_every: int = 500
    val_max_images: Optional[int] = None
    #: Validations without improvement before stopping; 0 disables early stopping.
    early_stopping_patience: int = 0
    log_every: int = 10
    device: str = "auto"
    num_threads: int = 2  # torch CPU threads (process-wide setting)
    seed: int = 0
    mixed_precision: bool = True  # only effective on CUDA
    #: Noise equalisation of the detector's input (MicrocalcAI.core.equalise): an object of its
    #: settings, or true for the defaults; recorded in the exported manifest entry, because
    #: the model then needs it at inference. None (the default) = off.
    noise_equalisation: Optional[NoiseEqualisation] = None

    @property
    def train_sources(self) -> list[str]:
        """``train_coco`` as a list, whether one file or several were given."""
        return list(self.train_coco) if isinstance(self.train_coco, list) else [self.train_coco]

    def __post_init__(self) -> None:
        if isinstance(self.patch, dict):
            self.patch = _dataclass_from_dict(PatchConfig, self.patch, "patch")
        self.anchor_sizes = tuple(int(a) for a in self.anchor_sizes)
        try:
            self.noise_equalisation = NoiseEqualisation.from_setting(self.noise_equalisation)
        except InputError as exc:
            raise TrainConfigError(f"invalid training config: {exc}") from exc
        problems = []
        sources = self.train_sources
        if not sources or not all(isinstance(v, str) and v for v in sources):
            problems.append(f"train_coco must be a COCO file path or a non-empty list of them, got {self.train_coco!r}")
        if self.init_weights is not None and not (isinstance(self.init_weights, str) and self.init_weights.strip()):
            problems.append(f"init_weights must be a file path, got {self.init_weights!r}")
        for name in ("output_dir", "val_coco", "cache_dir"):
            value = getattr(self, name)
            if not (value is None and name != "output_dir") and not isinstance(value, str):
                problems.append(f"{name} must be one path, got {value!r}")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {list(BACKBONES)}, got {self.backbone!r}")
        if self.optimizer not in ("sgd", "adamw"):
            problems.append(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            problems.append(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        for name in (
            "batch_size",
            "iterations",
            "checkpoint_every",
            "val_every",
            "log_every",
            "num_threads",
            "roi_batch_size_per_image",
            "rpn_pre_nms_top_n_train",
            "rpn_post_nms_top_n_train",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_iterations < 0 or self.early_stopping_patience < 0:
            problems.append("warmup_iterations and early_stopping_patience must be >= 0")
        if self.lr <= 0 or self.spacing_mm <= 0 or self.assumed_input_spacing_mm <= 0:
            problems.append("lr, spacing_mm and assumed_input_spacing_mm must be positive")
        if self.tile_size <= self.tile_overlap:
            problems.append("tile_size must be larger than tile_overlap")
        if problems:
            raise TrainConfigError("invalid training config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Optional[Path] = None) -> TrainConfig:
        """Build from a JSON-like dict; unknown keys are an error (a typo must not be ignored)."""
        config = _dataclass_from_dict(cls, data, "config")
        if base_dir is not None:

            def resolve(value: str) -> str:
                return value if Path(value).is_absolute() else str((base_dir / value).resolve())

            for name in ("train_coco", "val_coco", "output_dir", "cache_dir", "init_weights"):
                value = getattr(config, name)
                if isinstance(value, list):
                    setattr(config, name, [resolve(str(v)) for v in value])
                elif value is not None:
                    setattr(config, name, resolve(str(value)))
        return config

    @classmethod
    def from_json(cls, path: os.PathLike | str) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise TrainConfigError(f"training config not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"training config {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TrainConfigError(f"training config {path} must be a JSON object")
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except TrainConfigError as exc:
            raise TrainConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["anchor_sizes"] = list(self.anchor_sizes)
        data["patch"]["scale_range"] = list(self.patch.scale_range)
        data["patch"]["gamma_range"] = list(self.patch.gamma_range)
        data["patch"]["contrast_range"] = list(self.patch.contrast_range)
        if self.noise_equalisation is not None:
            data["noise_equalisation"] = self.noise_equalisation.to_json()
        return data


def _dataclass_from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    if not isinstance(data, dict):
        raise TrainConfigError(f"{what} must be an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"unknown {what} key(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TrainConfigError(f"invalid {what}: {exc}") from exc
    except DatasetError as exc:
        raise TrainConfigError(f"invalid {what}: {exc}") from exc


def model_config(config: TrainConfig) -> dict[str, Any]:
    """The settings that fix what the weights mean; saved with every checkpoint and compared on
    resume and fine-tuning (weight shapes do not depend on anchors or spacing, so a mismatch
    would load silently and then mislocate every box)."""
    return {
        "backbone": config.backbone,
        "anchor_sizes": list(config.anchor_sizes),
        "tile_size": config.tile_size,
        "tile_overlap": config.tile_overlap,
        "spacing_mm": config.spacing_mm,
        "assumed_input_spacing_mm": config.assumed_input_spacing_mm,
        "patch_size": config.patch.patch_size,
        # Only when on: checkpoints written before the setting existed still resume.
        **({} if config.noise_equalisation is None else {"noise_equalisation": config.noise_equalisation.to_json()}),
    }
