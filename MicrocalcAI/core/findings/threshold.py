"""Re-thresholding findings: what the engine would have reported at a higher score threshold.

Detection merges every box above a fixed floor and only then applies the threshold (see
:mod:`MicrocalcAI.core.detect.merge`), so the lesions reported at threshold ``t`` are exactly
the lesions reported at any lower threshold with score >= ``t``. Re-thresholding is therefore
a filter on finished findings, without the model: the Slicer threshold slider, a script
exploring operating points and an evaluation sweep all use :func:`rethreshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Optional

from MicrocalcAI.core.detect.manifest import RiskCategory
from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.findings.risk import image_risk
from MicrocalcAI.core.records import ImageFindings

__all__ = ["rethreshold"]


def rethreshold(
    findings: ImageFindings, threshold: Optional[float], categories: Sequence[RiskCategory]
) -> ImageFindings:
    """``findings`` as the engine would report them at lesion score ``threshold``.

    Lesions scoring below the threshold are dropped, the rest renumbered from 1 in their
    original order and the image risk recomputed with ``categories`` (the model's risk
    categories) and the findings' own out-of-distribution check (a flagged image stays
    "indeterminate" at every threshold). A threshold below the one the findings were made at cannot bring back
    lesions that were never reported, so the findings' own threshold is used instead;
    ``None`` means that threshold. The input is not modified.
    """
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"score threshold must be in [0, 1], got {threshold}")
    t = findings.score_threshold if threshold is None else max(float(threshold), float(findings.score_threshold))
    kept = [les for les in findings.lesions if les.score >= t]
    kept = [replace(les, id=i + 1) for i, les in enumerate(kept)]
    return replace(findings, lesions=kept, risk=image_risk(kept, categories, findings.ood), score_threshold=float(t))
