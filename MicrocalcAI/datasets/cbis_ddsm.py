"""CBIS-DDSM adapter: ``calc_case_description_*.csv`` + the TCIA DICOM tree -> COCO.

Box = bounding box of the ROI mask DICOM; class from the biopsy ``pathology``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.records import ProgressCallback
from MicrocalcAI.datasets.common import (
    CocoBuilder,
    ConversionReport,
    PathLike,
    check_source,
    dicom_header,
    display_path,
    or_no_progress,
    read_csv,
    walk_files,
)

__all__ = [
    "convert_cbis_ddsm",
]

log = logging.getLogger(__name__)

#: Top folder of a CBIS-DDSM case in the TCIA tree, e.g. Calc-Training_P_00005_RIGHT_CC(_1).
_CBIS_TOP = re.compile(r"^(calc|mass)-(training|test)_p_\d+_(left|right)_(cc|mlo)(_\d+)?$", re.IGNORECASE)
_UID = re.compile(r"^\d+(\.\d+){3,}$")
_CBIS_REQUIRED = (
    "patient id", "left or right breast", "image view", "abnormality id", "abnormality type", "pathology",
    "image file path", "roi mask file path",
)  # fmt: skip
_CBIS_PATHOLOGY = {"malignant": "malignant", "benign": "benign", "benign without callback": "benign"}


class _CbisIndex:
    """Every DICOM of a downloaded CBIS-DDSM tree, findable by case folder and by UID folder.

    The CSVs name files as ``<case folder>/<study UID>/<series UID>/000000.dcm`` but the NBIA
    retriever writes ``<case folder>/<date>-DDSM-<n>/1.000000-full mammogram images-<n>/1-1.dcm``
    ("descriptive" names) or the UID names ("classic"), and ROI masks and crops of one
    abnormality share a case folder. Matching is therefore by case folder first, then by what
    the DICOM headers say.
    """

    def __init__(self, root: Path, files: Sequence[Path]) -> None:
        self.root = root
        self.by_top: dict[str, list[Path]] = {}
        self.by_uid: dict[str, list[Path]] = {}
        self.roots: set[Path] = set()
        self._headers: dict[Path, Any] = {}
        for path in files:
            if path.suffix.lower() not in (".dcm", ".dicom"):
                continue
            parts = path.relative_to(root).parts
            for i, part in enumerate(parts[:-1]):
                if _CBIS_TOP.match(part):
                    self.by_top.setdefault(part.lower(), []).append(path)
                    self.roots.add(root.joinpath(*parts[:i]))
                    break
            for part in parts[:-1]:
                if _UID.match(part):
                    self.by_uid.setdefault(part, []).append(path)

    def header(self, path: Path) -> Any:
        if path not in self._headers:
            self._headers[path] = dicom_header(path)
        return self._headers[path]

    def candidates(self, csv_path: str, tops: Sequence[str]) -> list[Path]:
        """Files that may be the one a CSV path names: exact path, series UID, then case folder."""
        text = csv_path.strip().strip('"').replace("\\", "/")
        parts = [p for p in text.split("/") if p and p != "."]
        if parts:
            for base in [self.root, *sorted(self.roots)]:
                direct = base.joinpath(*parts)
                if direct.is_file():
                    return [direct]
        wanted_tops = [p.lower() for p in ([parts[0]] if parts and _CBIS_TOP.match(parts[0]) else []) + list(tops)]
        for part in reversed(parts[:-1]):  # the series UID folder names exactly one series
            if _UID.match(part) and part in self.by_uid:
                hits = [p for p in self.by_uid[part] if not wanted_tops or _top_of(p, self.root) in wanted_tops]
                if hits:
                    return hits
        for top in wanted_tops:
            if top in self.by_top:
                return list(self.by_top[top])
        return []


def _top_of(path: Path, root: Path) -> Optional[str]:
    for part in path.relative_to(root).parts:
        if _CBIS_TOP.match(part):
            return part.lower()
    return None


def _cbis_expected_tops(csv_file: Path, first_part: str, row: dict[str, str]) -> tuple[str, str]:
    """Case folder names of the full image and of the ROI, rebuilt from the row's own columns."""
    m = _CBIS_TOP.match(first_part or "")
    if m:
        split = m.group(2).capitalize()
    else:
        split = "Test" if "test" in csv_file.name.lower() else "Training"
    side = row.get("left or right breast", "").upper()
    view = row.get("image view", "").upper()
    patient = row.get("patient id", "")
    full = f"Calc-{split}_{patient}_{side}_{view}"
    return full, f"{full}_{row.get('abnormality id', '').strip()}"


def _series_text(path: Path, ds: Any) -> str:
    return f"{path.parent.name} {ds.get('SeriesDescription', '')}".lower()


def convert_cbis_ddsm(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    split: Optional[str] = None,
    csv_files: Optional[Sequence[PathLike]] = None,
    spacing_mm: Optional[float] = None,
    strict: bool = False,
) -> ConversionReport:
    """Convert CBIS-DDSM calcification cases (TCIA DICOM download) to COCO.

    ``source`` is the folder holding the ``calc_case_description_{train,test}_set.csv`` files
    and the ``CBIS-DDSM/`` DICOM tree (anywhere below it). ``split`` ("train" or "test")
    picks one CSV; by default every calc CSV found is converted. Each row is one abnormality:
    its box is the bounding box of the non-zero pixels of its ROI mask DICOM (same size as the
    full image), its class the biopsy pathology (MALIGNANT -> malignant, BENIGN and
    BENIGN_WITHOUT_CALLBACK -> benign). The DICOMs carry no pixel spacing: pass ``spacing_mm``
    (DDSM scanners digitised at 0.0435-0.05 mm) to record one in every image entry.
    """
    progress = or_no_progress(progress)
    root = check_source(source)
    out = Path(out_json)
    if spacing_mm is not None and not (0.01 <= float(spacing_mm) <= 1.0):
        raise DatasetError(f"spacing_mm must be between 0.01 and 1.0 mm, got {spacing_mm}")
    if split is not None and split.lower() not in ("train", "training", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    progress(0.0, f"indexing {root}")
    files = list(walk_files(root))
    if csv_files:
        csvs = [Path(p) for p in csv_files]
        for p in csvs:
            if not p.is_file():
                raise DatasetError(f"CBIS-DDSM CSV not found: {p}")
    else:
        csvs = [p for p in files if p.suffix.lower() == ".csv" and p.name.lower().startswith("calc_case_description")]
        if split is not None:
            word = "test" if split.lower() == "test" else "train"
            csvs = [p for p in csvs if word in p.name.lower()]
        if not csvs:
            raise DatasetError(
                f"no calc_case_description_*.csv{' for split ' + split if split else ''} under {root}; "
                "download the calcification CSVs from the CBIS-DDSM TCIA page next to the DICOM folder"
            )
    index = _CbisIndex(root, files)
    if not index.by_top:
        raise DatasetError(f"no CBIS-DDSM DICOM case folders (e.g. Calc-Training_P_00005_RIGHT_CC) under {root}")
    builder = CocoBuilder("cbis-ddsm", root, out, strict=strict, include_negatives=False)
    builder.label_source = "biopsy pathology (CSV column 'pathology')"
    builder.report.notes.append(
        "class from biopsy pathology: MALIGNANT -> malignant, BENIGN and BENIGN_WITHOUT_CALLBACK -> benign"
    )
    if spacing_mm is None:
        builder.report.notes.append(
            "CBIS-DDSM DICOMs carry no pixel spacing and none was given: training assumes the model's input "
            "spacing; pass spacing_mm (--spacing, e.g. 0.05) to record one"
        )
    rows: list[tuple[Path, str, dict[str, str]]] = []
    for csv_file in sorted(csvs):
        for position, row in read_csv(csv_file, _CBIS_REQUIRED):
            rows.append((csv_file, position, row))
    for n, (csv_file, position, row) in enumerate(rows):
        where = f"{csv_file.name} {position}"
        progress(0.05 + 0.9 * n / max(len(rows), 1), f"CBIS-DDSM {where}")
        _cbis_row(builder, index, csv_file, where, row, spacing_mm)
    progress(0.97, "writing COCO")
    report = builder.write(csvs)
    progress(1.0, "done")
    return report


def _cbis_row(
    builder: CocoBuilder,
    index: _CbisIndex,
    csv_file: Path,
    where: str,
    row: dict[str, str],
    spacing_mm: Optional[float],
) -> None:
    kind = row.get("abnormality type", "").strip().lower()
    if kind != "calcification":
        builder.skip(where, f"abnormality type {kind or 'empty'!r} is not calcification")
        return
    pathology = re.sub(r"[\s_]+", " ", row.get("pathology", "").strip().lower())
    label = _CBIS_PATHOLOGY.get(pathology)
    image_text = row.get("image file path", "")
    mask_text = row.get("roi mask file path", "")
    first = image_text.strip().replace("\\", "/").split("/")[0]
    top_full, top_roi = _cbis_expected_tops(csv_file, first, row)

    # Full image: the one candidate, or the "full mammogram" series, or the largest image.
    candidates = index.candidates(image_text, [top_full])
    if not candidates:
        builder.skip(where, f"full image not found for {image_text.strip()!r} (looked for folder {top_full})")
        return
    headers = []
    for p in candidates:
        try:
            headers.append((p, index.header(p)))
        except ValueError as exc:
            log.warning("%s: %s", p, exc)
    if not headers:
        builder.skip(where, f"no readable full image among {len(candidates)} file(s) for {top_full}")
        return
    full = [h for h in headers if "full mammogram" in _series_text(*h)] or headers
    image_path, image_ds = max(full, key=lambda h: int(h[1].Rows) * int(h[1].Columns))
    rows_, cols_ = int(image_ds.Rows), int(image_ds.Columns)
    side = row.get("left or right breast", "").strip().upper()
    view = row.get("image view", "").strip().upper()
    key = builder.image(
        str(image_path.resolve()),
        image_path,
        cols_,
        rows_,
        spacing_mm=float(spacing_mm) if spacing_mm is not None else None,
        laterality={"LEFT": "L", "RIGHT": "R"}.get(side),
        view=view if view in ("CC", "MLO") else None,
        patient_id=row.get("patient id"),
        dataset="CBIS-DDSM",
    )
    if label is None:
        builder.fail_lesion(key, where, f"unknown pathology {row.get('pathology')!r}")
        return

    # ROI mask: among the abnormality's files, the one with the full image's size. The whole
    # abnormality folder is searched too: released CSVs sometimes swap the mask and crop paths.
    mask_candidates = []
    for p in index.candidates(mask_text, [top_roi]) + index.by_top.get(top_roi.lower(), []):
        if p != image_path and p not in mask_candidates:
            mask_candidates.append(p)
    sized = []
    sizes = []
    for p in mask_candidates:
        try:
            ds = index.header(p)
        except ValueError:
            continue
        sizes.append(f"{int(ds.Columns)}x{int(ds.Rows)}")
        if (int(ds.Rows), int(ds.Columns)) == (rows_, cols_):
            sized.append((p, ds))
    if not sized:
        found = f" (found {', '.join(sizes)})" if sizes else ""
        builder.fail_lesion(
            key,
            where,
            f"no ROI mask of the image's size {cols_}x{rows_} for {mask_text.strip()!r} in folder {top_roi}{found}",
        )
        return
    sized.sort(key=lambda h: ("mask" not in _series_text(*h), str(h[0])))
    mask_path = sized[0][0]
    try:
        import pydicom

        mask = np.asarray(pydicom.dcmread(str(mask_path)).pixel_array)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, reported per row
        builder.fail_lesion(key, where, f"ROI mask {mask_path} cannot be decoded: {exc}")
        return
    if mask.ndim != 2:
        builder.fail_lesion(key, where, f"ROI mask {mask_path} is not a 2-D image (shape {mask.shape})")
        return
    rows_any = np.flatnonzero(mask.any(axis=1))
    cols_any = np.flatnonzero(mask.any(axis=0))
    if rows_any.size == 0:
        builder.fail_lesion(key, where, f"ROI mask {mask_path} is empty")
        return
    box = (float(cols_any[0]), float(rows_any[0]), float(cols_any[-1] + 1), float(rows_any[-1] + 1))
    builder.add_lesion(
        key,
        box,
        label,
        where,
        pathology=row.get("pathology"),
        abnormality_id=row.get("abnormality id"),
        calc_type=row.get("calc type"),
        calc_distribution=row.get("calc distribution"),
        assessment=row.get("assessment"),
        subtlety=row.get("subtlety"),
        roi_mask=display_path(mask_path, builder.report.source),
    )
