"""What every dataset adapter shares: the conversion report, the COCO builder that applies
the common rules, and header-only readers for CSV indexes and image sizes.

Rules every adapter follows, because a training set is only as good as its labels:

* The dataset is only read, never modified; the output is written atomically and is checked
  with :func:`MicrocalcAI.datasets.coco.parse_coco` before the function returns.
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

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.read import has_dicom_preamble
from MicrocalcAI.core.records import ProgressCallback, no_progress
from MicrocalcAI.datasets.coco import LABEL_IDS, coco_bbox, relative_file_name, write_coco

__all__ = [
    "BuilderImage",
    "CocoBuilder",
    "ConversionReport",
    "PathLike",
    "SkippedItem",
    "check_source",
    "dicom_header",
    "display_path",
    "image_size",
    "norm_key",
    "or_no_progress",
    "pgm_size",
    "read_csv",
    "walk_files",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


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
class BuilderImage:
    path: Path
    width: int
    height: int
    meta: dict[str, Any]
    lesions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lesions that could not be converted


class CocoBuilder:
    """Collects images and lesion boxes, applies the shared rules, writes and self-checks."""

    def __init__(self, kind: str, source: Path, out_json: Path, *, strict: bool, include_negatives: bool) -> None:
        self.report = ConversionReport(kind=kind, source=source, out_json=out_json)
        self.strict = strict
        self.include_negatives = include_negatives
        self.images: dict[str, BuilderImage] = {}
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
            self.images[key] = BuilderImage(path=path, width=int(width), height=int(height), meta=clean)
        return key

    def fail_lesion(self, key: str, where: str, reason: str) -> None:
        """A lesion of a registered image could not be converted: skip it, drop the image later."""
        self.skip(where, reason)
        self.images[key].problems.append(f"{where}: {reason}")

    def add_lesion(self, key: str, box: Sequence[float], label: str, where: str, **attributes: Any) -> bool:
        """Add an ``[x0, y0, x1, y1]`` stored-pixel box, clipped to the image; False when unusable."""
        img = self.images[key]
        if label not in LABEL_IDS:
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
                    display_path(img.path, report.source),
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
                "file_name": relative_file_name(img.path, out_json.parent),
                "width": img.width,
                "height": img.height,
            }
            entry.update(img.meta)
            coco_images.append(entry)
            for lesion in img.lesions:
                bbox, area = coco_bbox(lesion["box"])
                ann: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": LABEL_IDS[lesion["label"]],
                    "bbox": bbox,
                    "area": area,
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

        info = {
            "description": f"{report.kind} converted for MicrocalcAI training",
            "source": str(report.source),
            "converter": f"MicrocalcAI {__version__} MicrocalcAI.datasets ({report.kind})",
            "label_source": self.label_source,
            "box_convention": "bbox = [x, y, width, height] in stored pixels of file_name, origin top-left",
        }
        write_coco(out_json, coco_images, annotations, info)  # read back as training will read it
        report.images = len(coco_images)
        report.lesions = counts
        log.info("%s", report.summary(max_skipped=0))
        return report


def display_path(path: Path, source: Path) -> str:
    try:
        return path.resolve().relative_to(source.resolve() if source.is_dir() else source.resolve().parent).as_posix()
    except ValueError:
        return str(path)


# ============================================================================ shared readers


def norm_key(name: str) -> str:
    """Column names compared case- and separator-insensitively ("breast_density" == "Breast density")."""
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (position, row) of a CSV whose delimiter is ``,``, ``;`` or tab.

    ``position`` is "line N" when the record is line N of the file, or "row R (line N)" when
    quoted fields span lines (CBIS-DDSM paths end in a newline), R being the row number a
    spreadsheet shows (header = row 1) and N the line an editor shows. Keys are normalised
    with :func:`norm_key`; a missing required column is a :class:`DatasetError` naming the
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
        fields = [norm_key(f) for f in next(reader)]
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


def dicom_header(path: Path) -> Any:
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


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header; raises ``ValueError`` when unknown."""
    suffix = path.suffix.lower()
    if suffix in (".pgm", ".pnm"):
        return pgm_size(path)
    if suffix in (".dcm", ".dicom", ".dic", ".ima", "") or has_dicom_preamble(path):
        ds = dicom_header(path)
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


def pgm_size(path: Path) -> tuple[int, int]:
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


def check_source(source: PathLike, *, want_dir: bool = True) -> Path:
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if want_dir and not path.is_dir():
        raise DatasetError(f"{path} is not a folder; give the dataset's top folder")
    return path


def walk_files(root: Path) -> Iterator[Path]:
    """All files under ``root`` (following no symlinked folders), in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def or_no_progress(progress: Optional[ProgressCallback]) -> ProgressCallback:
    return progress if progress is not None else no_progress
