"""VinDr-Mammo adapter: ``finding_annotations.csv`` + ``images/<study>/<image>.dicom`` -> COCO.

Rows whose categories include "Suspicious Calcification" become lesions; class from the
finding's BI-RADS (a proxy).
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Optional

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.records import ProgressCallback
from MicrocalcAI.datasets.common import (
    CocoBuilder,
    ConversionReport,
    PathLike,
    check_source,
    image_size,
    or_no_progress,
    read_csv,
)

__all__ = [
    "convert_vindr_mammo",
]

log = logging.getLogger(__name__)

_VINDR_REQUIRED = ("study id", "image id", "finding categories", "finding birads", "xmin", "ymin", "xmax", "ymax")


def _categories(text: str) -> list[str]:
    """VinDr's list-like category cell ("['Mass', 'Suspicious Calcification']") as a list."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
            if isinstance(value, (list, tuple)):
                return [str(v).strip() for v in value]
        except (ValueError, SyntaxError):
            pass
        text = text.strip("[]")
    return [t.strip().strip("'\"").strip() for t in text.split(",") if t.strip()]


def _vindr_label(text: str) -> Optional[str]:
    m = re.search(r"([0-6])", text or "")
    if not m:
        return None
    value = int(m.group(1))
    return "benign" if value in (2, 3) else "malignant" if value in (4, 5) else None


def convert_vindr_mammo(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    csv_path: Optional[PathLike] = None,
    images_dir: Optional[PathLike] = None,
    split: Optional[str] = None,
    include_negatives: bool = False,
    strict: bool = False,
) -> ConversionReport:
    """Convert VinDr-Mammo (``finding_annotations.csv`` + ``images/<study_id>/<image_id>.dicom``).

    Rows whose ``finding_categories`` include "Suspicious Calcification" become lesions with
    the row's ``xmin, ymin, xmax, ymax`` box. VinDr gives no pathology: the class is the
    finding's BI-RADS as a PROXY (2-3 benign, 4-5 malignant). ``split`` ("training" or "test")
    keeps the dataset's own split. Images whose findings include no calcification are
    negatives (``include_negatives``).
    """
    progress = or_no_progress(progress)
    root = check_source(source)
    out = Path(out_json)
    table = Path(csv_path) if csv_path else root / "finding_annotations.csv"
    if not table.is_file():
        raise DatasetError(f"VinDr-Mammo table not found: {table} (pass csv_path)")
    images_root = Path(images_dir) if images_dir else root / "images"
    if not images_root.is_dir():
        raise DatasetError(f"VinDr-Mammo images folder not found: {images_root} (pass images_dir)")
    if split is not None:
        split = {"train": "training"}.get(split.lower(), split.lower())
        if split not in ("training", "test"):
            raise DatasetError(f"split must be 'training' or 'test', got {split!r}")
    builder = CocoBuilder("vindr-mammo", root, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "finding BI-RADS (proxy: 2-3 benign, 4-5 malignant)"
    builder.report.notes.append(
        "VinDr-Mammo has no pathology: class = the finding's BI-RADS (2-3 benign, 4-5 malignant), a proxy"
    )
    progress(0.0, f"reading {table.name}")
    rows = list(read_csv(table, _VINDR_REQUIRED))
    by_image: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for line, row in rows:
        if split is not None and row.get("split", "").lower() != split:
            continue
        by_image.setdefault(row["image id"], []).append((line, row))
    for n, (image_id, image_rows) in enumerate(by_image.items()):
        progress(0.05 + 0.9 * n / max(len(by_image), 1), f"VinDr-Mammo image {image_id}")
        calc_rows = [
            (line, row)
            for line, row in image_rows
            if any(c.lower() == "suspicious calcification" for c in _categories(row["finding categories"]))
        ]
        if not calc_rows and not include_negatives:
            continue
        first_line, first = image_rows[0]
        where = f"{table.name} {first_line}"
        path = images_root / first["study id"] / f"{image_id}.dicom"
        if not path.is_file() and (path.with_suffix(".dcm")).is_file():
            path = path.with_suffix(".dcm")
        if not path.is_file():
            builder.skip(where, f"image file not found: {path}")
            continue
        try:
            width, height = int(float(first.get("width", ""))), int(float(first.get("height", "")))
        except ValueError:
            try:
                width, height = image_size(path)
            except ValueError as exc:
                builder.skip(where, f"{path.name}: no width/height in the table and {exc}")
                continue
        lat = first.get("laterality", "").upper()
        key = builder.image(
            str(path.resolve()),
            path,
            width,
            height,
            laterality=lat if lat in ("L", "R") else None,
            view=first.get("view position", "").upper() or None,
            breast_birads=first.get("breast birads"),
            breast_density=first.get("breast density"),
            split=first.get("split"),
            study_id=first.get("study id"),
            dataset="VinDr-Mammo",
        )
        for line, row in calc_rows:
            rwhere = f"{table.name} {line}"
            label = _vindr_label(row["finding birads"])
            if label is None:
                builder.fail_lesion(key, rwhere, f"finding BI-RADS {row['finding birads']!r} is not 2-5")
                continue
            try:
                box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                builder.fail_lesion(key, rwhere, "xmin/ymin/xmax/ymax are not numbers")
                continue
            builder.add_lesion(
                key,
                box,
                label,
                rwhere,
                finding_birads=row["finding birads"],
                finding_categories=row["finding categories"],
            )
    progress(0.97, "writing COCO")
    report = builder.write([table])
    progress(1.0, "done")
    return report
