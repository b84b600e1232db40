"""Findings JSON and overlays again, from SRs: results that came back from a PACS.

:func:`render_srs` takes SR files and folders (our TID 1500 and Mammography CAD SRs; other
DICOM files there are ignored, our SEGs are used for the speck sizes), reads each into
findings (:func:`.read_sr.read_sr`), finds the analysed image by its SOP Instance UID among
the given image folders, and writes ``NAME.json`` and ``NAME_overlay.png`` as ``detect``
would. When an image has both SRs, the TID 1500 one is used (it also holds the image risk).
An SR whose image is not found still gets its JSON, with one line saying the overlay needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pydicom
from pydicom.errors import InvalidDicomError

from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError
from MicrocalcAI.core.outputs.dicom.read_sr import read_sr, referenced_sop_uid, sr_kind
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.read import find_images, read_mammogram

__all__ = ["RenderResult", "render_srs"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class RenderResult:
    """What :func:`render_srs` wrote and what it could not do."""

    json: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)  # SR paths whose image was not found
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _dicom_files(inputs: Sequence[PathLike]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            log.error("%s: no such file or folder", path)
    return files


def _index_results(files: list[Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(image SOP UID -> SR to use, image SOP UID -> SEG) among ``files``."""
    srs: dict[str, tuple[str, Path]] = {}
    segs: dict[str, Path] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        modality = str(ds.get("Modality", ""))
        if modality == "SEG":
            for series in ds.get("ReferencedSeriesSequence", []) or []:
                for instance in series.get("ReferencedInstanceSequence", []) or []:
                    segs[str(instance.ReferencedSOPInstanceUID)] = path
            continue
        kind = sr_kind(ds) if modality == "SR" else None
        uid = referenced_sop_uid(ds) if kind else None
        if kind is None or uid is None:
            continue
        if uid not in srs or (kind == "tid1500" and srs[uid][0] != "tid1500"):
            srs[uid] = (kind, path)
    return {uid: path for uid, (_, path) in srs.items()}, segs


def _index_images(image_dirs: Sequence[PathLike], wanted: set[str]) -> dict[str, Path]:
    """SOP Instance UID -> image file, for the UIDs in ``wanted`` found in ``image_dirs``."""
    if not image_dirs or not wanted:
        return {}
    files, _ = find_images(image_dirs, recursive=True)
    found: dict[str, Path] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted:
            found[uid] = path
    return found


def render_srs(
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    image_dirs: Sequence[PathLike] = (),
    progress: Optional[ProgressCallback] = None,
) -> RenderResult:
    """Write findings JSON and overlays from the SRs in ``inputs`` (see module docstring)."""
    from MicrocalcAI.core.outputs.findings_json import write_image_json
    from MicrocalcAI.core.outputs.overlay import write_overlay
    from MicrocalcAI.core.pipeline import file_fingerprint
    from MicrocalcAI.core.standardise import normalised_stored

    progress = progress or no_progress
    result = RenderResult()
    srs, segs = _index_results(_dicom_files(inputs))
    if not srs:
        log.error("no MicrocalcAI SR found in %s", ", ".join(str(p) for p in inputs))
        return result
    progress(0.0, "looking for the analysed images")
    images = _index_images(image_dirs, set(srs))
    for i, (uid, sr_path) in enumerate(sorted(srs.items(), key=lambda item: str(item[1]))):
        progress(i / len(srs), sr_path.name)
        try:
            findings = read_sr(sr_path, seg=segs.get(uid))
            image = images.get(uid)
            if image is None:
                log.warning("%s: analysed image (SOP Instance UID %s) not found: JSON only, no overlay", sr_path, uid)
                result.missing_images.append(str(sr_path))
                result.json.append(write_image_json(findings, out_dir))
                continue
            mammogram = read_mammogram(image, spacing_mm=findings.spacing_mm)
            if mammogram.shape != tuple(findings.image_shape):
                raise MicrocalcAIError(f"image {image} is {mammogram.shape}, the SR describes {findings.image_shape}")
            findings.source = str(image)
            findings.input_fingerprint = file_fingerprint(image)
            findings.manufacturer = mammogram.manufacturer
            stored01, _ = normalised_stored(mammogram)
            result.json.append(write_image_json(findings, out_dir))
            result.overlays.append(write_overlay(findings, stored01, out_dir))
        except CancelledError:
            raise
        except MicrocalcAIError as exc:
            log.error("%s: %s", sr_path, exc)
            result.failed.append((str(sr_path), str(exc)))
    progress(1.0, "done")
    return result
