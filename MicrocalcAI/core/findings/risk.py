"""Cancer risk per image, per breast and per exam (study), from the lesions found.

The rules and the reasons for them are in docs/confidence.md ("Risk"); in short:

Image: the highest ``score * p_malignant`` among its reported lesions (the caller has
already dropped lesions below the score threshold). With calibrated values (the detection
stage applies the model's calibration) ``score`` is the probability that the mark is a
calcification lesion at all and ``p_malignant`` the probability that such a lesion is
malignant, so the product is the probability that this mark is a malignant cluster. Taking
the product rather than ``p_malignant`` alone means a low-confidence mark (dust, film grain)
cannot make an image "high" by itself. An image with no lesion gets 0.0: the model found
nothing suspicious at its operating threshold ("no finding", not "cancer is impossible").
An image whose out-of-distribution check is flagged (:class:`~MicrocalcAI.core.records.OodCheck`)
gets the category :data:`INDETERMINATE`; its probability is still computed and reported.

Breast: the views (CC, MLO, ...) of one side of one study. The default ``combine="max"``
takes the highest image probability, because CC and MLO are two projections of the *same*
breast and usually show the *same* lesion: treating them as independent evidence
(``"noisy_or"``, ``1 - prod(1 - p)``) double-counts one lesion and inflates the risk of every
breast with two views. ``"noisy_or"`` is offered for studies of that choice.

Exam: the highest breast probability of the study.

Indeterminate parts: a breast with an indeterminate image is indeterminate unless its other
(readable) images alone already reach the model's highest category (a confident positive is
not hidden by an unreadable view); an exam with an indeterminate breast likewise. The
probability is always the rule above over *all* parts; only the category changes. Breasts
and exams list the indeterminate images they rest on, whatever their category.

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

import numpy as np
import numpy.typing as npt

from MicrocalcAI.core.detect.manifest import RiskCategory, category_for
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings, Lesion, OodCheck, Risk

__all__ = [
    "COMBINE_METHODS",
    "INDETERMINATE",
    "LATERALITIES",
    "RiskOptionError",
    "breast_findings",
    "breast_key",
    "combine_probabilities",
    "exam_findings",
    "image_probability",
    "image_probability_of",
    "image_risk",
    "is_indeterminate",
    "mark_risks",
]

log = logging.getLogger(__name__)

COMBINE_METHODS = ("max", "noisy_or")
LATERALITIES = ("L", "R")
#: Category of an image the model cannot vouch for (unlike its training data), and of the
#: breasts and exams that rest on such an image without a confident positive elsewhere.
INDETERMINATE = "indeterminate"


class RiskOptionError(MicrocalcAIError, ValueError):
    """An unknown risk-combination option was requested."""


def _checked(probability: float) -> float:
    p = float(probability)
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise MicrocalcAIError(f"probability {probability} is outside [0, 1]")
    return p


def _risk(probability: float, categories: Sequence[RiskCategory]) -> Risk:
    p = _checked(probability)
    return Risk(probability=p, category=category_for(p, categories))


def _top_category(categories: Sequence[RiskCategory]) -> str:
    """The model's highest category (largest ``min_probability``)."""
    if not categories:
        raise MicrocalcAIError("no risk categories given: a model's manifest entry defines at least one")
    return max(categories, key=lambda c: c.min_probability).name


def mark_risks(scores: npt.ArrayLike, p_malignant: npt.ArrayLike) -> np.ndarray:
    """Each mark's share of the image risk: ``score * p_malignant``, the probability that the
    mark is a malignant cluster (calibrated score: a lesion at all; p_malignant: malignant if
    so). An image's risk is the highest of them (:func:`image_probability_of`); ``evaluate``
    scores a lesion against a risk-category boundary by it."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(p_malignant, dtype=np.float64).reshape(-1)
    if s.shape != p.shape:
        raise MicrocalcAIError(f"{s.size} scores but {p.size} p_malignant values")
    return s * p


def image_probability_of(scores: npt.ArrayLike, p_malignant: npt.ArrayLike) -> float:
    """Probability of one image from its reported marks' scores and p_malignant: the highest
    ``score * p_malignant`` (0.0 without marks). The one rule, so that ``microcalcai evaluate``
    and the benchmarks measure the risk ``detect`` reports (docs/confidence.md, "Risk")."""
    risks = mark_risks(scores, p_malignant)
    return _checked(float(risks.max()) if risks.size else 0.0)


def image_probability(lesions: Sequence[Lesion]) -> float:
    """Probability of one image: the highest ``score * p_malignant`` (0.0 without lesions)."""
    return image_probability_of([les.score for les in lesions], [les.p_malignant for les in lesions])


def image_risk(lesions: Sequence[Lesion], categories: Sequence[RiskCategory], ood: Optional[OodCheck] = None) -> Risk:
    """Risk of one image: the most suspicious lesion decides; a flagged ``ood`` check makes
    the category :data:`INDETERMINATE` (the probability is kept)."""
    p = image_probability(lesions)
    if ood is not None and ood.flagged:
        return Risk(probability=p, category=INDETERMINATE)
    return _risk(p, categories)


def is_indeterminate(image: ImageFindings) -> bool:
    """Whether an image counts as indeterminate: its OOD check is flagged, or its category
    says so (findings read back from an SR keep the category but may lack the check)."""
    return bool(image.ood is not None and image.ood.flagged) or image.risk.category == INDETERMINATE


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


def _combined_risk(
    probabilities: Sequence[float],
    indeterminate: Sequence[bool],
    categories: Sequence[RiskCategory],
    combine: str,
) -> Risk:
    """The risk of a group (breast or exam) whose parts may be indeterminate.

    Probability: ``combine`` over all parts. Category: from the readable parts alone when
    they reach the highest category, else indeterminate as soon as one part is.
    """
    p = _checked(combine_probabilities(probabilities, combine))
    if not any(indeterminate):
        return _risk(p, categories)
    readable = [q for q, unsure in zip(probabilities, indeterminate) if not unsure]
    top = _top_category(categories)
    if readable and category_for(combine_probabilities(readable, combine), categories) == top:
        return Risk(probability=p, category=top)
    return Risk(probability=p, category=INDETERMINATE)


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
        unsure = [is_indeterminate(m) for m in members]
        breasts.append(
            BreastFindings(
                patient_id=first.patient_id,
                study_uid=first.study_uid,
                laterality=lat,
                image_names=[m.name for m in members],
                views=[m.view for m in members],
                risk=_combined_risk([m.risk.probability for m in members], unsure, categories, combine),
                warnings=warnings,
                indeterminate_images=[m.name for m, u in zip(members, unsure) if u],
            )
        )
    return breasts


def exam_findings(breasts: Sequence[BreastFindings], categories: Sequence[RiskCategory]) -> list[ExamFindings]:
    """Group breasts into exams (patient, study) and take the highest breast risk.

    Breasts with neither patient nor study form an exam of their own each, for the same
    reason as in :func:`breast_key`. An indeterminate breast enters as an indeterminate
    image enters a breast (module docstring).
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
            risk=_combined_risk(
                [b.risk.probability for b in members],
                [b.risk.category == INDETERMINATE for b in members],
                categories,
                "max",
            ),
            indeterminate_images=[name for b in members for name in b.indeterminate_images],
        )
        for members in groups.values()
    ]
