"""INbreast adapter: ``AllXML/*.xml`` (OsiriX plist ROIs) + ``AllDICOMs`` + ``INbreast.csv`` -> COCO.

Box = "Cluster" ROI, or proximity groups of "Calcification" ROIs; class from the image's
BI-RADS (a proxy: INbreast has no per-lesion pathology).
"""

from __future__ import annotations

import logging
import os
import plistlib
import re
import xml.parsers.expat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.read import dicom_row_spacing_mm
from MicrocalcAI.core.records import ProgressCallback
from MicrocalcAI.datasets.common import (
    CocoBuilder,
    ConversionReport,
    PathLike,
    check_source,
    dicom_header,
    or_no_progress,
    read_csv,
    walk_files,
)

__all__ = [
    "INBREAST_SPACING_MM",
    "convert_inbreast",
    "group_points_single_linkage",
]

log = logging.getLogger(__name__)

#: INbreast pixel size (Moreira et al., Acad Radiol 2012: 70 um), used when a DICOM has none.
INBREAST_SPACING_MM = 0.07

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _inbreast_birads(text: str) -> Optional[str]:
    """'4a' -> 'malignant' ... ; BI-RADS 1-3 benign, 4 (a/b/c), 5, 6 malignant, else None."""
    m = re.match(r"^\s*(?:bi-?rads\s*)?([0-6])\s*([abc])?\s*$", str(text), re.IGNORECASE)
    if not m:
        return None
    value = int(m.group(1))
    if 1 <= value <= 3:
        return "benign"
    if 4 <= value <= 6:
        return "malignant"
    return None


def _roi_points(roi: Mapping[str, Any]) -> np.ndarray:
    """(N, 2) float array of a ROI's ``Point_px`` "(x, y)" strings."""
    pts = []
    for item in roi.get("Point_px") or []:
        nums = _NUMBER.findall(str(item))
        if len(nums) < 2:
            raise ValueError(f"point {item!r} is not '(x, y)'")
        pts.append((float(nums[0]), float(nums[1])))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def group_points_single_linkage(centres: np.ndarray, link_px: float) -> list[list[int]]:
    """Groups of indices whose centres are chained by steps of at most ``link_px`` (single linkage).

    This is how calcifications are gathered into clusters when a dataset marks only the
    individual specks: two specks belong to the same cluster when a chain of specks, each
    within ``link_px`` of the next, connects them. Groups are ordered by their smallest index.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        d = np.hypot(*(centres[i + 1 :] - centres[i]).T) if i + 1 < n else np.zeros(0)
        for j in np.flatnonzero(d <= link_px) + i + 1:
            ri, rj = find(i), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [groups[k] for k in sorted(groups)]


def _find_dir(root: Path, name: str) -> Optional[Path]:
    if (root / name).is_dir():
        return root / name
    for folder, dirs, _ in os.walk(root):
        for d in sorted(dirs):
            if d.lower() == name.lower():
                return Path(folder) / d
    return None


def convert_inbreast(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    xml_dir: Optional[PathLike] = None,
    dicom_dir: Optional[PathLike] = None,
    csv_path: Optional[PathLike] = None,
    cluster_link_mm: float = 5.0,
    min_calcifications: int = 3,
    calc_margin_mm: float = 0.5,
    spacing_mm: Optional[float] = None,
    include_negatives: bool = False,
    strict: bool = False,
) -> ConversionReport:
    """Convert INbreast (``AllDICOMs``, ``AllXML``, ``INbreast.csv``) to COCO.

    Lesions: every ROI named "Cluster" is one lesion (box of its outline). On an image with
    "Calcification" ROIs but no Cluster ROI, the calcifications are grouped by single linkage
    of their centres within ``cluster_link_mm`` (default 5 mm); a group of at least
    ``min_calcifications`` (default 3) is one lesion whose box is the bounding box of its
    points widened by ``calc_margin_mm`` (at least half a pixel); smaller groups (isolated
    specks) are not lesions. Distances are in mm through the DICOM's pixel spacing (INbreast's
    0.07 mm when the header has none), so the rule means the same on any detector.
    Class: INbreast has no per-lesion pathology, so the image's BI-RADS from ``INbreast.csv``
    is used as a PROXY: 1-3 benign, 4a/4b/4c/5/6 malignant.
    """
    progress = or_no_progress(progress)
    root = check_source(source)
    out = Path(out_json)
    if cluster_link_mm <= 0 or calc_margin_mm < 0 or int(min_calcifications) < 1:
        raise DatasetError(
            "cluster_link_mm must be > 0, calc_margin_mm >= 0 and min_calcifications >= 1, got "
            f"{cluster_link_mm}, {calc_margin_mm}, {min_calcifications}"
        )
    if spacing_mm is not None and not (0.01 <= float(spacing_mm) <= 1.0):
        raise DatasetError(f"spacing_mm must be between 0.01 and 1.0 mm, got {spacing_mm}")
    xml_root = Path(xml_dir) if xml_dir else _find_dir(root, "AllXML")
    dcm_root = Path(dicom_dir) if dicom_dir else _find_dir(root, "AllDICOMs")
    if xml_root is None or not xml_root.is_dir():
        raise DatasetError(f"no AllXML folder under {root} (pass xml_dir)")
    if dcm_root is None or not dcm_root.is_dir():
        raise DatasetError(f"no AllDICOMs folder under {root} (pass dicom_dir)")
    if csv_path:
        table = Path(csv_path)
    else:
        found = sorted(p for p in walk_files(root) if p.name.lower() == "inbreast.csv")
        if not found:
            xls = [p for p in walk_files(root) if p.name.lower() in ("inbreast.xls", "inbreast.xlsx")]
            hint = f"; export {xls[0]} to CSV (File Name and Bi-Rads columns) and pass csv_path" if xls else ""
            raise DatasetError(f"no INbreast.csv under {root}{hint}")
        table = found[0]
    if not table.is_file():
        raise DatasetError(f"INbreast table not found: {table}")
    birads: dict[str, tuple[str, str, dict[str, str]]] = {}
    for position, row in read_csv(table, ("file name", "bi-rads")):
        name = row["file name"].strip()
        if name:
            birads[name] = (row["bi-rads"], position, row)

    dicoms: dict[str, Path] = {}
    for p in walk_files(dcm_root):
        if p.suffix.lower() in (".dcm", ".dicom"):
            dicoms.setdefault(p.name.split("_")[0], p)
    if not dicoms:
        raise DatasetError(f"no DICOM files in {dcm_root}")

    builder = CocoBuilder("inbreast", root, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "image BI-RADS from INbreast.csv (proxy: 1-3 benign, 4-6 malignant)"
    builder.report.notes += [
        "INbreast has no per-lesion pathology: class = the image's BI-RADS (1-3 benign, 4a-6 malignant), a proxy",
        (
            f"lesions = 'Cluster' ROIs; without one, 'Calcification' ROIs chained within {cluster_link_mm:g} mm "
            f"(single linkage), groups of >= {int(min_calcifications)}, box widened by {calc_margin_mm:g} mm"
        ),
    ]
    ids = sorted(dicoms)
    for n, image_id in enumerate(ids):
        progress(0.02 + 0.93 * n / len(ids), f"INbreast image {image_id}")
        _inbreast_image(
            builder,
            image_id,
            dicoms[image_id],
            xml_root / f"{image_id}.xml",
            birads.get(image_id),
            table,
            float(cluster_link_mm),
            int(min_calcifications),
            float(calc_margin_mm),
            spacing_mm,
        )
    progress(0.97, "writing COCO")
    report = builder.write([table, *sorted(xml_root.glob("*.xml"))])
    progress(1.0, "done")
    return report


def _inbreast_image(
    builder: CocoBuilder,
    image_id: str,
    dicom: Path,
    xml_file: Path,
    table_row: Optional[tuple[str, str, dict[str, str]]],
    table: Path,
    link_mm: float,
    min_calcs: int,
    margin_mm: float,
    spacing_override: Optional[float],
) -> None:
    where = f"{xml_file.parent.name}/{xml_file.name}"
    clusters: list[np.ndarray] = []
    calcs: list[np.ndarray] = []
    if xml_file.is_file():
        try:
            with open(xml_file, "rb") as fh:
                doc = plistlib.load(fh)
            images = doc.get("Images") if isinstance(doc, dict) else None
            if not isinstance(images, list):
                raise ValueError("no 'Images' array in the plist")
            for image in images:
                for k, roi in enumerate(image.get("ROIs") or []):
                    name = str(roi.get("Name", "")).strip().lower()
                    if not name.startswith(("cluster", "calcification")):
                        continue
                    pts = _roi_points(roi)
                    if len(pts) == 0:
                        raise ValueError(f"ROI {k} ({roi.get('Name')}) has no Point_px")
                    (clusters if name.startswith("cluster") else calcs).append(pts)
        except (
            plistlib.InvalidFileException,
            xml.parsers.expat.ExpatError,
            ValueError,
            TypeError,
            AttributeError,
            OSError,
        ) as exc:
            if calcs or clusters or _mentions_calcification(xml_file):
                builder.skip(where, f"unreadable INbreast XML, image {image_id} left out: {exc}")
                return
            builder.skip(where, f"unreadable INbreast XML ({exc}); it names no calcification")
            clusters, calcs = [], []
    if not clusters and not calcs and not builder.include_negatives:
        return
    try:
        ds = dicom_header(dicom)
    except ValueError as exc:
        builder.skip(dicom.name, str(exc))
        return
    width, height = int(ds.Columns), int(ds.Rows)
    spacing = spacing_override or dicom_row_spacing_mm(ds) or INBREAST_SPACING_MM
    meta_row = table_row[2] if table_row else {}
    lat = meta_row.get("laterality", "").strip().upper() or None
    view = meta_row.get("view", "").strip().upper() or None
    key = builder.image(
        str(dicom.resolve()),
        dicom,
        width,
        height,
        spacing_mm=float(spacing),
        laterality=lat if lat in ("L", "R") else None,
        view=view,
        birads=table_row[0] if table_row else None,
        dataset="INbreast",
    )
    if not clusters and not calcs:
        return
    if table_row is None:
        builder.fail_lesion(key, where, f"image {image_id} has no row in {table.name}: no BI-RADS to label it")
        return
    label = _inbreast_birads(table_row[0])
    if label is None:
        builder.fail_lesion(key, where, f"{table.name} {table_row[1]}: BI-RADS {table_row[0]!r} is not 1-6")
        return
    attrs = {"birads": table_row[0].strip()}
    if clusters:
        for k, pts in enumerate(clusters):
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            if x1 - x0 < 1 or y1 - y0 < 1:  # a degenerate outline: widen like a speck group
                pad = max(margin_mm / spacing, 0.5)
                x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
            builder.add_lesion(key, (x0, y0, x1, y1), label, f"{where} cluster {k + 1}", origin="Cluster ROI", **attrs)
        return
    centres = np.array([pts.mean(axis=0) for pts in calcs])
    # At least half a pixel, so that even a lone point speck covers the pixel it marks.
    pad = max(margin_mm / spacing, 0.5)
    for k, members in enumerate(group_points_single_linkage(centres, link_mm / spacing)):
        if len(members) < min_calcs:
            log.info("%s: group of %d calcification(s) is below %d, not a lesion", where, len(members), min_calcs)
            continue
        pts = np.concatenate([calcs[i] for i in members])
        x0, y0 = pts.min(axis=0) - pad
        x1, y1 = pts.max(axis=0) + pad
        builder.add_lesion(
            key,
            (x0, y0, x1, y1),
            label,
            f"{where} group {k + 1}",
            origin="grouped Calcification ROIs",
            calcifications=len(members),
            **attrs,
        )


def _mentions_calcification(xml_file: Path) -> bool:
    """Whether an unparsable XML names calcifications (then its image cannot be kept)."""
    try:
        text = xml_file.read_bytes().lower()
    except OSError:
        return True
    return b"calcification" in text or b"cluster" in text
