"""Which images make one exam report, in which order they hang, and what the file is called.

Exams come from :func:`MicrocalcAI.core.findings.risk.exam_findings` (one rule for "which
images are one breast, which breasts are one exam"); this module only orders them. The order
is the radiological hanging order: the same view of both breasts back to back, right breast
on the left of the page (R CC, L CC, R MLO, L MLO), then any other view.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from MicrocalcAI.core.records import ExamFindings, ImageFindings

__all__ = ["ExamImages", "exam_images", "hanging_rank", "report_name", "view_label", "side_name"]

#: Rank of a view within the hanging order: cranio-caudal views first, then the obliques.
_VIEW_RANK = {"CC": 0, "XCCL": 0, "XCCM": 0, "FB": 0, "MLO": 1, "ML": 1, "LM": 1, "LMO": 1, "SIO": 1}
_SIDE_RANK = {"R": 0, "L": 1}


@dataclass
class ExamImages:
    """One exam and its images in hanging order: the unit one report is written from."""

    exam: ExamFindings
    images: list[ImageFindings]
    name: str  # report file base name, unique within the output folder


def _side(image: ImageFindings) -> Optional[str]:
    lat = (image.laterality or "").strip().upper()
    return lat if lat in _SIDE_RANK else None


def hanging_rank(image: ImageFindings) -> tuple[int, int, str]:
    """Sort key: view (CC before MLO before others), then right before left, then name."""
    view = (image.view or "").strip().upper()
    side = _side(image)
    return (_VIEW_RANK.get(view, 2), _SIDE_RANK.get(side, 2) if side else 2, image.name)


def side_name(laterality: Optional[str]) -> str:
    """ "Right", "Left" or "Side unknown" for a breast heading."""
    return {"R": "Right", "L": "Left"}.get((laterality or "").strip().upper(), "Side unknown")


def view_label(image: ImageFindings) -> str:
    """Short label such as "R CC"; "?" where the side or view is unknown."""
    return f"{_side(image) or '?'} {(image.view or '?').strip().upper()}"


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned[:60] or "exam"


def report_name(exam: ExamFindings, images: list[ImageFindings]) -> str:
    """``<patient>`` plus a short digest of the study UID, so two studies of one patient differ.

    Without a patient ID the first image's name stands in (each such image is its own exam).
    """
    base = _safe(exam.patient_id) if exam.patient_id else _safe(images[0].name if images else "exam")
    if exam.study_uid:
        base += "_" + hashlib.sha1(exam.study_uid.encode("utf-8")).hexdigest()[:8]
    return base


def exam_images(images: list[ImageFindings], exams: list[ExamFindings]) -> list[ExamImages]:
    """Attach to each exam its images (looked up by output name) in hanging order.

    Report names are made unique (``_2``, ``_3``...) so no report overwrites another.
    """
    by_name = {f.name: f for f in images}
    out: list[ExamImages] = []
    taken: set[str] = set()
    for exam in exams:
        members = [by_name[n] for b in exam.breasts for n in b.image_names if n in by_name]
        members.sort(key=hanging_rank)
        base = report_name(exam, members)
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        out.append(ExamImages(exam=exam, images=members, name=name))
    return out
