"""Threshold-free curves: ROC (scikit-learn), FROC and calibration.

ROC points and AUC come from :func:`sklearn.metrics.roc_curve` (all distinct scores kept, so
tied scores move the curve diagonally) and :func:`sklearn.metrics.roc_auc_score` (the
trapezoid area under that curve, equal to the Mann-Whitney statistic with ties counting half);
both give nan instead of raising when one class is absent, so a report can still be written.
FROC and the reliability table are short enough to be written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.detect.manifest import MERGE_FLOOR

__all__ = [
    "EVAL_MIN_SCORE",
    "FROC_RATES",
    "calibration_bins",
    "froc_curve",
    "froc_sensitivities",
    "roc_auc",
    "roc_curve",
]

#: FP-per-image rates of the FROC table (1/8 ... 8), as in the LUNA16 / CAD literature; their
#: mean sensitivity is the "competition performance metric" training selects checkpoints by.
FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Lowest lesion score kept when the pipeline is run for evaluation: the FROC sweep starts here.
#: It is the detector's merge floor, so every threshold of the sweep reports exactly what
#: running the pipeline at that threshold would.
EVAL_MIN_SCORE = MERGE_FLOOR


def _two_classes(positive: np.ndarray) -> bool:
    return bool(positive.any()) and bool((~positive).any())


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); nan without both classes."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if not _two_classes(positive):
        return float("nan")
    return float(roc_auc_score(positive, scores))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "positive iff score >= threshold", from (0, 0) to (1, 1).

    One point per distinct score (no intermediate point dropped), the first threshold is
    +inf. A rate whose class is absent is nan.
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_curve as sk_roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.size == 0:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr, tpr, thresholds = sk_roc_curve(positive, scores, drop_intermediate=False)
    fpr[0] = tpr[0] = 0.0  # nothing is called positive above every score, even when a class is absent
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds.astype(np.float64)


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
