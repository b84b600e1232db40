"""Where a model is measured on a labelled dataset (``microcalcai evaluate COCO --out DIR``).

The figures of Lin et al. (lesion-level accuracy, sensitivity and specificity for malignant;
the same at image and breast level), plus threshold-free curves: ROC AUC with bootstrap 95%
intervals, FROC and calibration. The exact definitions are in ``docs/evaluation.md``; the
short version:

* **Matching rule** (the one used in training, implemented once in :func:`hit_matrix`): a
  ground-truth (GT) lesion is *found* by a reported lesion when their boxes have IoU >= 0.2 or
  the reported box's centre lies inside the GT box. Among several finders the highest-scoring
  one is *the* match. A reported lesion that finds no GT lesion is a false positive (FP).
* **Missed lesions are never dropped.** A GT lesion with no match is a *missed* lesion; for
  malignancy it is "predicted not malignant", so a missed malignant lesion is a false
  negative. (The paper's released code evaluates only lesions with an overlapping
  prediction, which hides every miss; ``matched_only`` numbers are reported next to ours
  only so the two can be compared.)
* Images the pipeline refuses, or that have no findings file, count as images with no
  detection: all their lesions missed, image risk 0. They are listed in the report.
* Image and breast level: truth positive = at least one malignant GT lesion (images with no
  lesions are negatives); the score is the image risk (highest p_malignant of the reported
  lesions) and the breast risk (highest of its views, :mod:`MicrocalcAI.core.findings.risk`).

:func:`compute_metrics` is pure (GT + :class:`ImageFindings` in, a JSON-ready dict out) so
every number can be checked on hand-built cases without a model; :func:`evaluate_dataset`
runs the real pipeline (or reads ``microcalcai detect`` outputs) and :func:`write_report`
writes ``metrics.json`` and the ROC, FROC and calibration plots.

Boxes are compared in stored-pixel coordinates. Training compares them in the canonical frame;
the two agree because flips, translations and per-axis scalings change neither IoU nor
"centre inside".
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_bytes, atomic_write_text
from MicrocalcAI.core.detect.manifest import MERGE_FLOOR, ModelSpec
from MicrocalcAI.core.errors import CancelledError, DatasetError, MicrocalcAIError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import ImageFindings, Lesion

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Matching rule: IoU threshold (the other half of the rule is "detection centre inside").
MATCH_IOU = 0.2
#: FP-per-image rates of the FROC table (1/8 ... 8).
FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Lowest lesion score kept when the pipeline is run for evaluation: the FROC sweep starts here.
#: It is the detector's merge floor, so every threshold of the sweep reports exactly what
#: running the pipeline at that threshold would.
EVAL_MIN_SCORE = MERGE_FLOOR
#: Label ids of the ground truth (as in :data:`MicrocalcAI.training.data.LABEL_IDS`).
BENIGN, MALIGNANT = 1, 2
#: Name of the classification rule "the detector's own class" (argmax benign/malignant).
DETECTOR_CLASS = "detector_class"
METRICS_FILE = "metrics.json"
PLOT_FILES = ("roc.png", "froc.png", "calibration.png")
REPORT_SCHEMA = "microcalcai-evaluation-1"


# ------------------------------------------------------------------------- shared primitives


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def hit_matrix(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """(D, G) bool: detection d finds lesion g (IoU >= threshold or d's centre inside g).

    The one implementation of the matching rule, used by training validation, export and
    this evaluation suite, so a model is selected and reported by the same yardstick.
    """
    det = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    cx = (det[:, 0] + det[:, 2]) / 2
    cy = (det[:, 1] + det[:, 3]) / 2
    inside = (
        (cx[:, None] >= gt[None, :, 0])
        & (cx[:, None] <= gt[None, :, 2])
        & (cy[:, None] >= gt[None, :, 1])
        & (cy[:, None] <= gt[None, :, 3])
    )
    return inside | (box_iou(det, gt) >= iou_threshold)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); nan without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "positive iff score >= threshold", from (0, 0) to (1, 1).

    One point per distinct score, so tied scores move the curve diagonally (the same
    convention as :func:`roc_auc`, whose value is the trapezoid area under this curve).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    thresholds = np.unique(scores)[::-1]
    tp = np.array([(positive & (scores >= t)).sum() for t in thresholds], dtype=np.float64)
    fp = np.array([(~positive & (scores >= t)).sum() for t in thresholds], dtype=np.float64)
    tpr = np.concatenate([[0.0], tp / n_pos if n_pos else np.full_like(tp, np.nan)])
    fpr = np.concatenate([[0.0], fp / n_neg if n_neg else np.full_like(fp, np.nan)])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def froc_curve(
    lesion_scores: np.ndarray, fp_scores: np.ndarray, n_images: int, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FP per image, sensitivity) of the score sweep, thresholds >= ``min_score``.

    ``lesion_scores`` holds, per GT lesion, the best score of a detection that finds it; a
    lesion no detection finds must have a score below ``min_score`` (e.g. ``-inf``) so it is
    missed at every threshold. ``fp_scores`` are the scores of detections that find nothing.
    A threshold above every score is included, so the curve starts at (0 FP, 0 found).
    """
    lesion_scores = np.asarray(lesion_scores, dtype=np.float64)
    fp_scores = np.asarray(fp_scores, dtype=np.float64)
    finite = np.concatenate([lesion_scores[np.isfinite(lesion_scores)], fp_scores])
    top = (float(finite.max()) if finite.size else 1.0) + 1e-9
    thresholds = np.unique(np.concatenate([finite, [top, max(min_score, -1e300)]]))
    thresholds = thresholds[thresholds >= min_score]
    fp_sorted, les_sorted = np.sort(fp_scores), np.sort(lesion_scores)
    n_les = len(lesion_scores)
    fp_per_image = (len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")) / max(n_images, 1)
    found = n_les - np.searchsorted(les_sorted, thresholds, side="left")
    sensitivity = found / n_les if n_les else np.full(len(thresholds), np.nan)
    return thresholds, fp_per_image, sensitivity


def froc_sensitivities(
    lesion_scores: np.ndarray,
    fp_scores: np.ndarray,
    n_images: int,
    rates: Sequence[float] = FROC_RATES,
    min_score: float = EVAL_MIN_SCORE,
) -> dict[float, Optional[float]]:
    """Sensitivity at each FP-per-image rate: the best over thresholds with FP/image <= rate.

    None for every rate when there are no lesions or no images (nothing to measure).
    """
    if len(lesion_scores) == 0 or n_images == 0:
        return {float(r): None for r in rates}
    _, fppi, sens = froc_curve(lesion_scores, fp_scores, n_images, min_score)
    out: dict[float, Optional[float]] = {}
    for rate in rates:
        ok = fppi <= rate + 1e-12
        out[float(rate)] = float(sens[ok].max()) if ok.any() else 0.0
    return out


def calibration_bins(probabilities: np.ndarray, outcomes: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability table on ``n_bins`` equal-width bins of [0, 1], Brier score and ECE.

    A bin holds p in [k/n, (k+1)/n) (the last bin includes 1.0). ECE is the count-weighted
    mean of |observed rate - mean predicted| over non-empty bins.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(outcomes, dtype=bool).astype(np.float64)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1) if p.size else np.zeros(0, dtype=int)
    bins = []
    ece = 0.0
    for k in range(n_bins):
        sel = idx == k
        n = int(sel.sum())
        mean_p = float(p[sel].mean()) if n else None
        observed = float(y[sel].mean()) if n else None
        if n:
            ece += n / len(p) * abs(observed - mean_p)  # type: ignore[operator]
        bins.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "n": n,
                "mean_predicted": mean_p,
                "observed_rate": observed,
            }
        )
    return {
        "n": int(p.size),
        "bins": bins,
        "brier": float(np.mean((p - y) ** 2)) if p.size else None,
        "ece": float(ece) if p.size else None,
    }


# ----------------------------------------------------------------------------- ground truth


@dataclass
class ImageTruth:
    """Ground truth of one image: lesion boxes (stored pixels) and labels, plus its identity.

    ``labels`` are 1 (benign) or 2 (malignant). Patient, study and laterality say which
    breast the image shows (CC and MLO of one side of one study form one breast).
    """

    name: str
    boxes: np.ndarray  # (G, 4) stored [x0, y0, x1, y1]
    labels: np.ndarray  # (G,) 1 benign, 2 malignant
    patient_id: Optional[str] = None
    study_uid: Optional[str] = None
    laterality: Optional[str] = None
    view: Optional[str] = None
    path: Optional[str] = None
    spacing_mm: Optional[float] = None
    #: Things that look like calcifications but are not lesions (skin markers, scratches,
    #: isolated specks...): (type, stored [x0, y0, x1, y1]). A mark on one is a known-bad mark.
    hard_negatives: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    #: Per lesion, text descriptors from the annotation (e.g. BI-RADS ``morphology``,
    #: ``distribution``); empty when the data has none.
    descriptors: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise DatasetError(f"image {self.name!r}: {len(self.boxes)} boxes but {len(self.labels)} labels")
        bad = set(self.labels.tolist()) - {BENIGN, MALIGNANT}
        if bad:
            raise DatasetError(f"image {self.name!r}: labels must be 1 (benign) or 2 (malignant), got {sorted(bad)}")

    @property
    def has_malignant(self) -> bool:
        return bool(np.any(self.labels == MALIGNANT))


def truth_from_coco(coco_json: PathLike) -> list[ImageTruth]:
    """The ground truth of a COCO file (validated by :func:`MicrocalcAI.training.data.parse_coco`)."""
    from MicrocalcAI.training.data import parse_coco

    def text(extra: dict[str, Any], key: str) -> Optional[str]:
        value = extra.get(key)
        return None if value is None or value == "" else str(value)

    out = []
    for entry in parse_coco(coco_json):
        out.append(
            ImageTruth(
                name=entry.path.name.split(".")[0] or str(entry.image_id),
                boxes=entry.boxes_stored,
                labels=entry.labels,
                patient_id=text(entry.extra, "patient_id"),
                study_uid=text(entry.extra, "study_uid"),
                laterality=text(entry.extra, "laterality"),
                view=text(entry.extra, "view"),
                path=str(entry.path),
                spacing_mm=entry.spacing_mm,
                hard_negatives=[
                    (kind, tuple(float(v) for v in box))
                    for kind, box in zip(entry.hard_negative_types, entry.hard_negatives_stored)
                ],
                descriptors=entry.descriptors,
            )
        )
    return out


# ---------------------------------------------------------------------------------- metrics


@dataclass
class _ImageMatch:
    """One image matched against its truth at the operating threshold and over the sweep."""

    gt_labels: np.ndarray  # (G,)
    matched: np.ndarray  # (G,) bool, found by a reported lesion at the operating threshold
    matched_label: list[Optional[str]]  # detector class of the match (None when missed)
    matched_p: np.ndarray  # (G,) p_malignant of the match (nan when missed)
    matched_score: np.ndarray  # (G,) score of the match (nan when missed)
    sweep_score: np.ndarray  # (G,) best score over all available detections (-inf when none)
    fp_scores_all: np.ndarray  # scores of all available detections that find nothing
    n_fp: int  # false positives at the operating threshold
    n_fp_malignant: int  # of which labelled malignant by the detector
    probability: float  # image risk at the operating threshold
    any_malignant_label: bool  # a reported lesion is labelled malignant


def _match_image(truth: ImageTruth, findings: Optional[ImageFindings], threshold: float) -> _ImageMatch:
    lesions: list[Lesion] = list(findings.lesions) if findings is not None else []
    boxes = np.array([les.box_px for les in lesions], dtype=np.float64).reshape(-1, 4)
    scores = np.array([les.score for les in lesions], dtype=np.float64)
    hits = hit_matrix(boxes, truth.boxes)  # (D, G)
    reported = scores >= threshold
    g_count = len(truth.labels)
    matched = np.zeros(g_count, dtype=bool)
    matched_label: list[Optional[str]] = [None] * g_count
    matched_p = np.full(g_count, np.nan)
    matched_score = np.full(g_count, np.nan)
    sweep = np.full(g_count, -np.inf)
    for g in range(g_count):
        finders = np.flatnonzero(hits[:, g])
        if finders.size:
            sweep[g] = float(scores[finders].max())
        finders = finders[reported[finders]]
        if finders.size:
            best = int(finders[np.argmax(scores[finders])])
            matched[g] = True
            matched_label[g] = lesions[best].label
            matched_p[g] = float(lesions[best].p_malignant)
            matched_score[g] = float(scores[best])
    is_fp = ~hits.any(axis=1) if g_count else np.ones(len(lesions), dtype=bool)
    fp_reported = is_fp & reported
    labels = np.array([les.label for les in lesions], dtype=object)
    return _ImageMatch(
        gt_labels=truth.labels,
        matched=matched,
        matched_label=matched_label,
        matched_p=matched_p,
        matched_score=matched_score,
        sweep_score=sweep,
        fp_scores_all=scores[is_fp],
        n_fp=int(fp_reported.sum()),
        n_fp_malignant=int((fp_reported & (labels == "malignant")).sum()) if len(lesions) else 0,
        probability=max((float(les.p_malignant) for les, r in zip(lesions, reported) if r), default=0.0),
        any_malignant_label=bool(any(les.label == "malignant" for les, r in zip(lesions, reported) if r)),
    )


def _confusion(truth_pos: np.ndarray, pred_pos: np.ndarray) -> np.ndarray:
    """[TP, FN, TN, FP] counts."""
    t, p = np.asarray(truth_pos, dtype=bool), np.asarray(pred_pos, dtype=bool)
    return np.array([(t & p).sum(), (t & ~p).sum(), (~t & ~p).sum(), (~t & p).sum()], dtype=np.int64)


def _rates(counts: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, PPV, NPV from [..., 4] counts (nan where undefined)."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fn, tn, fp = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "accuracy": (tp + tn) / (tp + fn + tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
        }


def _ci(values: np.ndarray) -> Optional[list[float]]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def _bootstrap_indices(n_clusters: int, n_bootstrap: int, seed: int, stream: int) -> np.ndarray:
    """(B, n) resampled cluster indices; each level has its own stream so results don't interact."""
    if n_bootstrap <= 0 or n_clusters == 0:
        return np.zeros((0, n_clusters), dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(stream)])
    return rng.integers(0, n_clusters, size=(n_bootstrap, n_clusters))


def _classification_block(
    cluster_counts: np.ndarray, boot: np.ndarray, threshold: Optional[float], rule: str
) -> dict[str, Any]:
    """Counts, rates and their bootstrap CIs; ``cluster_counts`` is (clusters, 4) [TP, FN, TN, FP]."""
    total = cluster_counts.sum(axis=0) if len(cluster_counts) else np.zeros(4, dtype=np.int64)
    point = _rates(total)
    block: dict[str, Any] = {
        "rule": rule,
        "threshold": threshold,
        "tp": int(total[0]),
        "fn": int(total[1]),
        "tn": int(total[2]),
        "fp": int(total[3]),
    }
    boot_rates = _rates(cluster_counts[boot].sum(axis=1)) if len(boot) else None
    for key, value in point.items():
        block[key] = float(value)
        if key in ("sensitivity", "specificity", "accuracy"):
            block[f"{key}_ci95"] = _ci(boot_rates[key]) if boot_rates is not None else None
    return block


def _auc_block(scores: np.ndarray, positive: np.ndarray, members: list[np.ndarray], boot: np.ndarray) -> dict[str, Any]:
    """AUC, its bootstrap CI (clusters resampled: ``members[c]`` are cluster c's rows), ROC points."""
    auc = roc_auc(scores, positive)
    reps = []
    for row in boot:
        idx = np.concatenate([members[c] for c in row]) if len(row) else np.zeros(0, dtype=np.int64)
        reps.append(roc_auc(scores[idx], positive[idx]))
    reps_arr = np.asarray(reps, dtype=np.float64)
    fpr, tpr, thr = roc_curve(scores, positive)
    return {
        "auc": auc,
        "auc_ci95": _ci(reps_arr) if len(boot) else None,
        "n_bootstrap_valid": int(np.isfinite(reps_arr).sum()),
        "n_positive": int(np.asarray(positive, dtype=bool).sum()),
        "n_negative": int((~np.asarray(positive, dtype=bool)).sum()),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()},
    }


def _identity(truth: ImageTruth, findings: Optional[ImageFindings]) -> SimpleNamespace:
    """Patient, study and side of an image: the ground truth's, else what the file said."""

    def pick(attr: str) -> Optional[str]:
        value = getattr(truth, attr)
        if value is None and findings is not None:
            value = getattr(findings, attr)
        return value

    return SimpleNamespace(
        patient_id=pick("patient_id"), study_uid=pick("study_uid"), laterality=pick("laterality"), name=truth.name
    )


def group_breasts(truth: Sequence[ImageTruth], findings: Sequence[Optional[ImageFindings]]) -> list[list[int]]:
    """Image indices of each breast (one side of one study), in order of first appearance.

    Uses :func:`MicrocalcAI.core.findings.risk.breast_key`, the grouping the product reports breast risks
    with, on the ground truth's identity (falling back to the file's): an image with no
    known side, or neither patient nor study, is a breast of its own.
    """
    from MicrocalcAI.core.findings.risk import breast_key

    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for i, (t, f) in enumerate(zip(truth, findings)):
        groups.setdefault(breast_key(_identity(t, f), i), []).append(i)  # type: ignore[arg-type]
    return list(groups.values())


def _cutpoints(spec: Optional[ModelSpec]) -> list[tuple[str, float]]:
    """(name, threshold on p_malignant) of every operating point and risk-category boundary."""
    if spec is None:
        return []
    cuts = [(str(k), float(v)) for k, v in sorted(spec.operating_points.items(), key=lambda kv: kv[1])]
    cats = sorted(spec.risk_categories, key=lambda c: c.min_probability)
    cuts += [(f"risk_category>={c.name}", float(c.min_probability)) for c in cats[1:]]
    return cuts


def _hard_negative_marks(
    truth: Sequence[ImageTruth], findings: Sequence[Optional[ImageFindings]], threshold: float
) -> dict[str, Any]:
    """How many known non-lesions (markers, scratches, isolated specks...) the model marked.

    A hard negative counts as marked when a reported lesion at the operating threshold finds
    it by the lesion matching rule (:func:`hit_matrix`). Each of these marks is a bug to fix,
    so they are reported per type, apart from the overall false-positive rate.
    """
    per_type: dict[str, dict[str, int]] = {}
    for t, f in zip(truth, findings):
        if not t.hard_negatives:
            continue
        kept = [les.box_px for les in (f.lesions if f is not None else []) if les.score >= threshold]
        hits = hit_matrix(np.asarray(kept, dtype=np.float64).reshape(-1, 4), np.array([b for _, b in t.hard_negatives]))
        for j, (kind, _) in enumerate(t.hard_negatives):
            counts = per_type.setdefault(kind, {"n": 0, "marked": 0})
            counts["n"] += 1
            counts["marked"] += int(hits[:, j].any())
    total = sum(c["n"] for c in per_type.values())
    marked = sum(c["marked"] for c in per_type.values())
    return {"n": total, "marked": marked, "marked_fraction": marked / total if total else None, "by_type": per_type}


#: Annotation descriptors broken down in the report (when the data has them).
DESCRIPTOR_KEYS = ("morphology", "distribution")


def _by_descriptor(
    truth: Sequence[ImageTruth], matched: np.ndarray, matched_p: np.ndarray, gt: np.ndarray
) -> dict[str, Any]:
    """Sensitivity and mean p_malignant of the found lesions per descriptor value.

    A pooled sensitivity hides which kinds of lesion are missed (faint amorphous specks, wide
    regional spreads...); this says which, so a model or a simulator can be fixed where it fails.
    """
    per_lesion = [(t.descriptors[j] if j < len(t.descriptors) else {}) for t in truth for j in range(len(t.labels))]
    out: dict[str, Any] = {}
    for key in DESCRIPTOR_KEYS:
        values = sorted({d[key] for d in per_lesion if key in d})
        if not values:
            continue
        block = {}
        for value in values:
            idx = np.array([i for i, d in enumerate(per_lesion) if d.get(key) == value], dtype=int)
            found = matched[idx]
            block[value] = {
                "n": int(len(idx)),
                "malignant": int((gt[idx] == MALIGNANT).sum()),
                "sensitivity": float(found.mean()),
                "mean_p_malignant_found": float(np.nanmean(matched_p[idx][found])) if found.any() else None,
            }
        out[key] = block
    return out


def compute_metrics(
    truth: Sequence[ImageTruth],
    findings: Sequence[Optional[ImageFindings]],
    *,
    spec: Optional[ModelSpec] = None,
    score_threshold: Optional[float] = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    froc_rates: Sequence[float] = FROC_RATES,
    n_calibration_bins: int = 10,
) -> dict[str, Any]:
    """All evaluation metrics from ground truth and findings (``findings[i]`` is image ``i``'s).

    ``findings[i] = None`` means the image could not be analysed: it counts as an image with
    no detection (its lesions missed), never as an image left out. ``spec`` supplies the
    operating points (lesion score threshold, p_malignant thresholds, risk categories);
    ``score_threshold`` overrides its lesion score threshold. Lesions below the threshold in
    the findings are used only by the FROC sweep. Returns a JSON-ready dict (nan -> None).
    """
    if len(truth) != len(findings):
        raise MicrocalcAIError(f"{len(truth)} ground-truth images but {len(findings)} findings")
    present = [f for f in findings if f is not None]
    floor = max((float(f.score_threshold) for f in present), default=0.0)
    wanted = score_threshold if score_threshold is not None else (spec.score_threshold if spec is not None else floor)
    warnings: list[str] = []
    threshold = float(wanted)
    if threshold < floor - 1e-12:
        warnings.append(
            f"findings only hold lesions with score >= {floor:g}; operating threshold {threshold:g} raised to it"
        )
        threshold = floor
    failed = [t.name for t, f in zip(truth, findings) if f is None]
    if failed:
        warnings.append(f"{len(failed)} image(s) without findings counted as 'nothing detected': {failed[:10]}")
    for w in warnings:
        log.warning("%s", w)

    matches = [_match_image(t, f, threshold) for t, f in zip(truth, findings)]
    n_images = len(matches)
    gt = np.concatenate([m.gt_labels for m in matches]) if matches else np.zeros(0, dtype=np.int64)
    is_mal = gt == MALIGNANT
    matched = np.concatenate([m.matched for m in matches]) if matches else np.zeros(0, dtype=bool)
    matched_p = np.concatenate([m.matched_p for m in matches]) if matches else np.zeros(0)
    matched_label = [lab for m in matches for lab in m.matched_label]
    sweep = np.concatenate([m.sweep_score for m in matches]) if matches else np.zeros(0)
    fp_all = np.concatenate([m.fp_scores_all for m in matches]) if matches else np.zeros(0)
    lesion_image = (
        np.concatenate([np.full(len(m.gt_labels), i) for i, m in enumerate(matches)])
        if matches
        else np.zeros(0, dtype=int)
    )
    image_members = [np.flatnonzero(lesion_image == i) for i in range(n_images)]
    n_les = len(gt)
    n_fp = sum(m.n_fp for m in matches)

    boot_images = _bootstrap_indices(n_images, n_bootstrap, seed, 1)

    # ---- detection
    def frac(mask: np.ndarray) -> Optional[float]:
        return float(matched[mask].mean()) if mask.any() else None

    froc_points = froc_sensitivities(sweep, fp_all, n_images, froc_rates, min_score=floor)
    thr, fppi, sens = froc_curve(sweep, fp_all, n_images, floor) if n_les else (np.zeros(0),) * 3
    detection = {
        "lesion_sensitivity": frac(np.ones(n_les, dtype=bool)),
        "malignant_sensitivity": frac(is_mal),
        "benign_sensitivity": frac(~is_mal),
        "lesions_found": int(matched.sum()),
        "lesions_missed": int((~matched).sum()),
        "false_positives": n_fp,
        "fp_per_image": n_fp / n_images if n_images else None,
        "false_malignant_marks_per_image": sum(m.n_fp_malignant for m in matches) / n_images if n_images else None,
        "froc": {
            "min_score": floor,
            "sensitivity_at_fp_per_image": {f"{r:g}": v for r, v in froc_points.items()},
            "curve": {"threshold": thr.tolist(), "fp_per_image": fppi.tolist(), "sensitivity": sens.tolist()},
        },
    }

    detection["hard_negatives"] = _hard_negative_marks(truth, findings, threshold)
    detection["by_descriptor"] = _by_descriptor(truth, matched, matched_p, gt)

    # ---- lesion level: malignant vs not, over ALL GT lesions (missed = predicted not malignant)
    rules: list[tuple[str, Optional[float], np.ndarray]] = [
        (DETECTOR_CLASS, None, np.array([lab == "malignant" for lab in matched_label], dtype=bool)),
    ]
    for name, cut in _cutpoints(spec):
        rules.append((name, cut, matched & (np.nan_to_num(matched_p, nan=-1.0) >= cut)))
    lesion_cls: dict[str, Any] = {}
    for name, cut, pred in rules:
        per_image = (
            np.stack([_confusion(is_mal[idx], pred[idx]) for idx in image_members])
            if n_images
            else np.zeros((0, 4), dtype=np.int64)
        )
        block = _classification_block(per_image, boot_images, cut, "missed lesion = predicted not malignant")
        correct = matched & (pred == is_mal)  # strict: a missed lesion is never correct
        block["strict_accuracy"] = float(correct.mean()) if n_les else float("nan")
        only = matched
        block["matched_only"] = {k: float(v) for k, v in _rates(_confusion(is_mal[only], pred[only])).items()} | {
            "n": int(only.sum()),
            "note": "missed lesions dropped, as in the paper's code: NOT comparable",
        }
        lesion_cls[name] = block
    lesion_auc = _auc_block(
        matched_p[matched],
        is_mal[matched],
        [np.flatnonzero(lesion_image[matched] == i) for i in range(n_images)],
        boot_images,
    )
    lesion_level = {
        "n_lesions": n_les,
        "n_malignant": int(is_mal.sum()),
        "n_benign": int((~is_mal).sum()),
        "n_matched": int(matched.sum()),
        "classification": lesion_cls,
        "auc_benign_vs_malignant_matched": lesion_auc,
        "calibration_p_malignant_matched": calibration_bins(matched_p[matched], is_mal[matched], n_calibration_bins),
        "confusion_3way": {
            truth_name: {
                "missed": int((~matched & (gt == lab)).sum()),
                "benign": int(sum(1 for i in np.flatnonzero(gt == lab) if matched_label[i] == "benign")),
                "malignant": int(sum(1 for i in np.flatnonzero(gt == lab) if matched_label[i] == "malignant")),
            }
            for truth_name, lab in (("benign", BENIGN), ("malignant", MALIGNANT))
        },
    }

    # ---- image and breast level
    image_p = np.array([m.probability for m in matches], dtype=np.float64)
    image_pos = np.array([bool(np.any(m.gt_labels == MALIGNANT)) for m in matches], dtype=bool)
    image_flag = np.array([m.any_malignant_label for m in matches], dtype=bool)
    image_level = _level_block(
        image_p, image_pos, image_flag, [np.array([i]) for i in range(n_images)], spec, boot_images, n_calibration_bins
    )

    breasts = group_breasts(truth, findings)
    breast_p = np.array([image_p[g].max() for g in breasts], dtype=np.float64)
    breast_pos = np.array([image_pos[g].any() for g in breasts], dtype=bool)
    breast_flag = np.array([image_flag[g].any() for g in breasts], dtype=bool)
    boot_breasts = _bootstrap_indices(len(breasts), n_bootstrap, seed, 2)
    breast_level = _level_block(
        breast_p,
        breast_pos,
        breast_flag,
        [np.array([i]) for i in range(len(breasts))],
        spec,
        boot_breasts,
        n_calibration_bins,
    )
    breast_level["n_breasts"] = len(breasts)
    breast_level["n_with_two_or_more_views"] = sum(1 for g in breasts if len(g) >= 2)
    breast_level["combine"] = "max"

    per_image = []
    breast_of = {i: b for b, g in enumerate(breasts) for i in g}
    for i, (t, m) in enumerate(zip(truth, matches)):
        per_image.append(
            {
                "name": t.name,
                "path": t.path,
                "analysed": findings[i] is not None,
                "breast": breast_of[i],
                "n_lesions": len(t.labels),
                "n_malignant": int(np.sum(t.labels == MALIGNANT)),
                "found": int(m.matched.sum()),
                "false_positives": m.n_fp,
                "probability": float(m.probability),
            }
        )
    per_lesion = []
    for k in range(n_les):
        i = int(lesion_image[k])
        g = k - int(image_members[i][0])
        per_lesion.append(
            {
                "image": truth[i].name,
                "index": g,
                "label": "malignant" if gt[k] == MALIGNANT else "benign",
                "box_px": [float(v) for v in truth[i].boxes[g]],
                "found": bool(matched[k]),
                "score": float(matches[i].matched_score[g]) if matched[k] else None,
                "predicted_label": matched_label[k],
                "p_malignant": float(matched_p[k]) if matched[k] else None,
            }
        )

    metrics: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "match_rule": f"IoU >= {MATCH_IOU} or detection centre inside the lesion box; best-scoring finder is the match",
        "score_threshold": threshold,
        "operating_points": dict(spec.operating_points) if spec is not None else {},
        "risk_categories": [{"name": c.name, "min_probability": c.min_probability} for c in spec.risk_categories]
        if spec is not None
        else [],
        "n_images": n_images,
        "n_images_not_analysed": len(failed),
        "images_not_analysed": failed,
        "n_images_malignant": int(image_pos.sum()),
        "n_bootstrap": int(n_bootstrap),
        "bootstrap_seed": int(seed),
        "warnings": warnings,
        "detection": detection,
        "lesion_level": lesion_level,
        "image_level": image_level,
        "breast_level": breast_level,
        "images": per_image,
        "lesions": per_lesion,
    }
    return _json_ready(metrics)


def _level_block(
    p: np.ndarray,
    positive: np.ndarray,
    flagged: np.ndarray,
    members: list[np.ndarray],
    spec: Optional[ModelSpec],
    boot: np.ndarray,
    n_bins: int,
) -> dict[str, Any]:
    """Image- or breast-level numbers: AUC with CI, each operating point, calibration."""

    def unit_counts(pred: np.ndarray) -> np.ndarray:
        if not members:
            return np.zeros((0, 4), dtype=np.int64)
        return np.stack([_confusion(positive[i], pred[i]) for i in members])

    cls = {
        DETECTOR_CLASS: _classification_block(
            unit_counts(flagged), boot, None, "any reported lesion labelled malignant"
        )
    }
    for name, cut in _cutpoints(spec):
        cls[name] = _classification_block(unit_counts(p >= cut), boot, cut, "risk probability >= threshold")
    return {
        "n": len(p),
        "n_positive": int(positive.sum()),
        "auc": _auc_block(p, positive, members, boot),
        "classification": cls,
        "calibration": calibration_bins(p, positive, n_bins),
    }


def _json_ready(value: Any) -> Any:
    """Plain JSON types; nan and inf become None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_ready(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


# ------------------------------------------------------------------------------ the dataset run


@dataclass
class EvaluationReport:
    """Everything one evaluation produced: the metrics and where they came from."""

    dataset: str
    model: dict[str, Any]
    metrics: dict[str, Any]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)
    elapsed_s: float = 0.0
    seconds_per_image: Optional[float] = None
    findings_source: str = "pipeline"  # "pipeline" or the findings folder
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return _json_ready(
            {
                "dataset": self.dataset,
                "model": self.model,
                "findings_source": self.findings_source,
                "elapsed_s": round(self.elapsed_s, 2),
                "seconds_per_image": self.seconds_per_image,
                "failed": [{"path": p, "reason": r} for p, r in self.failed],
                **self.metrics,
            }
        )

    def summary(self) -> str:
        """A few lines for a terminal: the paper's headline figures and the curves' summaries."""
        m = self.metrics
        det, les = m["detection"], m["lesion_level"]
        cls = les["classification"][DETECTOR_CLASS]

        def f(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        def ci(block: dict[str, Any], key: str) -> str:
            c = block.get(key)
            return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""

        lines = [
            (
                f"{m['n_images']} images, {les['n_lesions']} lesions ({les['n_malignant']} malignant); "
                f"threshold {m['score_threshold']:.2f}; {m['n_images_not_analysed']} not analysed"
            ),
            f"detection: sensitivity {f(det['lesion_sensitivity'])}, {f(det['fp_per_image'])} FP/image; FROC "
            + ", ".join(f"{k}:{f(v)}" for k, v in det["froc"]["sensitivity_at_fp_per_image"].items()),
            (
                f"lesion (malignant, missed = negative): accuracy {f(cls['accuracy'])}, sensitivity "
                f"{f(cls['sensitivity'])}{ci(cls, 'sensitivity_ci95')}, specificity {f(cls['specificity'])}; "
                f"AUC (matched) {f(les['auc_benign_vs_malignant_matched']['auc'])}"
                f"{ci(les['auc_benign_vs_malignant_matched'], 'auc_ci95')}"
            ),
        ]
        hard = det.get("hard_negatives") or {}
        if hard.get("n"):
            lines.append(
                f"hard negatives marked: {hard['marked']}/{hard['n']} ("
                + ", ".join(f"{k} {v['marked']}/{v['n']}" for k, v in sorted(hard["by_type"].items()))
                + ")"
            )
        for key, block in (det.get("by_descriptor") or {}).items():
            lines.append(
                f"sensitivity by {key}: "
                + ", ".join(f"{k} {f(v['sensitivity'])} (n={v['n']})" for k, v in block.items())
            )
        for level in ("image_level", "breast_level"):
            block = m[level]
            lines.append(
                f"{level.replace('_', ' ')}: AUC {f(block['auc']['auc'])}{ci(block['auc'], 'auc_ci95')}; "
                + "; ".join(
                    f"{name}: acc {f(c['accuracy'])} sens {f(c['sensitivity'])} spec {f(c['specificity'])}"
                    for name, c in block["classification"].items()
                )
            )
        return "\n".join(lines)


def _findings_index(findings_dir: Path) -> tuple[dict[str, ImageFindings], dict[str, ImageFindings]]:
    """Findings JSON files of a ``microcalcai detect`` folder, by resolved source path and by name."""
    from MicrocalcAI.core.outputs.findings_json import load_image_json

    by_source: dict[str, ImageFindings] = {}
    by_name: dict[str, ImageFindings] = {}
    for path in sorted(findings_dir.glob("*.json")):
        if path.name == METRICS_FILE:
            continue
        try:
            f = load_image_json(path)
        except MicrocalcAIError as exc:
            log.debug("not a findings file, ignored: %s (%s)", path, exc)
            continue
        if f.source:
            by_source[str(Path(f.source).resolve())] = f
        by_name[f.name] = f
    return by_source, by_name


def _resolve_spec(model: Optional[str], findings: Sequence[Optional[ImageFindings]]) -> ModelSpec:
    """The model whose operating points apply: ``model``, else the one named in the findings."""
    from MicrocalcAI.core.detect.manifest import resolve_model

    named = next((f.model for f in findings if f is not None), None)
    if model is None and named is not None:
        try:
            spec = resolve_model(named.name)
        except MicrocalcAIError:
            log.warning(
                "model %r of the findings is not in the bundled manifest: default operating points used", named.name
            )
            spec = resolve_model(None)
    else:
        spec = resolve_model(model)
    shas = {f.model.sha256 for f in findings if f is not None}
    if shas and shas != {spec.sha256}:
        log.warning(
            "findings were made by weights %s, evaluated with the operating points of %s (%s)",
            sorted(s[:12] for s in shas),
            spec.name,
            spec.sha256[:12],
        )
    return spec


def evaluate_dataset(
    coco_json: PathLike,
    out_dir: PathLike,
    *,
    model: Optional[str] = None,
    device: Optional[str] = "auto",
    progress: Optional[ProgressCallback] = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    findings_dir: Optional[PathLike] = None,
) -> EvaluationReport:
    """Evaluate a model on a COCO dataset and write ``metrics.json`` and plots into ``out_dir``.

    Without ``findings_dir`` every image goes through the real pipeline (read, standardise,
    tiled detect, findings) with one :class:`MicrocalcAI.core.pipeline.Analyzer`, keeping lesions
    down to score :data:`EVAL_MIN_SCORE` so the FROC sweep covers the low-threshold end; the
    per-image findings are also written to ``out_dir/findings/`` (reusable with
    ``findings_dir``). With ``findings_dir`` the JSON files written by ``microcalcai detect``
    are used (matched by source path, else by file stem); the FROC then starts at their
    threshold. Images that cannot be analysed or have no findings count as "nothing
    detected" and are listed in the report.
    """
    from MicrocalcAI.core.batch import output_names
    from MicrocalcAI.core.outputs.findings_json import write_image_json
    from MicrocalcAI.core.pipeline import Analyzer
    from MicrocalcAI.core.read import read_mammogram
    from MicrocalcAI.training.data import parse_coco

    progress = progress or no_progress
    started = time.monotonic()
    out = Path(out_dir)
    truth = truth_from_coco(coco_json)
    entries = parse_coco(coco_json)
    findings: list[Optional[ImageFindings]] = [None] * len(truth)
    failed: list[tuple[str, str]] = []
    analyse_s: Optional[float] = None

    if findings_dir is not None:
        folder = Path(findings_dir)
        if not folder.is_dir():
            raise DatasetError(f"findings folder not found: {folder}")
        by_source, by_name = _findings_index(folder)
        for i, (t, entry) in enumerate(zip(truth, entries)):
            f = by_source.get(str(entry.path.resolve())) or by_name.get(t.name)
            if f is None:
                failed.append((str(entry.path), f"no findings file in {folder}"))
                log.warning("%s: no findings in %s; counted as nothing detected", entry.path.name, folder)
            findings[i] = f
        spec = _resolve_spec(model, findings)
        source = str(folder)
    else:
        progress(0.0, "loading model")
        probe = _resolve_spec(model, [])
        analyzer = Analyzer(model, device, score_threshold=min(EVAL_MIN_SCORE, probe.score_threshold))
        spec = analyzer.spec
        names = output_names([e.path for e in entries])
        n = max(len(entries), 1)
        t0 = time.monotonic()
        for i, (entry, name) in enumerate(zip(entries, names)):
            prefix = f"[{i + 1}/{len(entries)}] {entry.path.name}: "
            progress(0.02 + 0.93 * i / n, f"{prefix}analysing")
            try:
                mammogram = read_mammogram(entry.path)
                if mammogram.spacing_mm is None and entry.spacing_mm is not None:
                    # As a user's --spacing would: only where the file itself has none.
                    mammogram.spacing_mm = (entry.spacing_mm, entry.spacing_mm)
                    mammogram.spacing_source = "user"
                f = analyzer.analyse(mammogram, name=name)
                findings[i] = f
                write_image_json(f, out / "findings")
            except CancelledError:
                raise
            except MicrocalcAIError as exc:
                log.error("%s: %s; counted as nothing detected", entry.path, exc)
                failed.append((str(entry.path), str(exc)))
        analyse_s = (time.monotonic() - t0) / len(entries) if entries else None
        source = "pipeline"

    progress(0.96, "computing metrics")
    metrics = compute_metrics(truth, findings, spec=spec, n_bootstrap=n_bootstrap, seed=seed)
    report = EvaluationReport(
        dataset=str(coco_json),
        model={"name": spec.name, "version": spec.version, "sha256": spec.sha256, "backbone": spec.backbone},
        metrics=metrics,
        failed=failed,
        elapsed_s=time.monotonic() - started,
        seconds_per_image=analyse_s,
        findings_source=source,
    )
    progress(0.98, "writing report")
    report.files = write_report(report, out)
    progress(1.0, f"evaluation written to {out}")
    log.info("evaluated %d images in %.1f s", len(truth), report.elapsed_s)
    return report


# ------------------------------------------------------------------------------------ report


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas, without pyplot (no global backend, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _auc_label(name: str, block: dict[str, Any]) -> str:
    auc, ci = block.get("auc"), block.get("auc_ci95")
    text = f"{name}: AUC {auc:.3f}" if auc is not None else f"{name}: AUC n/a"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text + f" (n+={block['n_positive']}, n-={block['n_negative']})"


def plot_roc(metrics: dict[str, Any]) -> bytes:
    """ROC curves: lesion benign-vs-malignant (matched lesions), image and breast risk."""
    fig = _figure(6.0, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, block, colour in (
        ("lesion (matched)", metrics["lesion_level"]["auc_benign_vs_malignant_matched"], "tab:purple"),
        ("image", metrics["image_level"]["auc"], "tab:blue"),
        ("breast", metrics["breast_level"]["auc"], "tab:orange"),
    ):
        roc = block["roc"]
        if block.get("auc") is None:
            continue
        ax.plot(roc["fpr"], roc["tpr"], color=colour, linewidth=1.8, label=_auc_label(name, block))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (malignant)")
    ax.set_title(f"ROC, 95% CI by bootstrap (n={metrics['n_bootstrap']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_froc(metrics: dict[str, Any]) -> bytes:
    """FROC: lesion sensitivity against false positives per image (log scale), table points marked."""
    fig = _figure(6.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    froc = metrics["detection"]["froc"]
    curve = froc["curve"]
    x = np.asarray(curve["fp_per_image"], dtype=np.float64)
    y = np.asarray([v if v is not None else np.nan for v in curve["sensitivity"]], dtype=np.float64)
    order = np.lexsort((y, x))
    floor_x = 1 / 16
    ax.step(np.maximum(x[order], floor_x), y[order], where="post", color="tab:blue", linewidth=1.8, label="all lesions")
    pts = {float(k): v for k, v in froc["sensitivity_at_fp_per_image"].items() if v is not None}
    if pts:
        ax.plot(list(pts), list(pts.values()), "o", color="tab:red", label="sensitivity at 1/8 ... 8 FP/image")
        for r, v in pts.items():
            ax.annotate(f"{v:.2f}", (r, v), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7)
    ax.axvline(
        max(metrics["detection"]["fp_per_image"] or floor_x, floor_x),
        color="0.5",
        linestyle=":",
        label=f"operating point (score >= {metrics['score_threshold']:.2f})",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlim(floor_x, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(
        f"FROC ({metrics['n_images']} images, {metrics['lesion_level']['n_lesions']} lesions; "
        f"scores >= {froc['min_score']:.2f})",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _png(fig)


def plot_calibration(metrics: dict[str, Any]) -> bytes:
    """Reliability diagrams: p_malignant of matched lesions, image risk, breast risk."""
    fig = _figure(10.5, 3.9)
    panels = (
        ("lesion p_malignant (matched)", metrics["lesion_level"]["calibration_p_malignant_matched"]),
        ("image risk", metrics["image_level"]["calibration"]),
        ("breast risk", metrics["breast_level"]["calibration"]),
    )
    for k, (title, cal) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        bins = [b for b in cal["bins"] if b["n"]]
        if bins:
            xs = [b["mean_predicted"] for b in bins]
            ys = [b["observed_rate"] for b in bins]
            sizes = [20 + 180 * b["n"] / max(cal["n"], 1) for b in bins]
            ax.plot(xs, ys, color="tab:blue", linewidth=1)
            ax.scatter(xs, ys, s=sizes, color="tab:blue", zorder=3)
        brier = "n/a" if cal["brier"] is None else f"{cal['brier']:.3f}"
        ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
        ax.set_title(f"{title}\nn={cal['n']}, Brier {brier}, ECE {ece}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("predicted probability")
        if k == 0:
            ax.set_ylabel("observed fraction malignant")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


PLOTTERS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "roc.png": plot_roc,
    "froc.png": plot_froc,
    "calibration.png": plot_calibration,
}


def write_report(report: EvaluationReport, out_dir: PathLike) -> list[Path]:
    """Write ``metrics.json``, ``roc.png``, ``froc.png`` and ``calibration.png`` atomically."""
    out = Path(out_dir)
    text = json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n"
    written = [atomic_write_text(out / METRICS_FILE, text)]
    for name, plot in PLOTTERS.items():
        written.append(atomic_write_bytes(out / name, plot(report.metrics)))
    return written
