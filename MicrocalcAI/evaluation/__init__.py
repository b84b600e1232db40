"""Measuring a model on annotated images: lesion matching, metrics, curves and plots.

One implementation serves ``microcalcai evaluate`` and training's validation, so a number in a
training log and in an evaluation report mean the same thing:

    matching.py   who finds whom (hit rule: MicrocalcAI.core.boxes), per image
    metrics.py    detection, lesion, image and breast level; bootstrap CIs; training's summary
    curves.py     ROC (scikit-learn), FROC, calibration; FROC_RATES, EVAL_MIN_SCORE
    plots.py      ROC, FROC and calibration PNGs
    evaluate.py   the dataset runner: pipeline or findings files -> metrics.json + plots
"""

from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE, FROC_RATES
from MicrocalcAI.evaluation.evaluate import EvaluationReport, evaluate_dataset, write_report
from MicrocalcAI.evaluation.matching import ImageTruth, match_detections, match_image, truth_from_coco
from MicrocalcAI.evaluation.metrics import compute_metrics, validation_summary

__all__ = [
    "EVAL_MIN_SCORE",
    "FROC_RATES",
    "EvaluationReport",
    "ImageTruth",
    "compute_metrics",
    "evaluate_dataset",
    "match_detections",
    "match_image",
    "truth_from_coco",
    "validation_summary",
    "write_report",
]
