"""Matching: which reported lesion finds which ground-truth lesion, image by image.

The hit rule itself (IoU >= 0.2 or detection centre inside the GT box) is
:func:`MicrocalcAI.core.boxes.hit_matrix`. On top of it this module decides, per image and at
one operating threshold: among several finders the highest-scoring one is *the* match; a GT
lesion no reported lesion finds is *missed* (never dropped); a reported lesion that finds no GT
lesion is a false positive. :func:`match_detections` works on plain arrays, so training's
validation (canonical frame, raw detections) and ``microcalcai evaluate`` (stored pixels,
findings files) go through the very same code; :func:`match_image` adapts an
:class:`~MicrocalcAI.core.records.ImageFindings`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.boxes import hit_matrix
from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.findings.risk import breast_key, image_probability_of
from MicrocalcAI.core.records import ImageFindings
from MicrocalcAI.datasets.coco import BENIGN, MALIGNANT, CocoImage, parse_coco

__all__ = [
    "ImageMatch",
    "ImageTruth",
    "best_finders",
    "group_breasts",
    "hard_negative_marks",
    "match_detections",
    "match_hits",
    "match_image",
    "truth_from_coco",
    "truth_from_entry",
]

PathLike = Union[str, "os.PathLike[str]"]


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


def _text(extra: dict[str, Any], key: str) -> Optional[str]:
    value = extra.get(key)
    return None if value is None or value == "" else str(value)


def truth_from_entry(entry: CocoImage) -> ImageTruth:
    """The ground truth of one parsed COCO image entry."""
    return ImageTruth(
        name=entry.path.name.split(".")[0] or str(entry.image_id),
        boxes=entry.boxes_stored,
        labels=entry.labels,
        patient_id=_text(entry.extra, "patient_id"),
        study_uid=_text(entry.extra, "study_uid"),
        laterality=_text(entry.extra, "laterality"),
        view=_text(entry.extra, "view"),
        path=str(entry.path),
        spacing_mm=entry.spacing_mm,
        hard_negatives=[
            (kind, (float(box[0]), float(box[1]), float(box[2]), float(box[3])))
            for kind, box in zip(entry.hard_negative_types, entry.hard_negatives_stored)
        ],
        descriptors=entry.descriptors,
    )


def truth_from_coco(coco_json: PathLike) -> list[ImageTruth]:
    """The ground truth of a COCO file (validated by :func:`MicrocalcAI.datasets.coco.parse_coco`)."""
    return [truth_from_entry(entry) for entry in parse_coco(coco_json)]


@dataclass
class ImageMatch:
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
    #: The image risk ``detect`` reports at the operating threshold: the highest
    #: ``score * p_malignant`` of the reported detections (core.findings.risk).
    probability: float
    any_malignant_label: bool  # a reported lesion is labelled malignant
    #: The highest p_malignant of a reported detection (0.0 without): what the operating
    #: points, cuts on a lesion's p_malignant, are applied to at image level.
    max_p_malignant: float = 0.0
    #: The highest score of any available detection (0.0 without), reported or not: the image's
    #: evidence of holding a calcification lesion at all, whatever its class. The risk
    #: (``probability``) is the evidence of a *malignant* one, so it ranks an image with a found
    #: benign cluster below one with a faint false mark called malignant; "lesion vs none" is
    #: scored by this. Threshold-free, as the FROC sweep is.
    detection_score: float = 0.0


def match_detections(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_p_malignant: np.ndarray,
    det_labels: Sequence[Optional[str]],
    threshold: float,
) -> ImageMatch:
    """Match one image's detections (any frame, same for both) with its GT lesions.

    Detections with ``score >= threshold`` are *reported*; the others only feed the FROC
    sweep (``sweep_score``, ``fp_scores_all``) and the ``detection_score``.
    """
    boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    return match_hits(hit_matrix(boxes, gt_boxes), gt_labels, det_scores, det_p_malignant, det_labels, threshold)


def match_hits(
    hits: np.ndarray,
    gt_labels: np.ndarray,
    det_scores: np.ndarray,
    det_p_malignant: np.ndarray,
    det_labels: Sequence[Optional[str]],
    threshold: float,
) -> ImageMatch:
    """:func:`match_detections` given which detection finds which lesion (``hits``, (D, G),
    :func:`MicrocalcAI.core.boxes.hit_matrix`): for callers that already hold the hits and
    filter detections before matching (the real-film benchmark's cluster rules), so that a
    lesion's match and class are chosen by this one rule: the highest-scoring reported finder.
    """
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    p_mal = np.asarray(det_p_malignant, dtype=np.float64).reshape(-1)
    labels = np.array(list(det_labels), dtype=object)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    hits = np.asarray(hits, dtype=bool)
    expected = (len(scores), len(gt_labels))
    if hits.shape != expected:
        if hits.ndim == 2 or hits.size or expected[0] * expected[1]:  # only a shapeless empty one reshapes
            raise ValueError(f"hits must be (detections, lesions) = {expected}, got {hits.shape}")
        hits = hits.reshape(expected)
    if not len(p_mal) == len(labels) == len(scores):
        raise ValueError(f"{len(scores)} detection scores, {len(p_mal)} p_malignant and {len(labels)} labels")
    reported = scores >= threshold
    g_count = len(gt_labels)
    matched_label: list[Optional[str]] = [None] * g_count
    matched_p = np.full(g_count, np.nan)
    matched_score = np.full(g_count, np.nan)
    sweep = np.full(g_count, -np.inf)
    anywhere = best_finders(hits, scores)
    sweep[anywhere >= 0] = scores[anywhere[anywhere >= 0]]
    best = best_finders(hits, scores, reported)
    matched = best >= 0
    for g in np.flatnonzero(matched):
        matched_label[g] = labels[best[g]]
        matched_p[g] = float(p_mal[best[g]])
        matched_score[g] = float(scores[best[g]])
    is_fp = ~hits.any(axis=1) if g_count else np.ones(len(scores), dtype=bool)
    fp_reported = is_fp & reported
    return ImageMatch(
        gt_labels=gt_labels,
        matched=matched,
        matched_label=matched_label,
        matched_p=matched_p,
        matched_score=matched_score,
        sweep_score=sweep,
        fp_scores_all=scores[is_fp],
        n_fp=int(fp_reported.sum()),
        n_fp_malignant=int((fp_reported & (labels == "malignant")).sum()) if len(scores) else 0,
        probability=image_probability_of(scores[reported], p_mal[reported]),
        any_malignant_label=bool(any(lab == "malignant" for lab, r in zip(labels, reported) if r)),
        max_p_malignant=float(p_mal[reported].max()) if reported.any() else 0.0,
        detection_score=float(scores.max()) if len(scores) else 0.0,
    )


def best_finders(hits: np.ndarray, scores: np.ndarray, eligible: Optional[np.ndarray] = None) -> np.ndarray:
    """Per lesion (column of ``hits``, (D, G)), the index of the highest-scoring detection that
    finds it among the ``eligible`` ones (all when None), -1 when none does: the one rule that
    says which detection a lesion is matched to, and so whose class and p_malignant it gets."""
    hits = np.asarray(hits, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if eligible is not None:
        hits = hits & np.asarray(eligible, dtype=bool).reshape(-1, 1)
    ranked = np.where(hits, scores[:, None], -np.inf)
    best = np.argmax(ranked, axis=0) if hits.shape[0] else np.zeros(hits.shape[1], dtype=np.int64)
    return np.where(hits.any(axis=0), best, -1).astype(np.int64)


def match_image(truth: ImageTruth, findings: Optional[ImageFindings], threshold: float) -> ImageMatch:
    """:func:`match_detections` on a findings file (None: the image could not be analysed)."""
    lesions = list(findings.lesions) if findings is not None else []
    return match_detections(
        truth.boxes,
        truth.labels,
        np.array([les.box_px for les in lesions], dtype=np.float64).reshape(-1, 4),
        np.array([les.score for les in lesions], dtype=np.float64),
        np.array([les.p_malignant for les in lesions], dtype=np.float64),
        [les.label for les in lesions],
        threshold,
    )


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
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for i, (t, f) in enumerate(zip(truth, findings)):
        groups.setdefault(breast_key(_identity(t, f), i), []).append(i)  # type: ignore[arg-type]
    return list(groups.values())


def hard_negative_marks(
    truth: Sequence[ImageTruth], findings: Sequence[Optional[ImageFindings]], threshold: float
) -> dict[str, Any]:
    """How many known non-lesions (markers, scratches, isolated specks...) the model marked.

    A hard negative counts as marked when a reported lesion at the operating threshold finds
    it by the lesion matching rule (:func:`MicrocalcAI.core.boxes.hit_matrix`). Each of these marks is a bug to fix,
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
