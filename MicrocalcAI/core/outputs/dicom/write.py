"""Write the four DICOM objects of one analysed image, atomically, and tell whether they exist.

File names derive from the image's output name: ``NAME_cad.sr.dcm`` (Mammography CAD SR),
``NAME_tid1500.sr.dcm`` (TID 1500 Comprehensive SR), ``NAME_gsps.dcm`` (presentation state)
and ``NAME_seg.dcm`` (speck SEG). Each goes through :func:`MicrocalcAI.core.atomic.atomic_open`,
so an interrupted run leaves either the previous file or none. The four share one study
(the source's) and each is its own series.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from MicrocalcAI.core.atomic import atomic_open
from MicrocalcAI.core.errors import InputError, OutputError
from MicrocalcAI.core.outputs.dicom.cad_sr import build_cad_sr
from MicrocalcAI.core.outputs.dicom.gsps import build_gsps
from MicrocalcAI.core.outputs.dicom.identity import is_deidentified, prepare_source, read_source_header
from MicrocalcAI.core.outputs.dicom.seg import build_seg
from MicrocalcAI.core.outputs.dicom.tid1500 import build_tid1500
from MicrocalcAI.core.records import ImageFindings

__all__ = ["DICOM_SUFFIXES", "dicom_output_paths", "dicom_outputs_complete", "write_dicom_outputs"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Object kind -> file name suffix after the image's output name.
DICOM_SUFFIXES = {
    "cad_sr": "_cad.sr.dcm",
    "tid1500": "_tid1500.sr.dcm",
    "gsps": "_gsps.dcm",
    "seg": "_seg.dcm",
}


def dicom_output_paths(name: str, out_dir: PathLike) -> dict[str, Path]:
    """Where the DICOM objects of image ``name`` go, by kind (see :data:`DICOM_SUFFIXES`)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise OutputError(f"invalid output name {name!r}: it must be a plain file name")
    return {kind: Path(out_dir) / f"{name}{suffix}" for kind, suffix in DICOM_SUFFIXES.items()}


def _save(ds: Dataset, path: Path) -> Path:
    with atomic_open(path) as fh:
        ds.save_as(fh, enforce_file_format=True)
    return path


def write_dicom_outputs(
    findings: ImageFindings,
    source_path: Optional[PathLike] = None,
    out_dir: PathLike = ".",
    *,
    deidentify: bool = False,
    source_header: Optional[Dataset] = None,
) -> list[Path]:
    """Write the CAD SR, TID 1500 SR, presentation state and SEG of ``findings``.

    The source image's header comes from ``source_header`` or is re-read (without pixels)
    from ``source_path``, defaulting to ``findings.source``; it must be the analysed image
    (same SOP Instance UID), since every object references it. ``deidentify`` writes the
    patient and study identity de-identified (see :mod:`.identity`). Returns the paths
    written, in the order CAD SR, TID 1500 SR, GSPS, SEG.
    """
    if source_header is None:
        path = source_path if source_path is not None else findings.source
        if path is None:
            raise InputError(f"{findings.name}: DICOM output needs the source DICOM file, and none is known")
        source_header = read_source_header(path)
    if "SOPInstanceUID" not in source_header or "StudyInstanceUID" not in source_header:
        raise InputError(f"{findings.name}: the source has no SOP/Study Instance UID, so it is not a DICOM image")
    if findings.sop_uid is not None and str(source_header.SOPInstanceUID) != findings.sop_uid:
        raise InputError(
            f"{findings.name}: source SOP Instance UID {source_header.SOPInstanceUID} is not the analysed image's "
            f"({findings.sop_uid})"
        )
    rows, cols = int(source_header.get("Rows", 0)), int(source_header.get("Columns", 0))
    if (rows, cols) != tuple(findings.image_shape):
        raise InputError(f"{findings.name}: source is {rows} x {cols} pixels, findings are for {findings.image_shape}")
    source = prepare_source(source_header, findings, deidentify_output=deidentify)
    paths = dicom_output_paths(findings.name, out_dir)
    try:
        with warnings.catch_warnings():
            # highdicom warns about single-component person names, common in research data.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            objects = [
                ("cad_sr", build_cad_sr(findings, source)),
                ("tid1500", build_tid1500(findings, source)),
                ("gsps", build_gsps(findings, source)),
                ("seg", build_seg(findings, source)),
            ]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"{findings.name}: cannot build the DICOM objects: {exc}") from exc
    return [_save(ds, paths[kind]) for kind, ds in objects]


def dicom_outputs_complete(
    name: str, out_dir: PathLike, *, deidentify: bool = False, not_older_than: Optional[PathLike] = None
) -> bool:
    """Whether all four objects of image ``name`` exist, parse, match the ``deidentify`` choice
    and, given ``not_older_than`` (the image's findings JSON), were written after it.

    A re-run with ``--dicom`` writes them again when this answers False (the findings are
    reused when the JSON is still valid). The age check catches objects left from an earlier
    ``--dicom`` run whose findings a later run without ``--dicom`` replaced.
    """
    try:
        oldest = os.stat(not_older_than).st_mtime_ns if not_older_than is not None else None
    except OSError:
        return False
    for path in dicom_output_paths(name, out_dir).values():
        try:
            if oldest is not None and os.stat(path).st_mtime_ns < oldest:
                return False
        except OSError:
            return False
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return False
        if "SOPInstanceUID" not in ds or is_deidentified(ds) != deidentify:
            return False
    return True
