"""DATASET ADAPTERS: convert public mammography datasets into MicrocalcAI's COCO training format.

``microcalcai train`` reads one format only (see :mod:`MicrocalcAI.training.data`): a COCO JSON file
whose boxes are ``[x, y, w, h]`` in *stored* pixels of the referenced image files, categories
``1 benign`` / ``2 malignant``, image entries optionally carrying ``spacing_mm``,
``laterality`` and ``view``. Users own the public datasets in their published layouts, so each
one gets an adapter here:

=============  =====================================================================
kind           what is read
=============  =====================================================================
cbis-ddsm      ``calc_case_description_*.csv`` + the TCIA DICOM tree; box = bounding
               box of the ROI mask DICOM; class from the biopsy ``pathology``
inbreast       ``AllXML/*.xml`` (OsiriX plist ROIs) + ``AllDICOMs`` + ``INbreast.csv``;
               box = "Cluster" ROI, or proximity groups of "Calcification" ROIs;
               class from the image's BI-RADS (a proxy: no per-lesion pathology)
vindr-mammo    ``finding_annotations.csv`` rows whose categories include "Suspicious
               Calcification" + ``images/<study>/<image>.dicom``; class from the
               finding's BI-RADS (a proxy)
mini-mias      ``Info.txt`` + ``mdbNNN.pgm``; circle (centre, radius) with the origin at
               the BOTTOM-left corner, 200 um pixels
coco           any COCO file: validated, categories mapped to benign/malignant, paths
               made relative to the output file
=============  =====================================================================

Rules every adapter follows, because a training set is only as good as its labels:

* The dataset is only read, never modified; the output is written atomically and is checked
  with :func:`MicrocalcAI.training.data.parse_coco` before the function returns.
* Problems with the whole input (missing folder, index file or column) raise
  :class:`~MicrocalcAI.core.errors.DatasetError` naming the file. Problems with one row or file
  (an unresolvable path, a CALC row without coordinates, an unknown pathology) are skipped and
  listed in the :class:`ConversionReport` with the file and line, so one bad row never stops a
  conversion of thousands; ``strict=True`` turns the first such problem into an error.
* An image on which some calcification lesion could not be converted is dropped as a whole
  (and reported): keeping it would teach the detector that the missing lesion is background.
* Images without any calcification lesion are left out unless ``include_negatives=True``.
* ``spacing_mm``, ``laterality`` and ``view`` are recorded in the image entries when known.

File paths in the output are relative to the output file's folder (absolute only when no
relative path exists, e.g. another drive), so a dataset folder plus its JSON can be moved.
"""

from __future__ import annotations

import ast
import csv
import inspect
import io
import json
import logging
import math
import os
import plistlib
import re
import xml.parsers.expat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.read import dicom_row_spacing_mm, has_dicom_preamble

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Dataset kinds understood by :func:`convert_dataset`.
KINDS = ("cbis-ddsm", "inbreast", "vindr-mammo", "mini-mias", "coco")
#: Other spellings users type for the same kinds.
_KIND_ALIASES = {
    "cbis": "cbis-ddsm", "cbisddsm": "cbis-ddsm", "ddsm": "cbis-ddsm",
    "vindr": "vindr-mammo", "vindrmammo": "vindr-mammo",
    "mias": "mini-mias", "minimias": "mini-mias",
}  # fmt: skip
#: Output category ids (the ids the bundled configs and :mod:`MicrocalcAI.training.data` use).
CATEGORY_IDS = {"benign": 1, "malignant": 2}

#: INbreast pixel size (Moreira et al., Acad Radiol 2012: 70 um), used when a DICOM has none.
INBREAST_SPACING_MM = 0.07
#: mini-MIAS pixel size: the 50 um MIAS films reduced to 200 um (MIAS MiniMammographic Database).
MINI_MIAS_SPACING_MM = 0.2

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", "")


# ============================================================================ report


@dataclass
class SkippedItem:
    """One input row/file/annotation that did not make it into the output, and why."""

    where: str  # e.g. "calc_case_description_train_set.csv line 17" or "AllXML/22678622.xml"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ConversionReport:
    """What a conversion produced and what it left out: printed by the CLI, kept by scripts."""

    kind: str
    source: Path
    out_json: Path
    images: int = 0
    lesions: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0})
    skipped: list[SkippedItem] = field(default_factory=list)
    #: Assumptions the user must know about (label proxies, spacings, clustering rule).
    notes: list[str] = field(default_factory=list)
    #: Annotation files that were read (CSV, XML folder, Info.txt, COCO JSON).
    inputs: list[Path] = field(default_factory=list)

    @property
    def total_lesions(self) -> int:
        return int(sum(self.lesions.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": str(self.source),
            "out_json": str(self.out_json),
            "images": self.images,
            "lesions": dict(self.lesions),
            "skipped": [{"where": s.where, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
            "inputs": [str(p) for p in self.inputs],
        }

    def summary(self, max_skipped: int = 20) -> str:
        """A few human-readable lines: counts, notes, then the first skipped items."""
        lines = [
            (
                f"{self.kind}: wrote {self.out_json} with {self.images} image(s), "
                f"{self.total_lesions} lesion(s) ({self.lesions.get('benign', 0)} benign, "
                f"{self.lesions.get('malignant', 0)} malignant); {len(self.skipped)} item(s) skipped"
            )
        ]
        lines += [f"note: {n}" for n in self.notes]
        for item in self.skipped[:max_skipped]:
            lines.append(f"skipped: {item}")
        if len(self.skipped) > max_skipped:
            lines.append(f"skipped: ... and {len(self.skipped) - max_skipped} more")
        return "\n".join(lines)


# ============================================================================ COCO builder


@dataclass
class _Image:
    path: Path
    width: int
    height: int
    meta: dict[str, Any]
    lesions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lesions that could not be converted


class _CocoBuilder:
    """Collects images and lesion boxes, applies the shared rules, writes and self-checks."""

    def __init__(self, kind: str, source: Path, out_json: Path, *, strict: bool, include_negatives: bool) -> None:
        self.report = ConversionReport(kind=kind, source=source, out_json=out_json)
        self.strict = strict
        self.include_negatives = include_negatives
        self.images: dict[str, _Image] = {}
        self.label_source = ""

    # -- recording
    def skip(self, where: str, reason: str) -> None:
        """Record a skipped input item (or raise in strict mode)."""
        if self.strict:
            raise DatasetError(f"{where}: {reason}")
        log.warning("skipped %s: %s", where, reason)
        self.report.skipped.append(SkippedItem(where, reason))

    def image(self, key: str, path: Path, width: int, height: int, **meta: Any) -> str:
        """Register an image (once per key) and return the key."""
        if key not in self.images:
            clean = {k: v for k, v in meta.items() if v is not None and v != ""}
            self.images[key] = _Image(path=path, width=int(width), height=int(height), meta=clean)
        return key

    def fail_lesion(self, key: str, where: str, reason: str) -> None:
        """A lesion of a registered image could not be converted: skip it, drop the image later."""
        self.skip(where, reason)
        self.images[key].problems.append(f"{where}: {reason}")

    def add_lesion(self, key: str, box: Sequence[float], label: str, where: str, **attributes: Any) -> bool:
        """Add an ``[x0, y0, x1, y1]`` stored-pixel box, clipped to the image; False when unusable."""
        img = self.images[key]
        if label not in CATEGORY_IDS:
            self.fail_lesion(key, where, f"unknown class {label!r}")
            return False
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            self.fail_lesion(key, where, f"box {list(box)} is not finite")
            return False
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        cx0, cy0 = min(max(x0, 0.0), img.width), min(max(y0, 0.0), img.height)
        cx1, cy1 = min(max(x1, 0.0), img.width), min(max(y1, 0.0), img.height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            self.fail_lesion(key, where, f"box {[x0, y0, x1, y1]} lies outside the {img.width}x{img.height} image")
            return False
        clipped = [cx0, cy0, cx1, cy1]
        for other in img.lesions:
            if other["box"] == clipped and other["label"] == label:
                log.info("%s: duplicate of an earlier %s box on the same image, kept once", where, label)
                return True
        attrs = {k: v for k, v in attributes.items() if v is not None and v != ""}
        img.lesions.append({"box": clipped, "label": label, "source": where, "attributes": attrs})
        return True

    # -- output
    def write(self, inputs: Sequence[Path]) -> ConversionReport:
        """Write the COCO file atomically, verify it with ``parse_coco``, fill the report."""
        report = self.report
        out_json = report.out_json
        report.inputs = [Path(p) for p in inputs]
        out_resolved = out_json.resolve()
        for p in inputs:
            if Path(p).resolve() == out_resolved:
                raise DatasetError(f"--out {out_json} is one of the dataset's own files; choose another output path")
        coco_images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        counts = {"benign": 0, "malignant": 0}
        for img in self.images.values():
            if img.problems:
                self.skip(
                    _display(img.path, report.source),
                    f"image left out: {len(img.problems)} calcification lesion(s) on it could not be converted "
                    f"(first: {img.problems[0]}); keeping it would teach the detector they are background",
                )
                continue
            if not img.lesions and not self.include_negatives:
                continue
            if img.path.resolve() == out_resolved:
                raise DatasetError(f"--out {out_json} would overwrite the image {img.path}")
            image_id = len(coco_images) + 1
            entry: dict[str, Any] = {
                "id": image_id,
                "file_name": _relative(img.path, out_json.parent),
                "width": img.width,
                "height": img.height,
            }
            entry.update(img.meta)
            coco_images.append(entry)
            for lesion in img.lesions:
                x0, y0, x1, y1 = lesion["box"]
                ann: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[lesion["label"]],
                    "bbox": [_num(x0), _num(y0), _num(x1 - x0), _num(y1 - y0)],
                    "area": _num((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                    "source": lesion["source"],
                }
                if lesion["attributes"]:
                    ann["attributes"] = lesion["attributes"]
                annotations.append(ann)
                counts[lesion["label"]] += 1
        if not coco_images:
            first = "; ".join(str(s) for s in report.skipped[:5]) or "no calcification lesion found"
            raise DatasetError(f"{report.kind} dataset at {report.source}: nothing to write ({first})")
        from MicrocalcAI import __version__

        data = {
            "info": {
                "description": f"{report.kind} converted for MicrocalcAI training",
                "source": str(report.source),
                "converter": f"MicrocalcAI {__version__} MicrocalcAI.datasets.adapters ({report.kind})",
                "label_source": self.label_source,
                "box_convention": "bbox = [x, y, width, height] in stored pixels of file_name, origin top-left",
            },
            "licenses": [],
            "images": coco_images,
            "annotations": annotations,
            "categories": [
                {"id": CATEGORY_IDS["benign"], "name": "benign", "supercategory": "calcification"},
                {"id": CATEGORY_IDS["malignant"], "name": "malignant", "supercategory": "calcification"},
            ],
        }
        atomic_write_text(out_json, json.dumps(data, indent=1) + "\n")
        from MicrocalcAI.training.data import parse_coco

        parse_coco(out_json)  # the output must load exactly as training will load it
        report.images = len(coco_images)
        report.lesions = counts
        log.info("%s", report.summary(max_skipped=0))
        return report


def _num(value: float) -> Union[int, float]:
    """JSON number: integers stay integers, other values rounded to 1/1000 pixel."""
    r = round(float(value), 3)
    return int(r) if r.is_integer() else r


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.resolve().as_posix()


def _display(path: Path, source: Path) -> str:
    try:
        return path.resolve().relative_to(source.resolve() if source.is_dir() else source.resolve().parent).as_posix()
    except ValueError:
        return str(path)


# ============================================================================ shared readers


def _norm_key(name: str) -> str:
    """Column names compared case- and separator-insensitively ("breast_density" == "Breast density")."""
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def _read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (position, row) of a CSV whose delimiter is ``,``, ``;`` or tab.

    ``position`` is "line N" when the record is line N of the file, or "row R (line N)" when
    quoted fields span lines (CBIS-DDSM paths end in a newline), R being the row number a
    spreadsheet shows (header = row 1) and N the line an editor shows. Keys are normalised
    with :func:`_norm_key`; a missing required column is a :class:`DatasetError` naming the
    file and the columns it does have.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    header = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        fields = [_norm_key(f) for f in next(reader)]
    except StopIteration:
        raise DatasetError(f"{path} is empty") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the file has {fields}")
    record = 1
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"{path} line {start}: {exc}") from exc
        record += 1
        if not any(v.strip() for v in values):
            continue
        row = {k: (values[i].strip() if i < len(values) else "") for i, k in enumerate(fields)}
        yield (f"line {start}" if start == record else f"row {record} (line {start})"), row


def _dicom_header(path: Path) -> Any:
    """The DICOM header without pixels; raises ``ValueError`` with a short reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a readable DICOM file ({exc.__class__.__name__}: {exc})") from exc
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("DICOM file has no image (Rows/Columns missing)")
    return ds


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header; raises ``ValueError`` when unknown."""
    suffix = path.suffix.lower()
    if suffix in (".pgm", ".pnm"):
        return _pgm_size(path)
    if suffix in (".dcm", ".dicom", ".dic", ".ima", "") or has_dicom_preamble(path):
        ds = _dicom_header(path)
        return int(ds.Columns), int(ds.Rows)
    if suffix in (".nrrd", ".nhdr", ".nii", ".gz", ".mha", ".mhd"):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise ValueError(f"unreadable image header: {exc}") from exc
        size = reader.GetSize()
        return int(size[0]), int(size[1])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"unreadable image header: {exc}") from exc


def _pgm_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PGM/PNM header (P2 or P5), comments allowed."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc}") from exc
    tokens: list[bytes] = []
    for line in head.split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 3:
            break
    if len(tokens) < 3 or tokens[0] not in (b"P2", b"P5"):
        raise ValueError("not a PGM file (no P2/P5 header)")
    try:
        return int(tokens[1]), int(tokens[2])
    except ValueError:
        raise ValueError("PGM header has no numeric width/height") from None


def _check_source(source: PathLike, *, want_dir: bool = True) -> Path:
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if want_dir and not path.is_dir():
        raise DatasetError(f"{path} is not a folder; give the dataset's top folder")
    return path


def _walk_files(root: Path) -> Iterator[Path]:
    """All files under ``root`` (following no symlinked folders), in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _progress(progress: Optional[ProgressCallback]) -> ProgressCallback:
    return progress if progress is not None else no_progress


# ============================================================================ CBIS-DDSM

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
            self._headers[path] = _dicom_header(path)
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
    progress = _progress(progress)
    root = _check_source(source)
    out = Path(out_json)
    if spacing_mm is not None and not (0.01 <= float(spacing_mm) <= 1.0):
        raise DatasetError(f"spacing_mm must be between 0.01 and 1.0 mm, got {spacing_mm}")
    if split is not None and split.lower() not in ("train", "training", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    progress(0.0, f"indexing {root}")
    files = list(_walk_files(root))
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
    builder = _CocoBuilder("cbis-ddsm", root, out, strict=strict, include_negatives=False)
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
        for position, row in _read_csv(csv_file, _CBIS_REQUIRED):
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
    builder: _CocoBuilder,
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
        roi_mask=_display(mask_path, builder.report.source),
    )


# ============================================================================ INbreast

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
    progress = _progress(progress)
    root = _check_source(source)
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
        found = sorted(p for p in _walk_files(root) if p.name.lower() == "inbreast.csv")
        if not found:
            xls = [p for p in _walk_files(root) if p.name.lower() in ("inbreast.xls", "inbreast.xlsx")]
            hint = f"; export {xls[0]} to CSV (File Name and Bi-Rads columns) and pass csv_path" if xls else ""
            raise DatasetError(f"no INbreast.csv under {root}{hint}")
        table = found[0]
    if not table.is_file():
        raise DatasetError(f"INbreast table not found: {table}")
    birads: dict[str, tuple[str, str, dict[str, str]]] = {}
    for position, row in _read_csv(table, ("file name", "bi-rads")):
        name = row["file name"].strip()
        if name:
            birads[name] = (row["bi-rads"], position, row)

    dicoms: dict[str, Path] = {}
    for p in _walk_files(dcm_root):
        if p.suffix.lower() in (".dcm", ".dicom"):
            dicoms.setdefault(p.name.split("_")[0], p)
    if not dicoms:
        raise DatasetError(f"no DICOM files in {dcm_root}")

    builder = _CocoBuilder("inbreast", root, out, strict=strict, include_negatives=include_negatives)
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
    builder: _CocoBuilder,
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
        ds = _dicom_header(dicom)
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


# ============================================================================ VinDr-Mammo

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
    progress = _progress(progress)
    root = _check_source(source)
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
    builder = _CocoBuilder("vindr-mammo", root, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "finding BI-RADS (proxy: 2-3 benign, 4-5 malignant)"
    builder.report.notes.append(
        "VinDr-Mammo has no pathology: class = the finding's BI-RADS (2-3 benign, 4-5 malignant), a proxy"
    )
    progress(0.0, f"reading {table.name}")
    rows = list(_read_csv(table, _VINDR_REQUIRED))
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
                width, height = _image_size(path)
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


# ============================================================================ mini-MIAS


def convert_mini_mias(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    info_txt: Optional[PathLike] = None,
    include_negatives: bool = False,
    strict: bool = False,
) -> ConversionReport:
    """Convert mini-MIAS (``Info.txt`` + ``mdbNNN.pgm``) calcification rows to COCO.

    ``Info.txt`` rows are ``REFNUM BG CLASS SEVERITY X Y RADIUS``; CLASS ``CALC`` rows are
    lesions, SEVERITY B/M the class. The centre (X, Y) has its ORIGIN AT THE BOTTOM-LEFT
    corner, so the stored row is ``height - Y``; the box is the circle's square
    ``[X - R, height - Y - R, X + R, height - Y + R]`` clipped to the image. CALC rows without
    a centre (calcifications spread over the whole image) cannot be boxed: their image is
    left out and reported. Images are 200 um per pixel (recorded as ``spacing_mm`` 0.2), all
    MLO views; even numbers are left breasts, odd numbers right (Info.txt, note 1).
    Negatives (``include_negatives``) are the NORM images only: an image listed for a mass
    may hold calcifications nobody marked.
    """
    progress = _progress(progress)
    root = _check_source(source)
    out = Path(out_json)
    files = list(_walk_files(root))
    if info_txt:
        info = Path(info_txt)
        if not info.is_file():
            raise DatasetError(f"mini-MIAS Info.txt not found: {info}")
    else:
        found = [p for p in files if p.name.lower() == "info.txt"]
        if not found:
            raise DatasetError(f"no Info.txt under {root} (pass info_txt)")
        info = found[0]
    pgms = {p.stem.lower(): p for p in files if p.suffix.lower() == ".pgm"}
    builder = _CocoBuilder("mini-mias", root, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "MIAS severity B/M"
    builder.report.notes.append(
        "mini-MIAS centres use a bottom-left origin: stored y = height - Y; box = centre +- radius, clipped; "
        f"spacing {MINI_MIAS_SPACING_MM} mm"
    )
    try:
        lines = info.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {info}: {exc}") from exc
    rows: list[tuple[int, list[str]]] = []
    for number, text in enumerate(lines, start=1):
        tokens = text.split()
        if not tokens or tokens[0].startswith("#") or tokens[0].upper() == "REFNUM":
            continue
        if not re.match(r"^mdb\d+$", tokens[0], re.IGNORECASE):
            builder.skip(f"{info.name} line {number}", f"not a MIAS row: {text.strip()[:60]!r}")
            continue
        rows.append((number, tokens))
    if not rows:
        raise DatasetError(f"{info}: no MIAS rows (expected lines like 'mdb209 G CALC M 647 503 87')")
    for n, (number, tokens) in enumerate(rows):
        progress(0.05 + 0.9 * n / len(rows), f"mini-MIAS {tokens[0]}")
        where = f"{info.name} line {number}"
        ref = tokens[0].lower()
        klass = tokens[2].upper() if len(tokens) > 2 else ""
        if klass != "CALC" and not (include_negatives and klass == "NORM"):
            continue
        path = pgms.get(ref)
        if path is None:
            builder.skip(where, f"image {ref}.pgm not found under {root}")
            continue
        try:
            width, height = _pgm_size(path)
        except ValueError as exc:
            builder.skip(where, f"{path.name}: {exc}")
            continue
        digits = int(re.sub(r"\D", "", ref))
        key = builder.image(
            str(path.resolve()),
            path,
            width,
            height,
            spacing_mm=MINI_MIAS_SPACING_MM,
            laterality="L" if digits % 2 == 0 else "R",
            view="MLO",
            background_tissue=tokens[1].upper() if len(tokens) > 1 else None,
            dataset="mini-MIAS",
        )
        if klass != "CALC":
            continue
        severity = tokens[3].upper() if len(tokens) > 3 else ""
        label = {"B": "benign", "M": "malignant"}.get(severity)
        if label is None:
            builder.fail_lesion(key, where, f"severity {severity or 'missing'!r} is not B or M")
            continue
        try:
            if len(tokens) < 7:
                raise ValueError("too few columns")
            x, y, r = (float(t) for t in tokens[4:7])
        except ValueError:
            builder.fail_lesion(
                key,
                where,
                "CALC row without centre and radius (calcifications spread over the image; Info.txt note 4)",
            )
            continue
        if r <= 0:
            builder.fail_lesion(key, where, f"radius {tokens[6]} is not positive")
            continue
        y_stored = height - y  # bottom-left origin -> top-left stored rows
        builder.add_lesion(
            key,
            (x - r, y_stored - r, x + r, y_stored + r),
            label,
            where,
            severity=severity,
            centre_info_txt=[x, y],
            radius_px=r,
        )
    progress(0.97, "writing COCO")
    report = builder.write([info])
    progress(1.0, "done")
    return report


# ============================================================================ generic COCO

_IGNORE = ("ignore", "none", "skip", "")


def convert_coco(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    category_map: Optional[Mapping[str, Optional[str]]] = None,
    image_root: Optional[PathLike] = None,
    include_negatives: bool = True,
    strict: bool = False,
) -> ConversionReport:
    """Validate and normalise any COCO file into MicrocalcAI's COCO form.

    Categories named ``benign`` / ``malignant`` (any case) map to ids 1 / 2; other names need
    ``category_map`` ({source name: "benign" | "malignant" | None to ignore}); an unmapped
    category that has annotations is an error, because silently dropping it would turn those
    lesions into background. ``file_name`` is resolved against ``image_root`` (default: the
    COCO file's folder); image sizes are read from the files and a size that contradicts the
    COCO entry drops the image (its boxes would be in another pixel grid). Boxes come from
    ``bbox``, or from polygon ``segmentation`` when there is no bbox.
    """
    progress = _progress(progress)
    src = _check_source(source, want_dir=False)
    if src.is_dir():
        found = sorted(src.glob("*.json"))
        if len(found) != 1:
            raise DatasetError(f"{src} holds {len(found)} .json files; give the COCO file itself")
        src = found[0]
    out = Path(out_json)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"COCO file {src} is not readable JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise DatasetError(f"COCO file {src}: needs 'images' and 'categories' lists")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"COCO file {src}: 'annotations' must be a list")
    base = Path(image_root) if image_root else src.parent

    mapping = {"benign": "benign", "malignant": "malignant"}
    for name, target in (category_map or {}).items():
        t = None if target is None else str(target).strip().lower()
        if t is not None and t not in _IGNORE and t not in CATEGORY_IDS:
            raise DatasetError(f"category_map: {name!r} -> {target!r}; targets are benign, malignant or ignore")
        mapping[str(name).strip().lower()] = None if t in _IGNORE or t is None else t
    cat_label: dict[Any, Optional[str]] = {}
    unmapped: dict[Any, str] = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"COCO file {src}: categories[{k}] needs 'id' and 'name'")
        name = str(cat["name"]).strip().lower()
        if name in mapping:
            cat_label[cat["id"]] = mapping[name]
        else:
            unmapped[cat["id"]] = str(cat["name"])
    used_unmapped = sorted(
        {
            unmapped[a.get("category_id")]
            for a in annotations
            if isinstance(a, dict) and a.get("category_id") in unmapped
        }
    )
    if used_unmapped:
        raise DatasetError(
            f"COCO file {src}: categories {used_unmapped} have annotations but no mapping; pass category_map "
            "(e.g. --category-map 'calc_m=malignant' 'mass=ignore')"
        )

    builder = _CocoBuilder("coco", src, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "source COCO categories"
    ignored = 0
    keys: dict[Any, Optional[str]] = {}
    for k, entry in enumerate(data["images"]):
        progress(0.8 * k / max(len(data["images"]), 1), "checking images")
        where = f"{src.name} images[{k}]"
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            builder.skip(where, "image entry needs 'id' and 'file_name'")
            continue
        if entry["id"] in keys:
            raise DatasetError(f"{where}: duplicate image id {entry['id']!r}")
        keys[entry["id"]] = None
        path = Path(str(entry["file_name"]))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            builder.skip(where, f"image file not found: {path}")
            continue
        try:
            width, height = _image_size(path)
        except ValueError as exc:
            builder.skip(where, f"{path.name}: {exc}")
            continue
        given = (entry.get("width"), entry.get("height"))
        if all(isinstance(v, (int, float)) for v in given) and (int(given[0]), int(given[1])) != (width, height):
            builder.skip(where, f"COCO says {given[0]}x{given[1]} but {path.name} is {width}x{height}")
            continue
        meta: dict[str, Any] = {}
        spacing = entry.get("spacing_mm")
        if isinstance(spacing, (list, tuple)) and spacing:
            spacing = spacing[0]
        if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) and 0.01 <= spacing <= 1.0:
            meta["spacing_mm"] = float(spacing)
        elif spacing is not None:
            builder.skip(where, f"spacing_mm {entry.get('spacing_mm')!r} is not a plausible spacing; not recorded")
        lat = str(entry.get("laterality", "")).strip().upper()[:1]
        if lat in ("L", "R"):
            meta["laterality"] = lat
        if entry.get("view"):
            meta["view"] = str(entry["view"]).strip().upper()
        for extra_key, value in entry.items():
            if extra_key not in ("id", "file_name", "width", "height", "spacing_mm", "laterality", "view"):
                meta.setdefault(extra_key, value)
        keys[entry["id"]] = builder.image(f"{k}:{path.resolve()}", path, width, height, **meta)

    for k, ann in enumerate(annotations):
        where = f"{src.name} annotations[{k}]"
        if not isinstance(ann, dict):
            builder.skip(where, "annotation is not an object")
            continue
        key = keys.get(ann.get("image_id"), "missing")
        if key == "missing":
            builder.skip(where, f"unknown image_id {ann.get('image_id')!r}")
            continue
        if key is None:
            continue  # its image was already skipped and reported
        if ann.get("category_id") not in cat_label:
            builder.fail_lesion(key, where, f"unknown category_id {ann.get('category_id')!r}")
            continue
        label = cat_label[ann["category_id"]]
        if label is None:
            ignored += 1
            continue
        box = _coco_box(ann)
        if box is None:
            builder.fail_lesion(key, where, f"no usable bbox or polygon segmentation (bbox {ann.get('bbox')!r})")
            continue
        builder.add_lesion(key, box, label, where, source_annotation_id=ann.get("id"))
    if ignored:
        builder.report.notes.append(f"{ignored} annotation(s) of categories mapped to 'ignore' were dropped")
    progress(0.9, "writing COCO")
    report = builder.write([src])
    progress(1.0, "done")
    return report


def _coco_box(ann: Mapping[str, Any]) -> Optional[tuple[float, float, float, float]]:
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return None
        if all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0:
            return (x, y, x + w, y + h)
        return None
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
        try:
            pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if p])
        except ValueError:
            return None
        if len(pts) and np.all(np.isfinite(pts)):
            (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
            if x1 > x0 and y1 > y0:
                return (float(x0), float(y0), float(x1), float(y1))
    return None


# ============================================================================ dispatch

_CONVERTERS: dict[str, Callable[..., ConversionReport]] = {
    "cbis-ddsm": convert_cbis_ddsm,
    "inbreast": convert_inbreast,
    "vindr-mammo": convert_vindr_mammo,
    "mini-mias": convert_mini_mias,
    "coco": convert_coco,
}


def normalise_kind(kind: str) -> str:
    """The canonical dataset kind for what a user typed ("CBIS_DDSM", "vindr", "MIAS" ...)."""
    text = str(kind).strip().lower().replace("_", "-")
    if text in _CONVERTERS:
        return text
    squeezed = text.replace("-", "")
    for name in _CONVERTERS:
        if name.replace("-", "") == squeezed:
            return name
    if squeezed in _KIND_ALIASES:
        return _KIND_ALIASES[squeezed]
    raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")


def convert_dataset(
    kind: str,
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    **options: Any,
) -> ConversionReport:
    """Convert the dataset at ``source`` of the given ``kind`` into the COCO file ``out_json``.

    ``options`` are the keyword options of the matching ``convert_*`` function; an option that
    kind does not take is a :class:`DatasetError` (a typo must not be silently ignored).
    Options given as None are treated as not given, so a CLI can pass every flag through.
    """
    name = normalise_kind(kind)
    converter = _CONVERTERS[name]
    accepted = set(inspect.signature(converter).parameters) - {"source", "out_json", "progress"}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise DatasetError(f"option(s) {unknown} do not apply to {name}; it takes {sorted(accepted)}")
    log.info("converting %s dataset %s -> %s", name, source, out_json)
    return converter(Path(source), Path(out_json), progress=progress, **given)
