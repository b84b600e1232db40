"""The batch CSV tables: one row per image, per breast and per exam.

The ``ood_*`` image columns are empty when the model ships no out-of-distribution reference;
``ood_flagged`` is ``true``/``false`` otherwise. Breasts and exams list the images flagged as
unlike the training data that they rest on (``indeterminate_images``).

Headers are written even for an empty batch, so a script reading the tables never has to
special-case "nothing analysed".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.outputs.paths import PathLike, output_path
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings

__all__ = ["BREAST_COLUMNS", "EXAM_COLUMNS", "IMAGE_COLUMNS", "LIST_SEPARATOR", "write_batch_tables"]

IMAGE_COLUMNS = (
    "name", "source", "patient_id", "study_uid", "series_uid", "sop_uid", "laterality", "view",
    "n_lesions", "n_malignant", "n_specks", "probability", "category", "spacing_row_mm", "spacing_col_mm",
    "spacing_source", "model", "model_version", "score_threshold", "n_warnings", "warnings",
    "ood_score", "ood_threshold", "ood_flagged", "ood_reasons",
)  # fmt: skip
BREAST_COLUMNS = (
    "patient_id", "study_uid", "laterality", "images", "views", "n_images", "probability", "category", "warnings",
    "indeterminate_images",
)  # fmt: skip
EXAM_COLUMNS = (
    "patient_id", "study_uid", "lateralities", "images", "n_images", "probability", "category",
    "indeterminate_images",
)  # fmt: skip

#: Separator inside one CSV cell that lists several values (image names, views, warnings).
LIST_SEPARATOR = ";"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _csv_text(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _image_row(f: ImageFindings) -> dict[str, Any]:
    return {
        "name": f.name,
        "source": f.source,
        "patient_id": f.patient_id,
        "study_uid": f.study_uid,
        "series_uid": f.series_uid,
        "sop_uid": f.sop_uid,
        "laterality": f.laterality,
        "view": f.view,
        "n_lesions": len(f.lesions),
        "n_malignant": sum(1 for les in f.lesions if les.label == "malignant"),
        "n_specks": sum(les.speck_count for les in f.lesions),
        "probability": float(f.risk.probability),
        "category": f.risk.category,
        "spacing_row_mm": float(f.spacing_mm[0]),
        "spacing_col_mm": float(f.spacing_mm[1]),
        "spacing_source": f.spacing_source,
        "model": f.model.name,
        "model_version": f.model.version,
        "score_threshold": float(f.score_threshold),
        "n_warnings": len(f.warnings),
        "warnings": LIST_SEPARATOR.join(f.warnings),
        "ood_score": None if f.ood is None else float(f.ood.score),
        "ood_threshold": None if f.ood is None else float(f.ood.threshold),
        "ood_flagged": None if f.ood is None else ("true" if f.ood.flagged else "false"),
        "ood_reasons": None if f.ood is None else LIST_SEPARATOR.join(f.ood.reasons),
    }


def _breast_row(b: BreastFindings) -> dict[str, Any]:
    return {
        "patient_id": b.patient_id,
        "study_uid": b.study_uid,
        "laterality": b.laterality,
        "images": LIST_SEPARATOR.join(b.image_names),
        "views": LIST_SEPARATOR.join(v or "" for v in b.views),
        "n_images": len(b.image_names),
        "probability": float(b.risk.probability),
        "category": b.risk.category,
        "warnings": LIST_SEPARATOR.join(b.warnings),
        "indeterminate_images": LIST_SEPARATOR.join(b.indeterminate_images),
    }


def _exam_row(e: ExamFindings) -> dict[str, Any]:
    names = [n for b in e.breasts for n in b.image_names]
    return {
        "patient_id": e.patient_id,
        "study_uid": e.study_uid,
        "lateralities": LIST_SEPARATOR.join(b.laterality or "?" for b in e.breasts),
        "images": LIST_SEPARATOR.join(names),
        "n_images": len(names),
        "probability": float(e.risk.probability),
        "category": e.risk.category,
        "indeterminate_images": LIST_SEPARATOR.join(e.indeterminate_images),
    }


def write_batch_tables(
    images: list[ImageFindings], breasts: list[BreastFindings], exams: list[ExamFindings], out_dir: PathLike
) -> list[Path]:
    """Write ``images.csv``, ``breasts.csv`` and ``exams.csv`` (headers even when empty)."""
    tables = (
        ("images", IMAGE_COLUMNS, [_image_row(f) for f in images]),
        ("breasts", BREAST_COLUMNS, [_breast_row(b) for b in breasts]),
        ("exams", EXAM_COLUMNS, [_exam_row(e) for e in exams]),
    )
    return [atomic_write_text(output_path(out_dir, name, ".csv"), _csv_text(cols, rows)) for name, cols, rows in tables]
