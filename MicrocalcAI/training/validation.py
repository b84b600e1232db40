"""Training's validation: whole-image detection on validation images, measured by the
evaluation package, so a checkpoint is chosen by the numbers ``microcalcai evaluate`` reports.

Validation runs the *whole-image* inference path (:func:`MicrocalcAI.core.detect.run.detect`,
tiles merged) because patch losses say little about false positives across a whole breast.
Boxes are compared in the canonical frame; the hit rule (:mod:`MicrocalcAI.core.boxes`) gives
the same answer there as in stored pixels. :func:`summarise` is
:func:`MicrocalcAI.evaluation.metrics.validation_summary` on
:func:`MicrocalcAI.evaluation.matching.match_detections`; the operating-point choices used by
export (:func:`choose_score_threshold`, :func:`choose_malignancy_operating_points`) work on the
same matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from MicrocalcAI.core.detect.manifest import ModelSpec
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import CanonicalImage
from MicrocalcAI.datasets.coco import CocoImage, parse_coco
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE, FROC_RATES
from MicrocalcAI.evaluation.matching import ImageMatch, match_detections
from MicrocalcAI.evaluation.metrics import pool_lesions, validation_summary
from MicrocalcAI.training.config import TrainConfig
from MicrocalcAI.training.data import CocoMammogramDataset, canonical_boxes, standardise_file

__all__ = [
    "THRESHOLD_GRID",
    "ImageEvaluation",
    "choose_cutpoints",
    "choose_malignancy_operating_points",
    "choose_score_threshold",
    "collect_evaluations",
    "evaluate_canonical",
    "evaluate_coco",
    "lowest_threshold_within",
    "match_all",
    "selection_score",
    "set_batchnorm_eval",
    "spec_for_training",
    "standardised_entries",
    "summarise",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass
class ImageEvaluation:
    """Ground truth and detections of one image (canonical frame), the input of all metrics."""

    name: str
    gt_boxes: np.ndarray  # (G, 4)
    gt_labels: np.ndarray  # (G,) 1 benign, 2 malignant
    det_boxes: np.ndarray  # (D, 4)
    det_scores: np.ndarray  # (D,)
    det_p_malignant: np.ndarray  # (D,)
    det_labels: list[Optional[str]] = field(default_factory=list)  # detector class; empty: unknown

    def match(self, threshold: float) -> ImageMatch:
        """This image matched at ``threshold`` by the evaluation package's rule."""
        labels = list(self.det_labels) or [None] * len(np.asarray(self.det_scores).reshape(-1))
        return match_detections(
            self.gt_boxes, self.gt_labels, self.det_boxes, self.det_scores, self.det_p_malignant, labels, threshold
        )


def match_all(evals: Sequence[ImageEvaluation], threshold: float) -> list[ImageMatch]:
    return [ev.match(threshold) for ev in evals]


def summarise(
    evals: Sequence[ImageEvaluation], score_threshold: float, floor: float = EVAL_MIN_SCORE
) -> dict[str, Any]:
    """Lesion and image metrics at one lesion-score threshold (plus threshold-free FROC).

    ``floor`` is the lowest score the evaluations hold: a calibrated model's is its
    ``ModelSpec.reporting_floor`` (the merge floor on the calibrated scale), so the FROC here
    matches the one ``microcalcai evaluate`` reports for the same data.
    """
    return validation_summary(match_all(evals, score_threshold), score_threshold, floor=floor)


def selection_score(metrics: dict[str, Any]) -> float:
    """One number to pick the best checkpoint: mean FROC sensitivity, averaged with the AUC.

    The FROC mean is over :data:`~MicrocalcAI.evaluation.curves.FROC_RATES` (1/8 ... 8 FP per
    image, the "competition performance metric" of the CAD literature). Detection comes first
    (a missed cluster cannot be classified) but the benign/malignant AUC drives the risk, so
    both count equally; a missing AUC counts as chance (0.5).
    """
    froc = [metrics.get(f"sensitivity_at_{r:g}_fp") for r in FROC_RATES]
    froc_mean = float(np.mean([v if v is not None else 0.0 for v in froc]))
    auc = metrics.get("lesion_auc_benign_vs_malignant")
    return 0.5 * froc_mean + 0.5 * (auc if auc is not None else 0.5)


def spec_for_training(config: TrainConfig) -> ModelSpec:
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
        noise_equalisation=config.noise_equalisation,
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

    # Everything the model can report: the merge floor, on the calibrated scale when calibrated.
    detections = detect(
        canonical, model, spec, device=device, score_threshold=min(EVAL_MIN_SCORE, spec.reporting_floor)
    )
    return ImageEvaluation(
        name=name,
        gt_boxes=np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4),
        gt_labels=np.asarray(gt_labels, dtype=np.int64),
        det_boxes=np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4),
        det_scores=np.array([d.score for d in detections], dtype=np.float64),
        det_p_malignant=np.array([d.p_malignant for d in detections], dtype=np.float64),
        det_labels=[d.label for d in detections],
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
    device = torch.device(device) if not isinstance(device, torch.device) else device
    entries = parse_coco(coco_json)[:max_images]
    model.eval()
    evals = []
    for entry, canonical in standardised_entries(entries, spec, "evaluating", progress=progress, skipped=skipped):
        boxes = canonical_boxes(entry.boxes_stored, canonical.transform, canonical.image.shape)
        evals.append(evaluate_canonical(canonical, boxes, entry.labels, str(entry.path), model, spec, device))
    progress(1.0, f"evaluated {len(entries)} images")
    return evals


def standardised_entries(
    entries: Sequence[CocoImage],
    spec: ModelSpec,
    verb: str,
    *,
    progress: ProgressCallback = no_progress,
    skipped: Optional[list[str]] = None,
) -> Iterator[tuple[CocoImage, CanonicalImage]]:
    """Each COCO entry read and standardised as ``spec``'s model sees it (its spacing, the
    entry's stated spacing, its noise equalisation), for whatever runs the model over a dataset.

    An image the pipeline refuses raises, unless a ``skipped`` list is given to collect
    "file: reason" lines (the caller must report them); ``verb`` names the work in progress
    messages and in the warning.
    """
    for i, entry in enumerate(entries):
        progress(i / max(len(entries), 1), f"{verb} {entry.path.name} ({i + 1}/{len(entries)})")
        try:
            canonical = standardise_file(
                entry.path,
                spacing_mm=spec.spacing_mm,
                assumed_input_spacing_mm=spec.assumed_input_spacing_mm,
                input_spacing_mm=entry.spacing_mm,
                noise_equalisation=spec.noise_equalisation,
            )
        except MicrocalcAIError as exc:
            if skipped is None:
                raise
            log.warning("skipped %s while %s: %s", entry.path, verb, exc)
            skipped.append(f"{entry.path.name}: {exc}")
            continue
        yield entry, canonical


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
    metrics = summarise(evals, threshold, floor=min(EVAL_MIN_SCORE, spec.reporting_floor))
    metrics["dataset"] = str(coco_json)
    metrics["n_images_refused"] = len(skipped)
    metrics["images_refused"] = skipped
    return metrics


#: Lesion-score thresholds export may choose: round numbers in the manifest, 0.05-0.95.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def choose_score_threshold(evals: Sequence[ImageEvaluation], target_fp_per_image: float = 1.0) -> float:
    """The lesion-score threshold with the best sensitivity at <= ``target_fp_per_image``.

    Among thresholds with that same sensitivity the highest is taken (fewest false
    positives). The grid is 0.05..0.95 in steps of 0.01 so manifests hold round numbers.
    """
    pooled = pool_lesions(match_all(evals, EVAL_MIN_SCORE))
    best_t, best_sens = float(THRESHOLD_GRID[-1]), -1.0
    for t in THRESHOLD_GRID:
        n_fp = (pooled.fp_scores >= t).sum()
        if pooled.n_images and n_fp / pooled.n_images > target_fp_per_image:
            continue
        sens = float((pooled.sweep >= t).mean()) if pooled.n else 0.0
        if sens >= best_sens:  # ">=" moves to the highest threshold of equal sensitivity
            best_t, best_sens = float(t), sens
    return best_t


def lowest_threshold_within(evals: Sequence[ImageEvaluation], max_fp_per_image: float) -> float:
    """The lowest lesion-score threshold (same 0.01 grid as :func:`choose_score_threshold`) at
    which the detections that find nothing on ``evals`` stay at most ``max_fp_per_image``.

    Why: a threshold chosen on simulated validation alone let models make 1.1-1.6 false marks
    per image on real film (docs/real-film.md, section 5); export raises its threshold to this
    floor on real films delivered the way archives hold them (``export_model(negatives_coco=)``).
    When even the top of the grid makes more, the top is returned and a warning logged.
    """
    pooled = pool_lesions(match_all(evals, EVAL_MIN_SCORE))
    if not pooled.n_images:
        return float(THRESHOLD_GRID[0])
    for t in THRESHOLD_GRID:
        if (pooled.fp_scores >= t).sum() / pooled.n_images <= max_fp_per_image:
            return float(t)
    top = float(THRESHOLD_GRID[-1])
    log.warning(
        "even at threshold %.2f the images make %.2f false marks per image (> %g)",
        top,
        (pooled.fp_scores >= top).sum() / pooled.n_images,
        max_fp_per_image,
    )
    return top


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
    pooled = pool_lesions(match_all(evals, score_threshold))
    p = pooled.matched_p[pooled.matched]
    mal = pooled.is_malignant[pooled.matched]
    if mal.sum() == 0 or (~mal).sum() == 0:
        log.warning("validation lacks found lesions of both classes: default p_malignant operating points kept")
        return {"high_sensitivity": 0.2, "balanced": 0.5}
    high_sens, balanced = choose_cutpoints(p, mal, target_malignant_sensitivity)
    return {"high_sensitivity": high_sens, "balanced": balanced}


def choose_cutpoints(p: np.ndarray, positive: np.ndarray, target_sensitivity: float = 0.95) -> tuple[float, float]:
    """(high_sensitivity, balanced) thresholds on probabilities ``p`` of units (lesions, images).

    ``balanced`` is the middle of the thresholds maximising Youden's J; ``high_sensitivity``
    the lowest threshold of best specificity with sensitivity >= ``target_sensitivity``
    (never above ``balanced``). The grid is 0.01..0.99 in steps of 0.01. Both classes must
    be present.
    """
    p = np.asarray(p, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    grid = np.round(np.arange(0.01, 0.991, 0.01), 2)
    sens = np.array([(p[positive] >= t).mean() for t in grid])
    spec_ = np.array([(p[~positive] < t).mean() for t in grid])
    youden = sens + spec_ - 1
    optimal = np.flatnonzero(np.isclose(youden, youden.max()))
    balanced = float(grid[optimal[len(optimal) // 2]])
    allowed = np.where(sens >= target_sensitivity, spec_, -1.0)
    if allowed.max() < 0:
        high_sens = float(grid[0])
    else:
        high_sens = float(grid[np.flatnonzero(np.isclose(allowed, allowed.max()))[0]])
    return min(high_sens, balanced), balanced


def set_batchnorm_eval(model: torch.nn.Module) -> None:
    """Batch-norm layers to eval mode (frozen statistics), the rest untouched."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def validate(
    model: torch.nn.Module,
    dataset: CocoMammogramDataset,
    config: TrainConfig,
    device: torch.device,
    progress: ProgressCallback = no_progress,
) -> dict[str, Any]:
    """Whole-image validation metrics (cached canonical images, real ``detect`` path)."""
    spec = spec_for_training(config)
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
            set_batchnorm_eval(model)
    threshold = choose_score_threshold(evals)
    metrics = summarise(evals, threshold)
    metrics["selection_score"] = selection_score(metrics)
    return metrics
