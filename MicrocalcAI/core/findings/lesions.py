"""Lesion records: detector boxes (already in stored pixels) become :class:`Lesion` findings.

This is where a detection gets everything a reader needs beside its class and score: its
size in millimetres and the calcification specks it contains. Lesions are numbered by
decreasing probability of malignancy, so "L1" is always the most suspicious one on an image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.findings.specks import SpeckConfig, segment_specks
from MicrocalcAI.core.records import Lesion, Speck
from MicrocalcAI.core.spacing import check_spacing

log = logging.getLogger(__name__)

#: Lesion classes the detector produces (the manifest's classes without background).
LESION_LABELS = ("benign", "malignant")


@dataclass(frozen=True)
class ClusterRule:
    """When a detection counts as a calcification lesion: enough specks close together.

    Radiology calls calcifications a cluster when at least 3 lie within 1 cm^2 (BI-RADS atlas,
    5th ed.; Sickles, Radiology 1986); a single bright dot is film dust, emulsion grain or an
    isolated benign calcification, which a reader does not mark. The detector alone marks
    such dots on real film (issue 10: 68% of its false marks sat on 1-3 isolated bright
    pixels), so a detection is kept only when the speck segmentation of its box
    (:mod:`MicrocalcAI.core.findings.specks`) finds at least ``min_specks`` specks within a
    circle of ``area_mm2`` around one of them. ``min_specks`` 0 or 1 turns the rule off.
    """

    min_specks: int = 0
    area_mm2: float = 100.0

    def validate(self) -> None:
        if self.min_specks < 0:
            raise InputError(f"min_specks must be >= 0, got {self.min_specks}")
        if not (self.area_mm2 > 0 and math.isfinite(self.area_mm2)):
            raise InputError(f"area_mm2 must be positive, got {self.area_mm2}")


def speck_positions_mm(specks: Sequence[Speck], spacing_mm: tuple[float, float]) -> np.ndarray:
    """(N, 2) speck centroids (x, y) in mm: x by the column spacing, y by the row spacing of
    ``spacing_mm`` (row, column), so that distances between specks are physical."""
    row_mm, col_mm = spacing_mm
    return np.array([(s.centroid_px[0] * col_mm, s.centroid_px[1] * row_mm) for s in specks]).reshape(-1, 2)


def densest_speck_count(specks: Sequence[Speck], spacing_mm: tuple[float, float], area_mm2: float) -> int:
    """Most specks within a circle of ``area_mm2`` centred on one of them (0 without specks)."""
    if not specks:
        return 0
    xy = speck_positions_mm(specks, spacing_mm)
    radius2 = area_mm2 / math.pi
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    return int((d2 <= radius2).sum(axis=1).max())


def clip_box(box: Sequence[float], shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Clip a stored ``[x0, y0, x1, y1]`` box to the image extent ``[0, columns] x [0, rows]``."""
    rows, cols = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        min(max(x0, 0.0), float(cols)),
        min(max(y0, 0.0), float(rows)),
        min(max(x1, 0.0), float(cols)),
        min(max(y1, 0.0), float(rows)),
    )


def box_to_mm(box: Sequence[float], spacing_mm: tuple[float, float]) -> tuple[float, float, float, float]:
    """Stored-pixel box to millimetres: x uses the column spacing, y the row spacing."""
    row_mm, col_mm = spacing_mm
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm)


def _check_inputs(
    boxes: np.ndarray, labels: Sequence[str], scores: Sequence[float], p_malignant: Sequence[float]
) -> None:
    n = boxes.shape[0]
    if not (len(labels) == len(scores) == len(p_malignant) == n):
        raise InputError(
            f"boxes, labels, scores and p_malignant differ in length: {n}, {len(labels)}, {len(scores)}, {len(p_malignant)}"
        )
    if not np.all(np.isfinite(boxes)):
        raise InputError("lesion boxes contain non-finite coordinates")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise InputError("lesion boxes must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
    bad = [lab for lab in labels if lab not in LESION_LABELS]
    if bad:
        raise InputError(f"unknown lesion labels {sorted(set(bad))}; expected {list(LESION_LABELS)}")
    for name, values in (("score", scores), ("p_malignant", p_malignant)):
        for v in values:
            if not (0.0 <= float(v) <= 1.0):
                raise InputError(f"{name} must lie in [0, 1], got {v}")


def build_lesions(
    boxes_px: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float],
    p_malignant: Sequence[float],
    stored01: np.ndarray,
    spacing_mm: tuple[float, float],
    *,
    breast_mask: Optional[np.ndarray] = None,
    speck_config: Optional[SpeckConfig] = None,
    cluster_rule: Optional[ClusterRule] = None,
) -> list[Lesion]:
    """Turn detections in stored pixels into numbered :class:`Lesion` records with specks.

    Boxes are clipped to the image; a box with no area left inside the image is dropped (with
    a log warning) since it shows nothing, and so is a box whose specks do not make a cluster
    under ``cluster_rule`` (default :data:`DEFAULT_CLUSTER_RULE`). Lesions are sorted by
    ``p_malignant`` descending (ties: higher score first, then input order) and numbered from
    1 in that order.
    """
    rule = DEFAULT_CLUSTER_RULE if cluster_rule is None else cluster_rule
    rule.validate()
    image = np.asarray(stored01)
    if image.ndim != 2:
        raise InputError(f"stored01 must be a 2-D image, got shape {image.shape}")
    spacing = check_spacing(spacing_mm)
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4) if np.size(boxes_px) else np.zeros((0, 4))
    _check_inputs(boxes, labels, scores, p_malignant)
    shape = (int(image.shape[0]), int(image.shape[1]))
    order = sorted(range(boxes.shape[0]), key=lambda i: (-float(p_malignant[i]), -float(scores[i]), i))
    lesions: list[Lesion] = []
    for i in order:
        box = clip_box(boxes[i], shape)
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            log.warning("dropping lesion box %s: it has no area inside the %s image", boxes[i].tolist(), shape)
            continue
        mask, origin, specks = segment_specks(image, box, spacing, breast_mask=breast_mask, config=speck_config)
        if rule.min_specks > 1 and densest_speck_count(specks, spacing, rule.area_mm2) < rule.min_specks:
            log.debug("dropping lesion box %s: %d speck(s), no cluster", list(box), len(specks))
            continue
        box_mm = box_to_mm(box, spacing)
        lesions.append(
            Lesion(
                id=len(lesions) + 1,
                box_px=box,
                box_mm=box_mm,
                label=str(labels[i]),
                score=float(scores[i]),
                p_malignant=float(p_malignant[i]),
                area_mm2=float((box_mm[2] - box_mm[0]) * (box_mm[3] - box_mm[1])),
                speck_mask=mask,
                mask_origin=origin,
                specks=specks,
            )
        )
    return lesions


#: The rule :func:`build_lesions` applies unless told otherwise (chosen by measurement on the
#: real-film benchmark, docs/real-film.md).
DEFAULT_CLUSTER_RULE = ClusterRule()

__all__ = [
    "DEFAULT_CLUSTER_RULE",
    "LESION_LABELS",
    "ClusterRule",
    "build_lesions",
    "box_to_mm",
    "clip_box",
    "densest_speck_count",
    "speck_positions_mm",
]
