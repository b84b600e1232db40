"""Cancer risk per image, per breast and per exam (study), from the lesions found.

Image: the highest ``p_malignant`` among its lesions (the caller has already dropped lesions
below the score threshold). An image with no lesion gets probability 0.0: the model found
nothing suspicious at its operating threshold. That is "no finding", not a calibrated
statement that cancer is impossible.

Breast: the views (CC, MLO, ...) of one side of one study. The default ``combine="max"``
takes the highest image probability, because CC and MLO are two projections of the *same*
breast and usually show the *same* lesion: treating them as independent evidence
(``"noisy_or"``, ``1 - prod(1 - p)``) double-counts one lesion and inflates the risk of every
breast with two views. ``"noisy_or"`` is offered for studies of that choice.

Exam: the highest breast probability of the study.

Categories come from the model's operating points (``ModelSpec.risk_categories``), passed in
by the caller, never from constants here, so a recalibrated model ships its own thresholds.
The functions take only the categories, not the whole model entry, so that findings read
back from a file or a Slicer scene can be re-scored without the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from typing import Optional

from MicrocalcAI.core.detect.manifest import RiskCategory, category_for
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings, Lesion, Risk

__all__ = [
    "COMBINE_METHODS",
    "LATERALITIES",
    "RiskOptionError",
    "breast_findings",
    "breast_key",
    "combine_probabilities",
    "exam_findings",
    "image_risk",
]

log = logging.getLogger(__name__)

COMBINE_METHODS = ("max", "noisy_or")
LATERALITIES = ("L", "R")


class RiskOptionError(MicrocalcAIError, ValueError):
    """An unknown risk-combination option was requested."""


def _risk(probability: float, categories: Sequence[RiskCategory]) -> Risk:
    p = float(probability)
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise MicrocalcAIError(f"probability {probability} is outside [0, 1]")
    return Risk(probability=p, category=category_for(p, categories))


def image_risk(lesions: Sequence[Lesion], categories: Sequence[RiskCategory]) -> Risk:
    """Risk of one image: the most suspicious lesion decides (0.0 when there is none)."""
    p = max((float(les.p_malignant) for les in lesions), default=0.0)
    return _risk(p, categories)


def combine_probabilities(probabilities: Sequence[float], combine: str = "max") -> float:
    """Combine the probabilities of the views of one breast (see the module docstring)."""
    if combine not in COMBINE_METHODS:
        raise RiskOptionError(f"unknown combine method {combine!r}; use one of {list(COMBINE_METHODS)}")
    if not probabilities:
        return 0.0
    if combine == "max":
        return float(max(probabilities))
    keep = 1.0
    for p in probabilities:
        keep *= 1.0 - float(p)
    return float(1.0 - keep)


def _laterality(image: ImageFindings) -> Optional[str]:
    lat = (image.laterality or "").strip().upper()
    return lat if lat in LATERALITIES else None


def breast_key(image: ImageFindings, index: int) -> tuple[Hashable, ...]:
    """Which breast an image belongs to.

    (patient, study, side). Without a study UID, the patient's images are grouped by side
    alone, which merges repeated exams of one patient: give study UIDs to keep them apart.
    Without patient and study, or without a known side, nothing says which other images show
    the same breast, so the image stands alone (``index`` makes the key unique).
    """
    lat = _laterality(image)
    if lat is None or (image.patient_id is None and image.study_uid is None):
        return ("image", index)
    return ("breast", image.patient_id, image.study_uid, lat)


def breast_findings(
    images: Sequence[ImageFindings], categories: Sequence[RiskCategory], combine: str = "max"
) -> list[BreastFindings]:
    """Group images into breasts and combine their risks, in order of first appearance."""
    if combine not in COMBINE_METHODS:
        raise RiskOptionError(f"unknown combine method {combine!r}; use one of {list(COMBINE_METHODS)}")
    groups: dict[tuple[Hashable, ...], list[ImageFindings]] = {}
    for index, image in enumerate(images):
        groups.setdefault(breast_key(image, index), []).append(image)
    breasts: list[BreastFindings] = []
    for members in groups.values():
        first = members[0]
        lat = _laterality(first)
        warnings: list[str] = []
        if lat is None:
            msg = (
                f"image {first.name!r}: laterality unknown ({first.laterality!r}); "
                "it is reported as a breast of its own, not combined with other views"
            )
            warnings.append(msg)
            log.warning(msg)
        elif first.study_uid is None:
            warnings.append(
                "no study UID: images were grouped by patient ID and side, so repeated exams of one patient are merged"
            )
        p = combine_probabilities([m.risk.probability for m in members], combine)
        breasts.append(
            BreastFindings(
                patient_id=first.patient_id,
                study_uid=first.study_uid,
                laterality=lat,
                image_names=[m.name for m in members],
                views=[m.view for m in members],
                risk=_risk(p, categories),
                warnings=warnings,
            )
        )
    return breasts


def exam_findings(breasts: Sequence[BreastFindings], categories: Sequence[RiskCategory]) -> list[ExamFindings]:
    """Group breasts into exams (patient, study) and take the highest breast risk.

    Breasts with neither patient nor study form an exam of their own each, for the same
    reason as in :func:`breast_key`.
    """
    groups: dict[tuple[Hashable, ...], list[BreastFindings]] = {}
    for index, breast in enumerate(breasts):
        if breast.patient_id is None and breast.study_uid is None:
            key: tuple[Hashable, ...] = ("breast", index)
        else:
            key = ("exam", breast.patient_id, breast.study_uid)
        groups.setdefault(key, []).append(breast)
    return [
        ExamFindings(
            patient_id=members[0].patient_id,
            study_uid=members[0].study_uid,
            breasts=members,
            risk=_risk(max(b.risk.probability for b in members), categories),
        )
        for members in groups.values()
    ]
