"""Fitting a model's calibration on validation data, and choosing its operating points on it.

The calibration itself (what is stored and how it is applied) is
:mod:`MicrocalcAI.core.detect.calibration`. Here it is fitted on the *raw* detections of
validation images (the model run with its calibration switched off, every lesion down to the
merge floor):

* the lesion score by Platt scaling, on every merged detection: target 1 when it finds a
  ground-truth lesion by the project's hit rule (:func:`MicrocalcAI.core.boxes.hit_matrix`),
  0 otherwise, so the calibrated score is "the probability that this mark is a true
  calcification cluster";
* p_malignant by temperature scaling, on the ground-truth lesions that were found (the
  best-scoring finder of each, as in evaluation): target 1 for a malignant lesion.

Both minimise the negative log-likelihood (scipy) with Platt's (1999) smoothed targets,
``(N+ + 1) / (N+ + 2)`` for positives and ``1 / (N- + 2)`` for negatives: on well separated
validation data (simulation) the unsmoothed optimum is an infinitely sharp map, which would
promise certainty the data cannot support. Parameters are bounded (temperature and Platt slope
in [0.02, 50]) for the same reason; a fit that ends on a bound is logged.

Then the operating points are chosen again on the calibrated values with the rules of
:mod:`MicrocalcAI.training.validation`, and the risk categories on the image-level
probability that :func:`MicrocalcAI.core.findings.risk.image_risk` computes from the reported
lesions (the product's own rule, whatever it is). :func:`recalibrate_manifest_entry` does all
of it for a model that already has a manifest entry, without its training checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy.optimize import minimize

from MicrocalcAI.core.boxes import hit_matrix
from MicrocalcAI.core.detect.calibration import Calibration, logit
from MicrocalcAI.core.detect.manifest import (
    DEFAULT_RISK_CATEGORIES,
    MERGE_FLOOR,
    ModelSpec,
    RiskCategory,
    load_manifest,
)
from MicrocalcAI.core.errors import InputError, ModelError
from MicrocalcAI.core.ood.reference import reference_path
from MicrocalcAI.core.progress import ProgressCallback, no_progress, sub_progress
from MicrocalcAI.core.records import Lesion
from MicrocalcAI.datasets.coco import MALIGNANT, parse_coco
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE, calibration_bins
from MicrocalcAI.evaluation.metrics import pool_lesions
from MicrocalcAI.training.validation import (
    ImageEvaluation,
    choose_cutpoints,
    choose_malignancy_operating_points,
    choose_score_threshold,
    collect_evaluations,
    lowest_threshold_within,
    match_all,
    summarise,
)

__all__ = [
    "BOUNDS",
    "CalibrationData",
    "FittedOperatingPoints",
    "OperatingPoints",
    "calibrate_evaluations",
    "calibration_data",
    "check_fp_rate",
    "check_negatives",
    "choose_operating_points",
    "choose_risk_categories",
    "collect_negatives",
    "fit_calibration",
    "fit_operating_points",
    "fit_platt",
    "fit_temperature",
    "image_probabilities",
    "negatives_record",
    "recalibrate_manifest_entry",
]

log = logging.getLogger(__name__)

#: Bounds of the temperature and of the Platt slope (see the module docstring).
BOUNDS = (0.02, 50.0)
#: Bins of the reliability tables recorded in the manifest (as in ``microcalcai evaluate``).
N_BINS = 10


def _smoothed_targets(positive: np.ndarray) -> np.ndarray:
    """Platt's targets: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives."""
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    return np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _nll(z: np.ndarray, t: np.ndarray) -> float:
    """Mean cross-entropy of probabilities sigmoid(z) against targets t (stable in z)."""
    # -t log s(z) - (1 - t) log(1 - s(z)) = softplus(z) - t z
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def _check(values: np.ndarray, positive: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if values.size != positive.size:
        raise InputError(f"{what}: {values.size} values but {positive.size} outcomes")
    if not (positive.any() and (~positive).any()):
        raise InputError(f"{what}: both outcomes are needed to fit a calibration ({positive.size} given)")
    return values, positive


def fit_temperature(p_raw: np.ndarray, positive: np.ndarray) -> float:
    """The temperature T minimising the NLL of sigmoid(logit(p_raw) / T) (smoothed targets)."""
    p_raw, positive = _check(p_raw, positive, "temperature fit")
    x, t = logit(p_raw), _smoothed_targets(positive)
    lo, hi = np.log(BOUNDS)
    res = minimize(lambda v: _nll(x / np.exp(v[0]), t), x0=[0.0], method="L-BFGS-B", bounds=[(lo, hi)])
    temperature = float(np.exp(res.x[0]))
    if np.isclose(res.x[0], lo) or np.isclose(res.x[0], hi):
        log.warning("temperature fit ended on its bound (T = %.3g)", temperature)
    return temperature


def fit_platt(scores_raw: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(a, b), a > 0, minimising the NLL of sigmoid(a * logit(score) + b) (smoothed targets)."""
    scores_raw, positive = _check(scores_raw, positive, "score (Platt) fit")
    x, t = logit(scores_raw), _smoothed_targets(positive)
    lo, hi = np.log(BOUNDS)

    def loss(v: np.ndarray) -> float:
        return _nll(np.exp(v[0]) * x + v[1], t)

    res = minimize(loss, x0=[0.0, 0.0], method="L-BFGS-B", bounds=[(lo, hi), (-50.0, 50.0)])
    a, b = float(np.exp(res.x[0])), float(res.x[1])
    if np.isclose(res.x[0], lo) or np.isclose(res.x[0], hi):
        log.warning("Platt fit ended on its slope bound (a = %.3g)", a)
    return a, b


@dataclass
class CalibrationData:
    """What the fit uses: every detection (true mark or not), and the found lesions' p_malignant."""

    det_scores: np.ndarray  # raw score of every detection at the floor
    det_true: np.ndarray  # it finds a ground-truth lesion
    lesion_p: np.ndarray  # raw p_malignant of the best finder of each found lesion
    lesion_malignant: np.ndarray  # that lesion is malignant


def calibration_data(evals: Sequence[ImageEvaluation]) -> CalibrationData:
    """The fitting data of :func:`fit_calibration` from raw (uncalibrated) evaluations."""
    scores, true = [], []
    for ev in evals:
        det_scores = np.asarray(ev.det_scores, dtype=np.float64).reshape(-1)
        scores.append(det_scores)
        hits = hit_matrix(np.asarray(ev.det_boxes).reshape(-1, 4), np.asarray(ev.gt_boxes).reshape(-1, 4))
        true.append(hits.any(axis=1) if hits.size else np.zeros(len(det_scores), dtype=bool))
    pooled = pool_lesions(match_all(evals, 0.0))  # every detection given counts
    return CalibrationData(
        det_scores=np.concatenate(scores) if scores else np.zeros(0),
        det_true=np.concatenate(true) if true else np.zeros(0, dtype=bool),
        lesion_p=pooled.matched_p[pooled.matched],
        lesion_malignant=pooled.is_malignant[pooled.matched],
    )


def _reliability(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    table = calibration_bins(p, y, N_BINS)
    return {"ece": table["ece"], "brier": table["brier"]}


def fit_calibration(evals: Sequence[ImageEvaluation], fitted_on: str = "") -> tuple[Calibration, dict[str, Any]]:
    """Fit score and p_malignant calibration on raw validation evaluations.

    Returns the calibration and a JSON-ready record of what it did: n used, ECE and Brier
    score (10 equal bins) before and after, on the same data it was fitted on.
    """
    data = calibration_data(evals)
    skipped: dict[str, str] = {}
    a, b, temperature = 1.0, 0.0, 1.0
    # A part without both outcomes in the data (no true mark, no benign lesion found...) keeps
    # the identity, and the record says so: export must not fail on a weak validation set.
    if data.det_true.any() and (~data.det_true).any():
        a, b = fit_platt(data.det_scores, data.det_true)
    else:
        skipped["score"] = f"not fitted: {int(data.det_true.sum())} true of {data.det_true.size} detections"
    if data.lesion_malignant.any() and (~data.lesion_malignant).any():
        temperature = fit_temperature(data.lesion_p, data.lesion_malignant)
    else:
        skipped["p_malignant"] = (
            f"not fitted: {int(data.lesion_malignant.sum())} malignant of {data.lesion_malignant.size} found lesions"
        )
    for part, why in skipped.items():
        log.warning("calibration of %s %s: it stays uncalibrated", part, why)
    today = datetime.date.today().isoformat()
    cal = Calibration(
        temperature=temperature,
        score_a=a,
        score_b=b,
        fitted_on=f"{fitted_on} ({len(evals)} images, {data.det_scores.size} detections, "
        f"{data.lesion_p.size} found lesions; {today})".strip(),
    )
    record = {
        "method": "lesion score: Platt sigmoid(a*logit(s)+b) on all detections >= merge floor (true = finds a GT lesion); "
        "p_malignant: temperature sigmoid(logit(p)/T) on found GT lesions (best finder); NLL with Platt's smoothed targets",
        "dataset": fitted_on,
        "n_images": len(evals),
        "parameters": cal.to_json(),
        "score": {
            "n": int(data.det_scores.size),
            "n_true": int(data.det_true.sum()),
            "before": _reliability(data.det_scores, data.det_true),
            "after": _reliability(cal.score(data.det_scores), data.det_true),
        },
        "p_malignant": {
            "n": int(data.lesion_p.size),
            "n_malignant": int(data.lesion_malignant.sum()),
            "before": _reliability(data.lesion_p, data.lesion_malignant),
            "after": _reliability(cal.p_malignant(data.lesion_p), data.lesion_malignant),
        },
        "note": "ECE/Brier measured on the validation data the calibration was fitted on (in-sample)",
        "not_fitted": skipped,
    }
    return cal, record


def calibrate_evaluations(evals: Sequence[ImageEvaluation], cal: Calibration) -> list[ImageEvaluation]:
    """The evaluations as the calibrated model reports them (same boxes, calibrated values)."""
    return [
        replace(
            ev,
            det_scores=cal.score(ev.det_scores),
            det_p_malignant=cal.p_malignant(ev.det_p_malignant),
        )
        for ev in evals
    ]


def image_probabilities(evals: Sequence[ImageEvaluation], score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(image probability, image holds a malignant lesion) per image, the probability from
    :func:`MicrocalcAI.core.findings.risk.image_risk` over the lesions reported at
    ``score_threshold`` (boxes in the canonical frame; the rule reads scores and p only)."""
    from MicrocalcAI.core.findings.risk import image_risk

    probs, positive = [], []
    for ev in evals:
        lesions = [
            Lesion(
                id=k + 1,
                box_px=tuple(float(v) for v in box),  # type: ignore[arg-type]
                box_mm=(0.0, 0.0, 0.0, 0.0),
                label="malignant" if p >= 0.5 else "benign",
                score=float(s),
                p_malignant=float(p),
                area_mm2=0.0,
            )
            for k, (box, s, p) in enumerate(
                zip(np.asarray(ev.det_boxes).reshape(-1, 4), ev.det_scores, ev.det_p_malignant)
            )
            if s >= score_threshold
        ]
        probs.append(image_risk(lesions, list(DEFAULT_RISK_CATEGORIES)).probability)
        positive.append(bool(np.any(np.asarray(ev.gt_labels) == MALIGNANT)))
    return np.asarray(probs, dtype=np.float64), np.asarray(positive, dtype=bool)


def choose_risk_categories(
    evals: Sequence[ImageEvaluation], score_threshold: float, target_sensitivity: float = 0.95
) -> list[RiskCategory]:
    """low / intermediate / high on the image probability (:func:`image_probabilities`):
    intermediate from the high-sensitivity cut, high from the balanced (Youden) cut of
    :func:`~MicrocalcAI.training.validation.choose_cutpoints` over validation images."""
    p, positive = image_probabilities(evals, score_threshold)
    if not (positive.any() and (~positive).any()):
        log.warning("validation lacks images of both classes: default risk categories kept")
        return list(DEFAULT_RISK_CATEGORIES)
    intermediate, high = choose_cutpoints(p, positive, target_sensitivity)
    return [RiskCategory("low", 0.0), RiskCategory("intermediate", intermediate), RiskCategory("high", high)]


@dataclass
class OperatingPoints:
    """What export writes into a manifest entry besides the weights."""

    score_threshold: float
    operating_points: dict[str, float]
    risk_categories: list[RiskCategory]
    rule: str
    validation_threshold: float  # the threshold validation alone chose (before any negatives' floor)


def check_fp_rate(value: object, what: str) -> None:
    """A false-positive rate given by a user must be a positive finite number."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{what} must be a positive number, got {value!r}")


def check_negatives(negatives_coco: Optional[Sequence[os.PathLike | str]], max_fp_per_image: float) -> list[str]:
    """Validate the false-mark cap's inputs before any image is analysed; return the COCO paths.

    A negatives file without images would silently switch the cap off, so it is an error."""
    check_fp_rate(max_fp_per_image, "max_negative_fp_per_image")
    paths = [str(c) for c in (negatives_coco or ())]
    for coco in paths:
        if not parse_coco(coco):
            raise InputError(f"negatives file {coco} lists no images: the false-mark cap would not apply")
    return paths


def collect_negatives(
    negatives_coco: Sequence[str],
    spec: ModelSpec,
    model: torch.nn.Module,
    device: torch.device | str,
    progress: ProgressCallback,
    skipped: list[str],
) -> list[ImageEvaluation]:
    """Detections on every negatives image (raw, as ``spec`` gives them), progress split per file;
    images the pipeline refuses are appended to ``skipped`` (reported, not counted)."""
    evals: list[ImageEvaluation] = []
    for i, coco in enumerate(negatives_coco):
        part = sub_progress(progress, i / len(negatives_coco), (i + 1) / len(negatives_coco))
        evals += collect_evaluations(coco, spec, model, device, progress=part, skipped=skipped)
    return evals


def choose_operating_points(
    evals: Sequence[ImageEvaluation],
    target_fp_per_image: float,
    negatives: Sequence[ImageEvaluation] = (),
    max_negative_fp_per_image: float = 1.0,
) -> OperatingPoints:
    """Score threshold, p_malignant operating points and risk categories from (calibrated)
    validation evaluations.

    With ``negatives`` (calibrated evaluations of images whose every mark counts as false, e.g.
    real films delivered as an archive holds them), the threshold is raised, where needed, to
    the lowest one at which they make at most ``max_negative_fp_per_image``; the p_malignant
    points and risk categories are then chosen at that threshold.
    """
    check_fp_rate(target_fp_per_image, "target_fp_per_image")
    check_fp_rate(max_negative_fp_per_image, "max_negative_fp_per_image")
    threshold = validation_threshold = choose_score_threshold(evals, target_fp_per_image)
    rule = f"score_threshold: highest sensitivity at <= {target_fp_per_image:g} FP/image on validation"
    if negatives:
        floor = lowest_threshold_within(negatives, max_negative_fp_per_image)
        rule += (
            f", raised where needed to the lowest threshold with <= {max_negative_fp_per_image:g} false marks per image "
            f"on the {len(negatives)} negative images (validation alone: {threshold:.2f}, negatives' floor: {floor:.2f})"
        )
        threshold = max(threshold, floor)
    return OperatingPoints(
        score_threshold=threshold,
        operating_points=choose_malignancy_operating_points(evals, threshold),
        risk_categories=choose_risk_categories(evals, threshold),
        rule=(
            f"{rule}; "
            "p_malignant on found validation lesions: high_sensitivity = lowest threshold of best specificity with "
            ">= 95% malignant sensitivity, balanced = middle of the thresholds maximising Youden J; risk categories: "
            "the same two rules on the image probability of core.findings.risk.image_risk over validation images "
            "(intermediate = high-sensitivity cut, high = balanced cut)"
        ),
        validation_threshold=validation_threshold,
    )


def negatives_record(
    negatives: Sequence[ImageEvaluation],
    datasets: Sequence[str],
    points: OperatingPoints,
    max_fp_per_image: float,
    refused: Sequence[str] = (),
) -> dict[str, Any]:
    """What the manifest keeps of the false-mark cap (``metrics["negatives"]``): the negatives'
    false marks per image at the validation-only and the chosen threshold, and whether the cap
    was met at all (it cannot be when even the top of the grid makes more)."""
    pooled = pool_lesions(match_all(negatives, EVAL_MIN_SCORE))
    n = max(pooled.n_images, 1)
    fp_per_image = float((pooled.fp_scores >= points.score_threshold).sum()) / n
    return {
        "datasets": list(datasets),
        "n_images": pooled.n_images,
        "n_images_refused": len(refused),
        "max_fp_per_image": max_fp_per_image,
        "validation_threshold": points.validation_threshold,
        "fp_per_image_at_validation_threshold": round(
            float((pooled.fp_scores >= points.validation_threshold).sum()) / n, 4
        ),
        "score_threshold": points.score_threshold,
        "fp_per_image": round(fp_per_image, 4),
        "cap_met": fp_per_image <= max_fp_per_image,
        "note": "every mark on these images counts as false (they carry no calcification labels)",
    }


@dataclass
class FittedOperatingPoints:
    """One fit on validation (and negatives): what export and recalibration write into an entry."""

    points: OperatingPoints
    calibration: Optional[Calibration]  # None when not asked to calibrate
    calibration_record: Optional[dict[str, Any]]
    evaluations: list[ImageEvaluation]  # validation, on the reported (calibrated) scale
    negatives: Optional[dict[str, Any]]  # metrics["negatives"], when negatives were given
    n_validation_refused: int


def fit_operating_points(
    val_coco: os.PathLike | str,
    spec: ModelSpec,
    model: torch.nn.Module,
    device: torch.device | str,
    *,
    negative_files: Sequence[str] = (),
    calibrate: bool = True,
    target_fp_per_image: float = 0.5,
    max_negative_fp_per_image: float = 1.0,
    progress: ProgressCallback = no_progress,
) -> FittedOperatingPoints:
    """Run ``spec`` (uncalibrated) over validation and negatives, fit the calibration (unless
    ``calibrate`` is False), and choose threshold, p_malignant points and risk categories on
    the reported values. ``negative_files`` must have passed :func:`check_negatives`.

    The one sequence behind ``export`` and ``export --recalibrate``: both must choose a model's
    settings the same way, or a recalibrated entry would differ from a fresh export of the
    same weights.
    """
    if spec.calibration is not None:
        raise ModelError("fit_operating_points needs the entry without its calibration (raw scores)")
    skipped: list[str] = []
    refused: list[str] = []
    val_end = 0.7 if negative_files else 1.0
    evals = collect_evaluations(
        val_coco, spec, model, device, progress=sub_progress(progress, 0.0, val_end), skipped=skipped
    )
    negatives = collect_negatives(
        list(negative_files), spec, model, device, sub_progress(progress, val_end, 1.0), refused
    )
    cal: Optional[Calibration] = None
    record: Optional[dict[str, Any]] = None
    if calibrate:
        cal, record = fit_calibration(evals, fitted_on=str(val_coco))
        evals = calibrate_evaluations(evals, cal)
        negatives = calibrate_evaluations(negatives, cal)
    points = choose_operating_points(evals, target_fp_per_image, negatives, max_negative_fp_per_image)
    return FittedOperatingPoints(
        points=points,
        calibration=cal,
        calibration_record=record,
        evaluations=evals,
        negatives=negatives_record(negatives, negative_files, points, max_negative_fp_per_image, refused)
        if negative_files
        else None,
        n_validation_refused=len(skipped),
    )


def recalibrate_manifest_entry(
    manifest: os.PathLike | str,
    val_coco: os.PathLike | str,
    *,
    name: Optional[str] = None,
    out_dir: Optional[os.PathLike | str] = None,
    target_fp_per_image: float = 0.5,
    negatives_coco: Optional[Sequence[os.PathLike | str]] = None,
    max_negative_fp_per_image: float = 1.0,
    device: str = "auto",
    progress: ProgressCallback = no_progress,
) -> tuple[Any, dict[str, Any]]:
    """Fit (or re-fit) the calibration of an existing model entry from a validation COCO.

    For a model without its training checkpoint (or to re-calibrate one): the entry ``name``
    (default: the manifest's default) of ``manifest`` is run with its calibration switched off
    over ``val_coco``, the calibration is fitted, and score threshold, p_malignant operating
    points and risk categories are chosen again on the calibrated values. The entry is
    written back (into ``out_dir``'s manifest.json if given, the weights path then made
    absolute; else into ``manifest`` itself) with ``metrics["calibration"]`` (the fit's record and the validation
    summary at the new threshold); other metrics blocks are kept and marked as measured
    before calibration. ``negatives_coco`` caps the false marks as in export
    (:func:`choose_operating_points`) and replaces ``metrics["negatives"]``; without it an old
    ``negatives`` block (of the old threshold) is dropped. Returns (the new entry, the record).
    """
    from MicrocalcAI.core.detect.network import select_device
    from MicrocalcAI.core.detect.weights import load_detector
    from MicrocalcAI.training.export import write_manifest_entry

    check_fp_rate(target_fp_per_image, "target_fp_per_image")
    negative_files = check_negatives(negatives_coco, max_negative_fp_per_image)
    default, specs = load_manifest(manifest)
    wanted = name or default
    matches = [s for s in specs if s.name == wanted] if wanted else specs[:1]
    if not matches:
        raise ModelError(f"no model named {wanted!r} in {manifest}; known: {[s.name for s in specs]}")
    spec = matches[0]
    dev = select_device(device)
    raw_spec = replace(spec, calibration=None)
    fitted = fit_operating_points(
        val_coco,
        raw_spec,
        load_detector(raw_spec, dev),
        dev,
        negative_files=negative_files,
        target_fp_per_image=target_fp_per_image,
        max_negative_fp_per_image=max_negative_fp_per_image,
        progress=sub_progress(progress, 0.0, 0.95),
    )
    cal, record, points = fitted.calibration, fitted.calibration_record, fitted.points
    if cal is None or record is None:  # cannot happen with calibrate=True; keeps the types honest
        raise ModelError("calibration was not fitted")
    metrics = {k: v for k, v in spec.metrics.items() if k != "negatives"}  # an old cap's record is stale
    if fitted.negatives is not None:
        metrics["negatives"] = fitted.negatives
    record["n_images_refused"] = fitted.n_validation_refused
    record["previous"] = {
        "calibration": spec.calibration.to_json() if spec.calibration else None,
        "score_threshold": spec.score_threshold,
        "operating_points": dict(spec.operating_points),
        "risk_categories": [{"name": c.name, "min_probability": c.min_probability} for c in spec.risk_categories],
    }
    record["validation_at_new_threshold"] = summarise(
        fitted.evaluations, points.score_threshold, floor=min(EVAL_MIN_SCORE, float(cal.score(MERGE_FLOOR)))
    )
    record["operating_point_rule"] = points.rule
    record["other_metrics_note"] = (
        "metrics blocks other than 'calibration' were measured before this calibration, at the score "
        "threshold they name (raw scale); re-run `microcalcai evaluate` for calibrated numbers"
    )
    new = replace(
        spec,
        calibration=cal,
        score_threshold=points.score_threshold,
        operating_points=points.operating_points,
        risk_categories=points.risk_categories,
        metrics=metrics | {"calibration": record},
    )
    source = Path(manifest)
    folder = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    if folder.resolve() != Path(spec.folder or ".").resolve():
        # written elsewhere: every file the entry names (weights, OOD reference) by absolute path
        new = replace(new, file=str(spec.weights_path.resolve()))
        ood_file = reference_path(spec)
        if ood_file is not None and spec.ood is not None:
            new = replace(new, ood={**spec.ood, "file": str(ood_file.resolve())})
    write_manifest_entry(folder, new, make_default=(default == spec.name) or default is None)
    progress(1.0, f"calibrated {spec.name} on {len(fitted.evaluations)} images")
    new = replace(new, folder=str(folder))
    return new, record
