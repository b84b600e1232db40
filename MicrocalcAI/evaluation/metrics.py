"""Metrics: the paper's figures and the threshold-free summaries, from matched images.

:func:`compute_metrics` is pure (ground truth + :class:`~MicrocalcAI.core.records.ImageFindings`
in, a JSON-ready dict out) so every number can be checked on hand-built cases without a
model. It is assembled from one function per level: :func:`detection_metrics` (sensitivity,
false positives, FROC), :func:`lesion_level_metrics` (malignant vs not over *all* GT lesions,
a missed lesion counting as "predicted not malignant"), :func:`unit_level_metrics` (image and
breast risk), and the per-image / per-lesion tables. Training's validation uses
:func:`validation_summary`, built from the same functions, so a checkpoint is selected by the
numbers ``microcalcai evaluate`` would report.

Confidence intervals are percentile bootstrap intervals over *clusters* (images for the
detection, lesion and image levels, breasts for the breast level): one set of resampled
cluster indices per level is shared by every statistic of that level, and resamples on which a
statistic is undefined (an AUC drawn without both classes) are left out and counted
(``n_bootstrap_valid``). :func:`scipy.stats.bootstrap` draws the same indices from the same
generator and gives the same percentile interval when no resample is undefined (a test pins
this), but it resamples one statistic at a time, turns the whole interval into nan when one
resample is undefined, and refuses a single cluster, so the resampling is done here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.boxes import MATCH_RULE, hit_matrix
from MicrocalcAI.core.detect.manifest import ModelSpec
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.risk import mark_risks
from MicrocalcAI.core.records import ImageFindings
from MicrocalcAI.datasets.coco import BENIGN, MALIGNANT
from MicrocalcAI.evaluation.curves import (
    EVAL_MIN_SCORE,
    FROC_RATES,
    calibration_bins,
    froc_curve,
    froc_sensitivities,
    roc_auc,
    roc_curve,
)
from MicrocalcAI.evaluation.matching import ImageMatch, ImageTruth, group_breasts, hard_negative_marks, match_image

__all__ = [
    "DESCRIPTOR_KEYS",
    "DETECTOR_CLASS",
    "REPORT_SCHEMA",
    "PooledLesions",
    "UnitScores",
    "bootstrap_indices",
    "calibration_metrics",
    "compute_metrics",
    "detection_metrics",
    "json_ready",
    "lesion_level_metrics",
    "lesion_table",
    "image_table",
    "operating_threshold",
    "percentile_ci",
    "pool_lesions",
    "unit_level_metrics",
    "validation_summary",
]

log = logging.getLogger(__name__)

#: Name of the classification rule "the detector's own class" (argmax benign/malignant).
DETECTOR_CLASS = "detector_class"
#: 2 (2026-12-03): the image score is the risk ``detect`` reports (highest score * p_malignant),
#: no longer the highest p_malignant; risk-category rows cut that risk. Later the same day, with
#: fields added only (so the same schema): ``detection_auc`` at image and breast level and each
#: image's ``detection_score``.
REPORT_SCHEMA = "microcalcai-evaluation-2"


def _confusion(truth_pos: np.ndarray, pred_pos: np.ndarray) -> np.ndarray:
    """[TP, FN, TN, FP] counts."""
    t, p = np.asarray(truth_pos, dtype=bool), np.asarray(pred_pos, dtype=bool)
    return np.array([(t & p).sum(), (t & ~p).sum(), (~t & ~p).sum(), (~t & p).sum()], dtype=np.int64)


def _rates(counts: np.ndarray) -> dict[str, Any]:
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


def percentile_ci(values: np.ndarray) -> Optional[list[float]]:
    """2.5 and 97.5 percentiles (numpy's linear rule) of the finite bootstrap values; None if none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def bootstrap_indices(n_clusters: int, n_bootstrap: int, seed: int, stream: int) -> np.ndarray:
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
            block[f"{key}_ci95"] = percentile_ci(boot_rates[key]) if boot_rates is not None else None
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
        "auc_ci95": percentile_ci(reps_arr) if len(boot) else None,
        "n_bootstrap_valid": int(np.isfinite(reps_arr).sum()),
        "n_positive": int(np.asarray(positive, dtype=bool).sum()),
        "n_negative": int((~np.asarray(positive, dtype=bool)).sum()),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()},
    }


@dataclass(frozen=True, eq=False)  # arrays: no elementwise == or hash
class UnitScores:
    """Per image, or per breast, what the image- and breast-level figures are computed from:
    the one place that says what makes a unit positive and how a breast combines its images."""

    risk: np.ndarray  # the risk ``detect`` reports (highest score * p_malignant reported)
    malignant: np.ndarray  # truth: holds a malignant GT lesion
    flagged: np.ndarray  # a reported lesion is labelled malignant
    lesion_p: np.ndarray  # highest p_malignant of a reported lesion
    #: Highest detection score at or above the evaluation floor (0.0 without): the evidence of
    #: holding a lesion of any class (``ImageMatch.detection_score``).
    detection: np.ndarray
    holds_lesion: np.ndarray  # truth: holds a GT lesion of any class

    @classmethod
    def of_images(cls, matches: Sequence[ImageMatch], floor: float) -> UnitScores:
        """One row per image. ``floor``: the lowest score every image's findings hold (the FROC
        sweep's), so that no image is scored from marks another image's findings could not hold."""
        detection = np.array([m.detection_score for m in matches], dtype=np.float64)
        return cls(
            risk=np.array([m.probability for m in matches], dtype=np.float64),
            malignant=np.array([bool(np.any(m.gt_labels == MALIGNANT)) for m in matches], dtype=bool),
            flagged=np.array([m.any_malignant_label for m in matches], dtype=bool),
            lesion_p=np.array([m.max_p_malignant for m in matches], dtype=np.float64),
            detection=np.where(detection >= floor, detection, 0.0),
            holds_lesion=np.array([len(m.gt_labels) > 0 for m in matches], dtype=bool),
        )

    def of_breasts(self, breasts: Sequence[Sequence[int]]) -> UnitScores:
        """One row per breast (``breasts``: image indices): the highest of its images' scores,
        positive when any image is (the product's ``combine="max"``)."""

        def highest(values: np.ndarray) -> np.ndarray:
            return np.array([values[list(g)].max() for g in breasts], dtype=values.dtype)

        return UnitScores(*(highest(getattr(self, f.name)) for f in fields(self)))


def _detection_auc_block(units: UnitScores, members: list[np.ndarray], boot: np.ndarray) -> dict[str, Any]:
    """AUC of "holds a calcification lesion" (any class) against "holds none", scored by the
    highest detection score.

    Why beside the risk's AUC: the risk is the probability of a *malignant* cluster, so it is
    the right score for malignant vs the rest, but it ranks a found benign cluster (score 0.6,
    p_malignant 0.4: 0.24) below a normal image's faint false mark called malignant (0.5, 0.9:
    0.45). Whether the detector tells images with calcifications from normal ones is a question
    about its scores alone (docs/evaluation.md).
    """
    return {
        "truth": "holds a GT lesion of any class",
        "score": "highest detection score, any class, at or above the evaluation floor",
        **_auc_block(units.detection, units.holds_lesion, members, boot),
    }


def _cutpoints(spec: Optional[ModelSpec]) -> list[tuple[str, float, bool]]:
    """(name, threshold, is a risk-category boundary) of every operating point (a cut on a
    lesion's p_malignant) and risk-category boundary (a cut on the image risk)."""
    if spec is None:
        return []
    cuts = [(str(k), float(v), False) for k, v in sorted(spec.operating_points.items(), key=lambda kv: kv[1])]
    cats = sorted(spec.risk_categories, key=lambda c: c.min_probability)
    cuts += [(f"risk_category>={c.name}", float(c.min_probability), True) for c in cats[1:]]
    return cuts


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


@dataclass
class PooledLesions:
    """All images' matches laid end to end: one row per GT lesion."""

    gt: np.ndarray  # (L,) label ids
    is_malignant: np.ndarray  # (L,) bool
    matched: np.ndarray  # (L,) bool at the operating threshold
    matched_p: np.ndarray  # (L,) p_malignant of the match, nan when missed
    matched_score: np.ndarray  # (L,) score of the match, nan when missed
    matched_label: list[Optional[str]]  # detector class of the match, None when missed
    sweep: np.ndarray  # (L,) best score of any finder, -inf when none
    fp_scores: np.ndarray  # scores of every detection that finds nothing
    image_of: np.ndarray  # (L,) index of the lesion's image
    members: list[np.ndarray]  # per image: its rows
    n_images: int
    n_fp: int  # false positives at the operating threshold

    @property
    def n(self) -> int:
        return len(self.gt)


def pool_lesions(matches: Sequence[ImageMatch]) -> PooledLesions:
    """Concatenate per-image matches into per-lesion arrays."""
    n_images = len(matches)
    if not matches:
        empty = np.zeros(0)
        return PooledLesions(
            np.zeros(0, dtype=np.int64), empty.astype(bool), empty.astype(bool), empty, empty, [], empty, empty,
            np.zeros(0, dtype=int), [], 0, 0,
        )  # fmt: skip
    gt = np.concatenate([m.gt_labels for m in matches])
    image_of = np.concatenate([np.full(len(m.gt_labels), i) for i, m in enumerate(matches)])
    return PooledLesions(
        gt=gt,
        is_malignant=gt == MALIGNANT,
        matched=np.concatenate([m.matched for m in matches]),
        matched_p=np.concatenate([m.matched_p for m in matches]),
        matched_score=np.concatenate([m.matched_score for m in matches]),
        matched_label=[lab for m in matches for lab in m.matched_label],
        sweep=np.concatenate([m.sweep_score for m in matches]),
        fp_scores=np.concatenate([m.fp_scores_all for m in matches]),
        image_of=image_of,
        members=[np.flatnonzero(image_of == i) for i in range(n_images)],
        n_images=n_images,
        n_fp=sum(m.n_fp for m in matches),
    )


def detection_metrics(
    pooled: PooledLesions,
    matches: Sequence[ImageMatch],
    floor: float,
    froc_rates: Sequence[float] = FROC_RATES,
) -> dict[str, Any]:
    """Lesion sensitivity, false positives per image and the FROC from ``floor`` up."""
    matched, n_images, n_les = pooled.matched, pooled.n_images, pooled.n

    def frac(mask: np.ndarray) -> Optional[float]:
        return float(matched[mask].mean()) if mask.any() else None

    froc_points = froc_sensitivities(pooled.sweep, pooled.fp_scores, n_images, froc_rates, min_score=floor)
    thr, fppi, sens = froc_curve(pooled.sweep, pooled.fp_scores, n_images, floor) if n_les else (np.zeros(0),) * 3
    return {
        "lesion_sensitivity": frac(np.ones(n_les, dtype=bool)),
        "malignant_sensitivity": frac(pooled.is_malignant),
        "benign_sensitivity": frac(~pooled.is_malignant),
        "lesions_found": int(matched.sum()),
        "lesions_missed": int((~matched).sum()),
        "false_positives": pooled.n_fp,
        "fp_per_image": pooled.n_fp / n_images if n_images else None,
        "false_malignant_marks_per_image": sum(m.n_fp_malignant for m in matches) / n_images if n_images else None,
        "froc": {
            "min_score": floor,
            "sensitivity_at_fp_per_image": {f"{r:g}": v for r, v in froc_points.items()},
            "curve": {"threshold": thr.tolist(), "fp_per_image": fppi.tolist(), "sensitivity": sens.tolist()},
        },
    }


def _lesion_rules(pooled: PooledLesions, spec: Optional[ModelSpec]) -> list[tuple[str, Optional[float], np.ndarray]]:
    """(name, cut, predicted malignant per lesion) of each classification rule: an operating
    point cuts the match's p_malignant, a risk boundary the match's share of the image risk
    (``score * p_malignant``, :func:`~MicrocalcAI.core.findings.risk.mark_risks`)."""
    matched = pooled.matched
    p_mal = np.nan_to_num(pooled.matched_p, nan=-1.0)
    risk = np.where(matched, mark_risks(np.nan_to_num(pooled.matched_score), np.nan_to_num(pooled.matched_p)), -1.0)
    rules: list[tuple[str, Optional[float], np.ndarray]] = [
        (DETECTOR_CLASS, None, np.array([lab == "malignant" for lab in pooled.matched_label], dtype=bool)),
    ]
    for name, cut, on_risk in _cutpoints(spec):
        rules.append((name, cut, matched & ((risk if on_risk else p_mal) >= cut)))
    return rules


def lesion_level_metrics(
    pooled: PooledLesions, spec: Optional[ModelSpec], boot_images: np.ndarray, n_calibration_bins: int
) -> dict[str, Any]:
    """Malignant vs not over ALL GT lesions (missed = predicted not malignant), AUC on matched."""
    matched, is_mal, gt, n_les = pooled.matched, pooled.is_malignant, pooled.gt, pooled.n
    lesion_cls: dict[str, Any] = {}
    for name, cut, pred in _lesion_rules(pooled, spec):
        per_image = (
            np.stack([_confusion(is_mal[idx], pred[idx]) for idx in pooled.members])
            if pooled.n_images
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
        pooled.matched_p[matched],
        is_mal[matched],
        [np.flatnonzero(pooled.image_of[matched] == i) for i in range(pooled.n_images)],
        boot_images,
    )
    return {
        "n_lesions": n_les,
        "n_malignant": int(is_mal.sum()),
        "n_benign": int((~is_mal).sum()),
        "n_matched": int(matched.sum()),
        "classification": lesion_cls,
        "auc_benign_vs_malignant_matched": lesion_auc,
        "calibration_p_malignant_matched": calibration_bins(
            pooled.matched_p[matched], is_mal[matched], n_calibration_bins
        ),
        "confusion_3way": {
            truth_name: {
                "missed": int((~matched & (gt == lab)).sum()),
                "benign": int(sum(1 for i in np.flatnonzero(gt == lab) if pooled.matched_label[i] == "benign")),
                "malignant": int(sum(1 for i in np.flatnonzero(gt == lab) if pooled.matched_label[i] == "malignant")),
            }
            for truth_name, lab in (("benign", BENIGN), ("malignant", MALIGNANT))
        },
    }


def unit_level_metrics(
    units: UnitScores,
    spec: Optional[ModelSpec],
    boot: np.ndarray,
    n_bins: int,
) -> dict[str, Any]:
    """Image- or breast-level numbers: AUC with CI (malignant vs the rest, by the risk), each
    operating point, calibration, and the lesion-vs-none AUC of the detection score.

    The bootstrap resamples units (one each). An operating point is a cut on a lesion's
    p_malignant, so a unit is positive under it when one of its reported lesions reaches it; a
    risk-category boundary is a cut on the unit's risk.
    """
    p, positive, flagged, lesion_p = units.risk, units.malignant, units.flagged, units.lesion_p
    members = [np.array([i]) for i in range(len(p))]

    def unit_counts(pred: np.ndarray) -> np.ndarray:
        if not members:
            return np.zeros((0, 4), dtype=np.int64)
        return np.stack([_confusion(positive[i], pred[i]) for i in members])

    cls = {
        DETECTOR_CLASS: _classification_block(
            unit_counts(flagged), boot, None, "any reported lesion labelled malignant"
        )
    }
    for name, cut, on_risk in _cutpoints(spec):
        if on_risk:
            cls[name] = _classification_block(unit_counts(p >= cut), boot, cut, "risk probability >= threshold")
        else:
            rule = "a reported lesion with p_malignant >= threshold"
            cls[name] = _classification_block(unit_counts(lesion_p >= cut), boot, cut, rule)
    return {
        "n": len(p),
        "n_positive": int(positive.sum()),
        "auc": _auc_block(p, positive, members, boot),
        "classification": cls,
        "calibration": calibration_bins(p, positive, n_bins),
        "detection_auc": _detection_auc_block(units, members, boot),
    }


def lesion_score_outcomes(
    truth: Sequence[ImageTruth], findings: Sequence[Optional[ImageFindings]]
) -> tuple[np.ndarray, np.ndarray]:
    """(score, finds a GT lesion) of every lesion the findings hold, down to their own floor:
    the data of the lesion-score reliability diagram (a true mark vs a false positive)."""
    scores, true = [], []
    for t, f in zip(truth, findings):
        lesions = list(f.lesions) if f is not None else []
        if not lesions:
            continue
        boxes = np.array([les.box_px for les in lesions], dtype=np.float64).reshape(-1, 4)
        hits = hit_matrix(boxes, t.boxes)
        scores.append(np.array([les.score for les in lesions], dtype=np.float64))
        true.append(hits.any(axis=1) if hits.size else np.zeros(len(lesions), dtype=bool))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(true)


def calibration_metrics(
    truth: Sequence[ImageTruth],
    findings: Sequence[Optional[ImageFindings]],
    pooled: PooledLesions,
    spec: Optional[ModelSpec],
    n_bins: int,
) -> dict[str, Any]:
    """Reliability before and after the model's calibration, for p_malignant and lesion score.

    The findings hold calibrated values (detection applies ``spec.calibration``); the raw
    values are recovered by inverting it. Without a calibration both sides are the same
    numbers. p_malignant: the matched GT lesions (outcome: malignant); lesion score: every
    lesion in the findings down to their floor (outcome: it finds a GT lesion).
    """
    cal = spec.calibration if spec is not None else None
    p = pooled.matched_p[pooled.matched]
    is_mal = pooled.is_malignant[pooled.matched]
    scores, true = lesion_score_outcomes(truth, findings)
    raw_p = cal.raw_p_malignant(p) if cal is not None else p
    raw_scores = cal.raw_score(scores) if cal is not None else scores
    return {
        "model_calibration": cal.to_json() if cal is not None else None,
        "note": "raw = the network's values (the stored calibration inverted); calibrated = what users see"
        if cal is not None
        else "the model has no calibration: raw and calibrated are the same values",
        "p_malignant_matched": {
            "raw": calibration_bins(raw_p, is_mal, n_bins),
            "calibrated": calibration_bins(p, is_mal, n_bins),
        },
        "lesion_score": {
            "n_true": int(true.sum()),
            "raw": calibration_bins(raw_scores, true, n_bins),
            "calibrated": calibration_bins(scores, true, n_bins),
        },
    }


def image_table(
    truth: Sequence[ImageTruth],
    findings: Sequence[Optional[ImageFindings]],
    matches: Sequence[ImageMatch],
    breasts: Sequence[Sequence[int]],
    detection: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per image: what it holds, what was found, its risk, its detection score and its breast."""
    breast_of = {i: b for b, g in enumerate(breasts) for i in g}
    return [
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
            "detection_score": float(detection[i]),
        }
        for i, (t, m) in enumerate(zip(truth, matches))
    ]


def lesion_table(
    truth: Sequence[ImageTruth], matches: Sequence[ImageMatch], pooled: PooledLesions
) -> list[dict[str, Any]]:
    """One row per GT lesion: its box and class, and what (if anything) found it."""
    rows = []
    for k in range(pooled.n):
        i = int(pooled.image_of[k])
        g = k - int(pooled.members[i][0])
        found = bool(pooled.matched[k])
        rows.append(
            {
                "image": truth[i].name,
                "index": g,
                "label": "malignant" if pooled.gt[k] == MALIGNANT else "benign",
                "box_px": [float(v) for v in truth[i].boxes[g]],
                "found": found,
                "score": float(matches[i].matched_score[g]) if found else None,
                "predicted_label": pooled.matched_label[k],
                "p_malignant": float(pooled.matched_p[k]) if found else None,
            }
        )
    return rows


def operating_threshold(
    findings: Sequence[Optional[ImageFindings]], spec: Optional[ModelSpec], score_threshold: Optional[float]
) -> tuple[float, float, list[str]]:
    """(operating threshold, lowest score the findings hold, warnings).

    The threshold is ``score_threshold``, else the model's; it is raised to the findings'
    own floor when lower (lesions below it were never written, so they cannot be counted).
    """
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
    return threshold, floor, warnings


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
    the findings are used only by the FROC sweep and the detection score. Returns a JSON-ready dict (nan -> None).
    """
    if len(truth) != len(findings):
        raise MicrocalcAIError(f"{len(truth)} ground-truth images but {len(findings)} findings")
    threshold, floor, warnings = operating_threshold(findings, spec, score_threshold)
    failed = [t.name for t, f in zip(truth, findings) if f is None]
    if failed:
        warnings.append(f"{len(failed)} image(s) without findings counted as 'nothing detected': {failed[:10]}")
    for w in warnings:
        log.warning("%s", w)

    matches = [match_image(t, f, threshold) for t, f in zip(truth, findings)]
    pooled = pool_lesions(matches)
    n_images = len(matches)
    boot_images = bootstrap_indices(n_images, n_bootstrap, seed, 1)

    detection = detection_metrics(pooled, matches, floor, froc_rates)
    detection["hard_negatives"] = hard_negative_marks(truth, findings, threshold)
    detection["by_descriptor"] = _by_descriptor(truth, pooled.matched, pooled.matched_p, pooled.gt)
    lesion_level = lesion_level_metrics(pooled, spec, boot_images, n_calibration_bins)

    images = UnitScores.of_images(matches, floor)
    image_level = unit_level_metrics(images, spec, boot_images, n_calibration_bins)

    breasts = group_breasts(truth, findings)
    boot_breasts = bootstrap_indices(len(breasts), n_bootstrap, seed, 2)
    breast_level = unit_level_metrics(images.of_breasts(breasts), spec, boot_breasts, n_calibration_bins)
    breast_level["n_breasts"] = len(breasts)
    breast_level["n_with_two_or_more_views"] = sum(1 for g in breasts if len(g) >= 2)
    breast_level["combine"] = "max"

    metrics: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "match_rule": f"{MATCH_RULE}; best-scoring finder is the match",
        "score_threshold": threshold,
        "operating_points": dict(spec.operating_points) if spec is not None else {},
        "risk_categories": [{"name": c.name, "min_probability": c.min_probability} for c in spec.risk_categories]
        if spec is not None
        else [],
        "n_images": n_images,
        "n_images_not_analysed": len(failed),
        "images_not_analysed": failed,
        "n_images_malignant": int(images.malignant.sum()),
        "n_bootstrap": int(n_bootstrap),
        "bootstrap_seed": int(seed),
        "warnings": warnings,
        "detection": detection,
        "lesion_level": lesion_level,
        "image_level": image_level,
        "breast_level": breast_level,
        "calibration": calibration_metrics(truth, findings, pooled, spec, n_calibration_bins),
        "images": image_table(truth, findings, matches, breasts, images.detection),
        "lesions": lesion_table(truth, matches, pooled),
    }
    return json_ready(metrics)


def validation_summary(
    matches: Sequence[ImageMatch], score_threshold: float, floor: float = EVAL_MIN_SCORE
) -> dict[str, Any]:
    """The flat dict training logs and selects checkpoints by, from :func:`compute_metrics`' parts.

    Same numbers as ``microcalcai evaluate`` for the same detections: lesion, malignant and
    benign sensitivity, false positives, FROC at :data:`FROC_RATES`, the benign-vs-malignant
    AUC of the matched lesions and the image-level AUC (no bootstrap: it is not needed to rank
    checkpoints).
    """
    pooled = pool_lesions(matches)
    det = detection_metrics(pooled, matches, floor)
    images = UnitScores.of_images(matches, floor)
    image_auc = roc_auc(images.risk, images.malignant) if len(matches) else float("nan")
    lesion_auc = roc_auc(pooled.matched_p[pooled.matched], pooled.is_malignant[pooled.matched])
    summary: dict[str, Any] = {
        "score_threshold": float(score_threshold),
        "match_rule": MATCH_RULE,
        "n_images": pooled.n_images,
        "n_lesions": pooled.n,
        "n_malignant": int(pooled.is_malignant.sum()),
        "n_benign": int((~pooled.is_malignant).sum()),
        "lesion_sensitivity": det["lesion_sensitivity"],
        "malignant_sensitivity": det["malignant_sensitivity"],
        "benign_sensitivity": det["benign_sensitivity"],
        "false_positives": det["false_positives"],
        "fp_per_image": det["fp_per_image"],
        "lesion_auc_benign_vs_malignant": lesion_auc,
        "image_auc_malignant": image_auc,
    }
    for rate, value in det["froc"]["sensitivity_at_fp_per_image"].items():
        summary[f"sensitivity_at_{rate}_fp"] = value
    return json_ready(summary)


def json_ready(value: Any) -> Any:
    """Plain JSON types; nan and inf become None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value
