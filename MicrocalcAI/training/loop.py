"""Where the detector is trained, evaluated and exported (``microcalcai train CONFIG``).

Training draws fixed-size patches from COCO-annotated mammograms that went through the same
read + standardise path as inference (:mod:`MicrocalcAI.training.data`), so the network learns in
the canonical frame it later sees. Validation runs the *whole-image* inference path
(:func:`MicrocalcAI.core.detect.run.detect`, tiles merged) on the validation images, because patch
losses say little about false positives across a whole breast.

Lesion matching rule (used for every metric here): a ground-truth lesion is *found* by a
detection when their boxes overlap with IoU >= 0.2 **or** the detection's centre lies inside
the ground-truth box. Calcification clusters have vague borders, so a box that sits on the
cluster but is drawn tighter or looser than the annotation still counts (the centre rule),
while the IoU rule credits boxes whose centre is slightly off a small annotation. A
detection that finds no lesion is a false positive; several detections on one lesion are
one hit and no false positive.

Checkpoints are ``torch.save`` dicts of tensors and plain values (loadable with
``weights_only=True``), written atomically; they hold the model, optimizer, LR schedule,
patch-sampler and torch RNG states and the iteration, so a resumed run continues exactly
where it stopped. :func:`export_model` turns the best checkpoint into an fp16 safetensors
file plus a manifest entry with operating points chosen on validation data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from MicrocalcAI.core.atomic import atomic_open, atomic_write_text, staged_path
from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, ModelSpec, RiskCategory, sha256_file
from MicrocalcAI.core.detect.network import (
    BACKBONES,
    DetectorConfig,
    build_detector,
    image_to_tensor,
    select_device,
    set_input_size,
)
from MicrocalcAI.core.errors import CancelledError, DatasetError, InputError, MicrocalcAIError, ModelError
from MicrocalcAI.core.progress import ProgressCallback, no_progress, sub_progress
from MicrocalcAI.core.records import CanonicalImage
from MicrocalcAI.evaluation.evaluate import EVAL_MIN_SCORE, MATCH_IOU, box_iou, froc_sensitivities, hit_matrix, roc_auc  # noqa: F401 (re-exported)
from MicrocalcAI.training.data import (
    CanonicalSample,
    CocoMammogramDataset,
    PatchConfig,
    PatchSampler,
    parse_coco,
    standardise_file,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "microcalcai-checkpoint-1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "train_log.jsonl"

# The matching rule (MATCH_IOU, box_iou, hit_matrix) and roc_auc live in evaluate.py, shared
# with `microcalcai evaluate`, and are re-exported here under their old names.
#: False-positive rates (per image) at which the FROC sensitivity is averaged.
FROC_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)


class TrainConfigError(InputError):
    """A training configuration is malformed or inconsistent with an existing run."""


# ------------------------------------------------------------------------------ configuration


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

    @property
    def train_sources(self) -> list[str]:
        """``train_coco`` as a list, whether one file or several were given."""
        return list(self.train_coco) if isinstance(self.train_coco, list) else [self.train_coco]

    def __post_init__(self) -> None:
        if isinstance(self.patch, dict):
            self.patch = _dataclass_from_dict(PatchConfig, self.patch, "patch")
        self.anchor_sizes = tuple(int(a) for a in self.anchor_sizes)
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
        data["patch"]["gamma_range"] = list(self.patch.gamma_range)
        data["patch"]["contrast_range"] = list(self.patch.contrast_range)
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


# ------------------------------------------------------------------------------------ metrics


@dataclass
class ImageEvaluation:
    """Ground truth and detections of one image (canonical frame), the input of all metrics."""

    name: str
    gt_boxes: np.ndarray  # (G, 4)
    gt_labels: np.ndarray  # (G,) 1 benign, 2 malignant
    det_boxes: np.ndarray  # (D, 4)
    det_scores: np.ndarray  # (D,)
    det_p_malignant: np.ndarray  # (D,)


@dataclass
class _Scored:
    """Per-lesion and per-false-positive scores: every threshold's metrics follow from these."""

    lesion_score: np.ndarray  # best score of a detection finding the lesion (0 if none)
    lesion_p_malignant: np.ndarray  # p_malignant of that detection (nan if none)
    lesion_label: np.ndarray
    fp_scores: np.ndarray  # scores of detections that find no lesion
    image_max: list[tuple[np.ndarray, np.ndarray]]  # per image (scores, p_malignant) of all detections
    image_malignant: np.ndarray  # per image: has a malignant lesion
    n_images: int


def _score_evaluations(evals: Sequence[ImageEvaluation]) -> _Scored:
    lesion_score, lesion_pmal, lesion_label, fp_scores, per_image, image_mal = [], [], [], [], [], []
    for ev in evals:
        hits = hit_matrix(ev.det_boxes, ev.gt_boxes)
        for g in range(len(ev.gt_boxes)):
            finders = np.flatnonzero(hits[:, g]) if hits.size else np.zeros(0, dtype=int)
            if len(finders):
                best = finders[np.argmax(ev.det_scores[finders])]
                lesion_score.append(float(ev.det_scores[best]))
                lesion_pmal.append(float(ev.det_p_malignant[best]))
            else:
                lesion_score.append(0.0)
                lesion_pmal.append(float("nan"))
            lesion_label.append(int(ev.gt_labels[g]))
        is_fp = ~hits.any(axis=1) if hits.size else np.ones(len(ev.det_boxes), dtype=bool)
        fp_scores.extend(float(s) for s in np.asarray(ev.det_scores)[is_fp])
        per_image.append(
            (np.asarray(ev.det_scores, dtype=np.float64), np.asarray(ev.det_p_malignant, dtype=np.float64))
        )
        image_mal.append(bool(np.any(np.asarray(ev.gt_labels) == 2)))
    return _Scored(
        lesion_score=np.asarray(lesion_score, dtype=np.float64),
        lesion_p_malignant=np.asarray(lesion_pmal, dtype=np.float64),
        lesion_label=np.asarray(lesion_label, dtype=np.int64),
        fp_scores=np.asarray(fp_scores, dtype=np.float64),
        image_max=per_image,
        image_malignant=np.asarray(image_mal, dtype=bool),
        n_images=len(evals),
    )


def _nan_to_none(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _froc(scored: _Scored) -> dict[str, Optional[float]]:
    """Sensitivity at fixed false positives per image (best over thresholds >= EVAL_MIN_SCORE)."""
    points = froc_sensitivities(scored.lesion_score, scored.fp_scores, scored.n_images, FROC_RATES, EVAL_MIN_SCORE)
    return {f"sensitivity_at_{r:g}_fp": v for r, v in points.items()}


def summarise(evals: Sequence[ImageEvaluation], score_threshold: float) -> dict[str, Any]:
    """Lesion and image metrics at one lesion-score threshold (plus threshold-free FROC)."""
    return _summarise_scored(_score_evaluations(evals), score_threshold)


def _summarise_scored(scored: _Scored, score_threshold: float) -> dict[str, Any]:
    t = float(score_threshold)
    found = scored.lesion_score >= t
    n_les = len(found)
    mal = scored.lesion_label == 2
    n_fp = int((scored.fp_scores >= t).sum())
    # Benign-vs-malignant AUC on the lesions the detector found at this threshold.
    auc = roc_auc(scored.lesion_p_malignant[found], mal[found]) if found.any() else float("nan")
    image_p = np.array([float(p[s >= t].max()) if np.any(s >= t) else 0.0 for s, p in scored.image_max])
    image_auc = roc_auc(image_p, scored.image_malignant) if scored.n_images else float("nan")
    metrics: dict[str, Any] = {
        "score_threshold": t,
        "match_rule": f"IoU >= {MATCH_IOU} or detection centre inside the lesion box",
        "n_images": scored.n_images,
        "n_lesions": n_les,
        "n_malignant": int(mal.sum()),
        "n_benign": int((~mal).sum()),
        "lesion_sensitivity": _nan_to_none(found.mean() if n_les else float("nan")),
        "malignant_sensitivity": _nan_to_none(found[mal].mean() if mal.any() else float("nan")),
        "benign_sensitivity": _nan_to_none(found[~mal].mean() if (~mal).any() else float("nan")),
        "false_positives": n_fp,
        "fp_per_image": n_fp / scored.n_images if scored.n_images else None,
        "lesion_auc_benign_vs_malignant": _nan_to_none(auc),
        "image_auc_malignant": _nan_to_none(image_auc),
    }
    metrics.update(_froc(scored))
    return metrics


def selection_score(metrics: dict[str, Any]) -> float:
    """One number to pick the best checkpoint: mean FROC sensitivity, averaged with the AUC.

    Detection comes first (a missed cluster cannot be classified) but the benign/malignant
    AUC drives the risk, so both count equally; a missing AUC counts as chance (0.5).
    """
    froc = [metrics.get(f"sensitivity_at_{r:g}_fp") for r in FROC_RATES]
    froc_mean = float(np.mean([v if v is not None else 0.0 for v in froc]))
    auc = metrics.get("lesion_auc_benign_vs_malignant")
    return 0.5 * froc_mean + 0.5 * (auc if auc is not None else 0.5)


# ---------------------------------------------------------------------------------- evaluation


def _spec_for_training(config: TrainConfig) -> ModelSpec:
    """The manifest entry a model in training would get, so ``detect`` tiles it the same way."""
    return ModelSpec(
        name="in-training",
        version="0",
        file="",
        sha256="",
        backbone=config.backbone,
        spacing_mm=config.spacing_mm,
        assumed_input_spacing_mm=config.assumed_input_spacing_mm,
        tile_size=config.tile_size,
        tile_overlap=config.tile_overlap,
        anchor_sizes=tuple(config.anchor_sizes),
        score_threshold=EVAL_MIN_SCORE,
    )


def evaluate_canonical(
    canonical: CanonicalImage,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    name: str,
    model: torch.nn.Module,
    spec: ModelSpec,
    device: torch.device,
) -> ImageEvaluation:
    """Run whole-image detection on one canonical image and pair it with its ground truth."""
    from MicrocalcAI.core.detect.run import detect

    detections = detect(canonical, model, spec, device=device, score_threshold=EVAL_MIN_SCORE)
    return ImageEvaluation(
        name=name,
        gt_boxes=np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4),
        gt_labels=np.asarray(gt_labels, dtype=np.int64),
        det_boxes=np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4),
        det_scores=np.array([d.score for d in detections], dtype=np.float64),
        det_p_malignant=np.array([d.p_malignant for d in detections], dtype=np.float64),
    )


def collect_evaluations(
    coco_json: os.PathLike | str,
    spec: ModelSpec,
    model: torch.nn.Module,
    device: torch.device | str,
    *,
    progress: ProgressCallback = no_progress,
    max_images: Optional[int] = None,
    skipped: Optional[list[str]] = None,
) -> list[ImageEvaluation]:
    """Detections of every COCO image through the real path: read -> standardise -> detect.

    No cache is used: this is the measurement of what a user gets from the files. Images the
    pipeline refuses raise, unless a ``skipped`` list is given to collect them (the caller
    must then report them: they are neither hits nor misses).
    """
    from MicrocalcAI.training.data import canonical_boxes

    device = torch.device(device) if not isinstance(device, torch.device) else device
    entries = parse_coco(coco_json)[:max_images]
    model.eval()
    evals = []
    for i, entry in enumerate(entries):
        progress(i / len(entries), f"evaluating {entry.path.name} ({i + 1}/{len(entries)})")
        try:
            canonical = standardise_file(
                entry.path,
                spacing_mm=spec.spacing_mm,
                assumed_input_spacing_mm=spec.assumed_input_spacing_mm,
                input_spacing_mm=entry.spacing_mm,
            )
        except MicrocalcAIError as exc:
            if skipped is None:
                raise
            log.warning("evaluation skips %s: %s", entry.path, exc)
            skipped.append(f"{entry.path.name}: {exc}")
            continue
        boxes = canonical_boxes(entry.boxes_stored, canonical.transform, canonical.image.shape)
        evals.append(evaluate_canonical(canonical, boxes, entry.labels, str(entry.path), model, spec, device))
    progress(1.0, f"evaluated {len(entries)} images")
    return evals


def evaluate_coco(
    coco_json: os.PathLike | str,
    spec: ModelSpec,
    model: torch.nn.Module,
    device: torch.device | str,
    *,
    score_threshold: Optional[float] = None,
    progress: ProgressCallback = no_progress,
    max_images: Optional[int] = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on a COCO dataset at ``score_threshold`` (default: the spec's)."""
    skipped: list[str] = []
    evals = collect_evaluations(
        coco_json, spec, model, device, progress=progress, max_images=max_images, skipped=skipped
    )
    threshold = spec.score_threshold if score_threshold is None else float(score_threshold)
    metrics = summarise(evals, threshold)
    metrics["dataset"] = str(coco_json)
    metrics["n_images_refused"] = len(skipped)
    metrics["images_refused"] = skipped
    return metrics


def choose_score_threshold(evals: Sequence[ImageEvaluation], target_fp_per_image: float = 1.0) -> float:
    """The lesion-score threshold with the best sensitivity at <= ``target_fp_per_image``.

    Among thresholds with that same sensitivity the highest is taken (fewest false
    positives). The grid is 0.05..0.95 in steps of 0.01 so manifests hold round numbers.
    """
    scored = _score_evaluations(evals)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    best_t, best_sens = float(grid[-1]), -1.0
    for t in grid:
        n_fp = (scored.fp_scores >= t).sum()
        if scored.n_images and n_fp / scored.n_images > target_fp_per_image:
            continue
        sens = float((scored.lesion_score >= t).mean()) if len(scored.lesion_score) else 0.0
        if sens >= best_sens:  # ">=" moves to the highest threshold of equal sensitivity
            best_t, best_sens = float(t), sens
    return best_t


def choose_malignancy_operating_points(
    evals: Sequence[ImageEvaluation], score_threshold: float, target_malignant_sensitivity: float = 0.95
) -> dict[str, float]:
    """Thresholds on p_malignant from the validation lesions found at ``score_threshold``.

    ``balanced`` maximises Youden's J (sensitivity + specificity - 1); ``high_sensitivity``
    maximises specificity while still calling at least ``target_malignant_sensitivity`` of
    the found malignant lesions malignant. On well separated (e.g. simulated) data a whole
    range of thresholds is optimal; taking its edge would put the operating point right at
    the most extreme validation lesion, so ``balanced`` takes the middle of the optimal
    range and ``high_sensitivity`` its low end (the sensitive side). Falls back to the
    manifest defaults when the data lack a class.
    """
    scored = _score_evaluations(evals)
    found = scored.lesion_score >= score_threshold
    p = scored.lesion_p_malignant[found]
    mal = scored.lesion_label[found] == 2
    if mal.sum() == 0 or (~mal).sum() == 0:
        log.warning("validation lacks found lesions of both classes: default p_malignant operating points kept")
        return {"high_sensitivity": 0.2, "balanced": 0.5}
    grid = np.round(np.arange(0.01, 0.991, 0.01), 2)
    sens = np.array([(p[mal] >= t).mean() for t in grid])
    spec_ = np.array([(p[~mal] < t).mean() for t in grid])
    youden = sens + spec_ - 1
    optimal = np.flatnonzero(np.isclose(youden, youden.max()))
    balanced = float(grid[optimal[len(optimal) // 2]])
    allowed = np.where(sens >= target_malignant_sensitivity, spec_, -1.0)
    if allowed.max() < 0:
        high_sens = float(grid[0])
    else:
        high_sens = float(grid[np.flatnonzero(np.isclose(allowed, allowed.max()))[0]])
    return {"high_sensitivity": min(high_sens, balanced), "balanced": balanced}


# ------------------------------------------------------------------------------------ training


def _lr_factor(config: TrainConfig, iteration: int) -> float:
    """LR multiplier after ``iteration`` optimizer steps (linear warm-up, then cosine/constant)."""
    if config.warmup_iterations and iteration < config.warmup_iterations:
        return 0.001 + (1.0 - 0.001) * iteration / config.warmup_iterations
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.iterations - config.warmup_iterations, 1)
    progress = min(max(iteration - config.warmup_iterations, 0) / span, 1.0)
    return config.min_lr_factor + (1.0 - config.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters: decaying them only hurts.
    decay, no_decay = [], []
    for _name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def _atomic_torch_save(obj: dict[str, Any], path: Path) -> None:
    with atomic_open(path) as fh:
        torch.save(obj, fh)


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


def _is_checkpoint_path(path: Path) -> bool:
    return path.suffix.lower() in (".pt", ".pth")


def _check_initial_weights_file(config: TrainConfig) -> None:
    """Fail before hours of standardising when ``init_weights`` cannot be used."""
    if not config.init_weights:
        return
    path = Path(config.init_weights)
    if not path.is_file():
        raise TrainConfigError(f"init_weights: file not found: {path}")
    if not _is_checkpoint_path(path) and path.suffix.lower() != ".safetensors":
        raise TrainConfigError(
            f"init_weights {path}: expected a MicrocalcAI .safetensors weights file or a training checkpoint .pt"
        )


def _load_initial_weights(model: torch.nn.Module, config: TrainConfig) -> None:
    """Fine-tuning start: weights from a MicrocalcAI safetensors file or a training checkpoint.

    Weight shapes do not depend on the anchor sizes or the spacing, so the settings saved
    with the weights are compared with the config: a detector trained with other anchors or
    at another spacing would load silently and then mislocate every box.
    """
    from MicrocalcAI.core.detect.weights import load_state_strict, read_weights_file

    path = Path(str(config.init_weights))
    if _is_checkpoint_path(path):
        ckpt = load_checkpoint(path)
        tensors, saved = ckpt["model"], json.loads(ckpt["model_config"])
    else:
        raw, saved = read_weights_file(path)
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
    ours = _model_config(config)
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


def _model_config(config: TrainConfig) -> dict[str, Any]:
    return {
        "backbone": config.backbone,
        "anchor_sizes": list(config.anchor_sizes),
        "tile_size": config.tile_size,
        "tile_overlap": config.tile_overlap,
        "spacing_mm": config.spacing_mm,
        "assumed_input_spacing_mm": config.assumed_input_spacing_mm,
        "patch_size": config.patch.patch_size,
    }


class _JsonlLog:
    """Append-only JSON-lines log: one record per logged iteration or validation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def _set_batchnorm_eval(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


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


def _apply_training_sampling(model: torch.nn.Module, config: TrainConfig) -> None:
    """Set the RPN/ROI sampling sizes used while training (inference values stay the model's)."""
    model.roi_heads.fg_bg_sampler.batch_size_per_image = int(config.roi_batch_size_per_image)
    model.rpn._pre_nms_top_n["training"] = int(config.rpn_pre_nms_top_n_train)
    model.rpn._post_nms_top_n["training"] = int(config.rpn_post_nms_top_n_train)


def validate(
    model: torch.nn.Module,
    dataset: CocoMammogramDataset,
    config: TrainConfig,
    device: torch.device,
    progress: ProgressCallback = no_progress,
) -> dict[str, Any]:
    """Whole-image validation metrics (cached canonical images, real ``detect`` path)."""
    spec = _spec_for_training(config)
    n = len(dataset) if config.val_max_images is None else min(len(dataset), config.val_max_images)
    was_training = model.training
    model.eval()
    evals = []
    try:
        with torch.no_grad():
            for i in range(n):
                progress(i / n, f"validating ({i + 1}/{n})")
                s = dataset[i]
                evals.append(
                    evaluate_canonical(s.to_canonical_image(), s.boxes, s.labels, str(s.path), model, spec, device)
                )
    finally:
        model.train(was_training)
        if was_training and config.freeze_batchnorm:
            _set_batchnorm_eval(model)
    threshold = choose_score_threshold(evals)
    metrics = summarise(evals, threshold)
    metrics["selection_score"] = selection_score(metrics)
    return metrics


def _prepared_dataset(
    config: TrainConfig, coco: os.PathLike | str, cache_dir: Path, progress: ProgressCallback
) -> CocoMammogramDataset:
    dataset = CocoMammogramDataset(
        coco,
        spacing_mm=config.spacing_mm,
        assumed_input_spacing_mm=config.assumed_input_spacing_mm,
        cache_dir=cache_dir,
        skip_unusable=config.skip_unusable_images,
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
    device = select_device(config.device)
    use_amp = bool(config.mixed_precision and device.type == "cuda")
    torch.manual_seed(config.seed)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"

    resuming = resume and last_path.exists()
    if not resuming:
        _check_initial_weights_file(config)
    progress(0.0, "preparing training images")
    samples = training_samples(config, cache_dir, progress)
    val_set = _prepared_dataset(config, config.val_coco, cache_dir, progress) if config.val_coco else None
    sampler = PatchSampler(samples, config.patch, seed=config.seed)
    log.info("validating on %s images", len(val_set) if val_set is not None else 0)

    model, _ = build_detector(
        config.backbone,
        anchor_sizes=config.anchor_sizes,
        tile_size=config.tile_size,
        # ImageNet weights would be overwritten at once by init_weights or the checkpoint.
        pretrained_backbone=config.pretrained_backbone and not config.init_weights and not resuming,
    )
    if config.init_weights and not resuming:
        _load_initial_weights(model, config)
    set_input_size(model, config.patch.patch_size)
    _apply_training_sampling(model, config)
    model.to(device)
    optimizer = _make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _lr_factor(config, it))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    iteration = 0
    best_score, best_iteration, best_metrics = -math.inf, None, {}
    bad_validations = 0
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        saved = json.loads(ckpt["model_config"])
        if saved != _model_config(config):
            raise TrainConfigError(
                f"cannot resume {last_path}: it was trained with {saved}, config now says {_model_config(config)}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if use_amp and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        sampler.set_state(ckpt["sampler_state"])
        torch.set_rng_state(ckpt["torch_rng"])
        iteration = int(ckpt["iteration"])
        best_score = float(ckpt["best_score"])
        best_iteration = ckpt["best_iteration"] if ckpt["best_iteration"] >= 0 else None
        best_metrics = json.loads(ckpt["best_metrics"])
        bad_validations = int(ckpt["bad_validations"])
        log.info("resumed %s at iteration %d", last_path, iteration)
    elif resume:
        log.warning("resume requested but %s does not exist: starting from scratch", last_path)
    if iteration == 0:
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoint_dict(with_training_state: bool = True) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": json.dumps(_model_config(config)),
            "config": json.dumps(config.to_dict()),
            "best_score": float(best_score),
            "best_iteration": -1 if best_iteration is None else int(best_iteration),
            "best_metrics": json.dumps(best_metrics),
            "bad_validations": bad_validations,
        }
        if with_training_state:
            ckpt.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                sampler_state=sampler.get_state(),
                torch_rng=torch.get_rng_state(),
            )
            if use_amp:
                ckpt["scaler"] = scaler.state_dict()
        return ckpt

    train_log = _JsonlLog(out / LOG_FILE)
    model.train()
    if config.freeze_batchnorm:
        _set_batchnorm_eval(model)
    stopped_early = False
    window: list[dict[str, float]] = []
    tick = time.monotonic()
    try:
        while iteration < config.iterations:
            patches = sampler.sample_batch(config.batch_size)
            images, targets = _patches_to_batch(patches, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                losses = model(images, targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise ModelError(
                    f"training diverged at iteration {iteration + 1} (loss {float(loss)}); lower lr or raise warmup_iterations"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            window.append({k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach())})

            if iteration % config.log_every == 0 or iteration == config.iterations:
                now = time.monotonic()
                record = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                record.update(
                    iteration=iteration,
                    lr=optimizer.param_groups[0]["lr"],
                    s_per_iteration=(now - tick) / len(window),
                    elapsed_s=now - started,
                )
                train_log.write(record)
                log.info(
                    "iteration %d/%d loss %.4f (%.2f s/it)",
                    iteration,
                    config.iterations,
                    record["loss"],
                    record["s_per_iteration"],
                )
                window, tick = [], now

            if val_set is not None and (iteration % config.val_every == 0 or iteration == config.iterations):
                rng_state = torch.get_rng_state()
                metrics = validate(model, val_set, config, device)
                torch.set_rng_state(rng_state)  # validation must not change the training draw
                score = metrics["selection_score"]
                improved = score > best_score
                if improved:
                    best_score, best_iteration, best_metrics = score, iteration, metrics
                    bad_validations = 0
                    _atomic_torch_save(checkpoint_dict(with_training_state=False), best_path)
                else:
                    bad_validations += 1
                train_log.write({"iteration": iteration, "validation": metrics, "improved": improved})
                log.info(
                    "validation at %d: score %.4f (sensitivity %s at threshold %.2f, %.2f FP/image, AUC %s)%s",
                    iteration,
                    score,
                    metrics["lesion_sensitivity"],
                    metrics["score_threshold"],
                    metrics["fp_per_image"] or 0.0,
                    metrics["lesion_auc_benign_vs_malignant"],
                    " new best" if improved else "",
                )
                tick = time.monotonic()  # validation time is not iteration time
                if config.early_stopping_patience and bad_validations >= config.early_stopping_patience:
                    stopped_early = True

            if iteration % config.checkpoint_every == 0 or iteration == config.iterations or stopped_early:
                _atomic_torch_save(checkpoint_dict(), last_path)
            progress(iteration / config.iterations, f"iteration {iteration}/{config.iterations}")
            if stopped_early:
                log.info("early stopping at iteration %d: no improvement in %d validations", iteration, bad_validations)
                break
    except (CancelledError, KeyboardInterrupt):
        _atomic_torch_save(checkpoint_dict(), last_path)
        log.info("stopped at iteration %d; checkpoint %s (resume to continue)", iteration, last_path)
        raise

    return TrainResult(
        output_dir=str(out),
        iterations=iteration,
        last_checkpoint=str(last_path),
        best_checkpoint=str(best_path) if best_path.exists() else None,
        best_iteration=best_iteration,
        best_metrics=best_metrics,
        stopped_early=stopped_early,
        elapsed_s=time.monotonic() - started,
    )


def train_from_config_file(path: str, resume: bool = False, progress: Optional[ProgressCallback] = None) -> TrainResult:
    """Entry point of ``microcalcai train CONFIG [--resume]``."""
    return train(TrainConfig.from_json(path), progress=progress, resume=resume)


# -------------------------------------------------------------------------------------- export


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


def write_manifest_entry(out_dir: os.PathLike | str, spec: ModelSpec, make_default: bool = True) -> Path:
    """Add or replace ``spec`` (by name) in ``out_dir/manifest.json``, atomically."""
    path = Path(out_dir) / MANIFEST_NAME
    data: dict[str, Any] = {"schema_version": 1, "default": None, "models": []}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"existing manifest {path} is not valid JSON; fix or remove it: {exc}") from exc
    models = [m for m in data.get("models", []) if m.get("name") != spec.name]
    models.append(spec.to_json())
    data["models"] = models
    data.setdefault("schema_version", 1)
    if make_default or not data.get("default"):
        data["default"] = spec.name
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def export_model(
    checkpoint_path: os.PathLike | str,
    out_dir: os.PathLike | str,
    name: str,
    version: str,
    *,
    val_coco: Optional[os.PathLike | str] = None,
    test_coco: Optional[os.PathLike | str] = None,
    training_data: str = "",
    target_fp_per_image: float = 1.0,
    make_default: bool = True,
    device: str = "auto",
    extra_metrics: Optional[dict[str, Any]] = None,
    progress: ProgressCallback = no_progress,
) -> ModelSpec:
    """Write fp16 weights + a manifest entry for a checkpoint; return the entry.

    Operating points are chosen on ``val_coco`` (lesion-score threshold: best sensitivity at
    ``target_fp_per_image``; p_malignant thresholds: see
    :func:`choose_malignancy_operating_points`), and every metric is measured on the
    *exported* fp16 weights loaded back through :func:`load_detector`, i.e. on what users run.
    """
    from MicrocalcAI.core.detect.weights import load_detector, save_weights

    dev = select_device(device)
    model, mc = model_from_checkpoint(checkpoint_path, "cpu")
    for coco in (val_coco, test_coco):  # a bad file must fail before anything is written
        if coco is not None:
            parse_coco(coco)
    if not (
        isinstance(target_fp_per_image, (int, float)) and math.isfinite(target_fp_per_image) and target_fp_per_image > 0
    ):
        raise InputError(f"target_fp_per_image must be a positive number, got {target_fp_per_image!r}")
    out = Path(out_dir)
    weights_file = f"{name}-{version}.safetensors"
    # Measured under a hidden name and renamed only once everything is measured, so a failed
    # or interrupted export neither leaves a stray weights file nor breaks the checksum of an
    # existing manifest entry that points at the final name.
    with staged_path(out / weights_file) as staged:
        sha = save_weights(model, staged, DetectorConfig.from_json(mc))
        spec = ModelSpec(
            name=name,
            version=version,
            file=staged.name,
            sha256=sha,
            backbone=mc["backbone"],
            spacing_mm=float(mc["spacing_mm"]),
            assumed_input_spacing_mm=float(mc["assumed_input_spacing_mm"]),
            tile_size=int(mc["tile_size"]),
            tile_overlap=int(mc["tile_overlap"]),
            anchor_sizes=tuple(int(a) for a in mc["anchor_sizes"]),
            training_data=training_data,
            folder=str(out),
        )
        if sha256_file(spec.weights_path) != sha:
            raise ModelError(f"written weights {spec.weights_path} do not match their own checksum")
        shipped = load_detector(spec, dev)
        metrics: dict[str, Any] = {"checkpoint_iteration": int(load_checkpoint(checkpoint_path)["iteration"])}
        if val_coco is not None:
            val_skipped: list[str] = []
            val_evals = collect_evaluations(
                val_coco, spec, shipped, dev, progress=sub_progress(progress, 0.0, 0.5), skipped=val_skipped
            )
            spec.score_threshold = choose_score_threshold(val_evals, target_fp_per_image)
            points = choose_malignancy_operating_points(val_evals, spec.score_threshold)
            spec.operating_points = points
            spec.risk_categories = [
                RiskCategory("low", 0.0),
                RiskCategory("intermediate", points["high_sensitivity"]),
                RiskCategory("high", points["balanced"]),
            ]
            metrics["validation"] = summarise(val_evals, spec.score_threshold) | {
                "dataset": str(val_coco),
                "n_images_refused": len(val_skipped),
            }
            metrics["operating_point_rule"] = (
                f"score_threshold: highest sensitivity at <= {target_fp_per_image:g} FP/image on validation; "
                "p_malignant on found validation lesions: high_sensitivity = lowest threshold of best specificity with >= 95% malignant sensitivity, balanced = middle of the thresholds maximising Youden J"
            )
        if test_coco is not None:
            metrics["test"] = evaluate_coco(test_coco, spec, shipped, dev, progress=sub_progress(progress, 0.5, 1.0))
        if extra_metrics:
            metrics.update(extra_metrics)
        spec.metrics = metrics
    spec.file = weights_file
    write_manifest_entry(out, spec, make_default=make_default)
    progress(1.0, f"exported {name} {version} to {out}")
    log.info("exported %s %s (%s) to %s", name, version, weights_file, out)
    return spec
