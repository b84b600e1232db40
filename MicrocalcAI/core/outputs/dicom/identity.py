"""What our DICOM objects take from the analysed image, and its de-identification.

Every object we write refers to one source image and belongs to its patient and study, so
the writers need the source's header (UIDs, patient and study attributes, geometry), not its
pixels: :func:`read_source_header` re-reads it with ``stop_before_pixels``. The header is
never modified; :func:`prepare_source` returns a copy completed from the findings (laterality
and a two-value PatientOrientation, which the SEG and presentation state IODs need and some
film scans lack) and, when asked, de-identified with :func:`deidentify`.

De-identification follows the PS3.15 Basic Application Confidentiality Profile for the
attributes we copy (patient, study, equipment), with the Retain UIDs Option: the study,
series and instance UIDs stay, so the objects still reference the analysed image (a PACS
that holds the de-identified image under the same UIDs, or our ``render`` command, can
resolve them). Private attributes are dropped.
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path
from typing import Any, Optional, Union

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from MicrocalcAI import __version__
from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.records import ImageFindings

__all__ = [
    "DEIDENTIFICATION_METHOD",
    "MANUFACTURER",
    "derived_instance",
    "deidentify",
    "is_deidentified",
    "mark_deidentified",
    "now",
    "patient_orientation",
    "prepare_source",
    "read_source_header",
]

PathLike = Union[str, "os.PathLike[str]"]

#: General Equipment Manufacturer of every object MicrocalcAI writes.
MANUFACTURER = "MicrocalcAI"

DEIDENTIFICATION_METHOD = "PS3.15 Basic Profile, Retain UIDs Option"  # LO: at most 64 characters

#: Basic profile action Z (replace with an empty value) for the type 2 attributes we copy.
_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
#: Basic profile actions X / D on attributes we would otherwise copy: removed.
_REMOVE = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientTelephoneNumbers",
    "EthnicGroup",
    "PatientComments",
    "IssuerOfPatientID",
    "StudyDescription",
    "SeriesDescription",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "RequestAttributesSequence",
    "ReferencedStudySequence",
    "ReferencedPatientSequence",
)


def read_source_header(path: PathLike) -> Dataset:
    """The header of the analysed DICOM file (no pixels), or a clear error for anything else."""
    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError) as exc:
        raise InputError(f"{Path(path).name}: not a readable DICOM file ({exc})") from exc


def deidentify(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with the patient, study and equipment identity removed (PS3.15 basic
    profile, Retain UIDs Option); the original is left untouched."""
    out = copy.deepcopy(ds)
    out.remove_private_tags()
    for keyword in _EMPTY:
        if keyword in out:
            setattr(out, keyword, "")
    for keyword in _REMOVE:
        if keyword in out:
            delattr(out, keyword)
    mark_deidentified(out)
    return out


def mark_deidentified(ds: Dataset) -> None:
    """Record in ``ds`` that (and how) identity was removed (PS3.3 Patient Identification)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    codes = []
    for value, meaning in (("113100", "Basic Application Confidentiality Profile"), ("113110", "Retain UIDs Option")):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes


def patient_orientation(findings: ImageFindings) -> list[str]:
    """A best-guess (row direction, column direction) for a source without a valid one.

    The SEG and presentation state IODs require a two-value PatientOrientation; film scans
    often carry none or a view name. The guess follows the usual mammogram display: a right
    breast's chest wall on the right of the image (rows run posterior, P), a left breast's on
    the left (A); on CC views the medial side at the bottom (L for a right breast, R for a
    left one), on oblique and lateral views the feet (F).
    """
    side = findings.laterality
    row = "P" if side == "R" else "A"
    view = (findings.view or "").upper()
    if view in ("CC", "XCCL", "XCCM", "FB"):
        column = "L" if side == "R" else "R"
    else:
        column = "F"
    return [row, column]


def prepare_source(ds: Dataset, findings: ImageFindings, *, deidentify_output: bool = False) -> Dataset:
    """The source header as the writers need it: completed from the findings, optionally
    de-identified. ``ds`` itself is never modified."""
    out = deidentify(ds) if deidentify_output else copy.deepcopy(ds)
    orientation = out.get("PatientOrientation")
    if orientation is None or isinstance(orientation, str) or len(orientation) != 2:
        out.PatientOrientation = patient_orientation(findings)
    if findings.laterality in ("L", "R"):
        if not out.get("Laterality"):
            out.Laterality = findings.laterality
        if not out.get("ImageLaterality"):
            out.ImageLaterality = findings.laterality
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
        if keyword not in out:
            setattr(out, keyword, "")
    if "PatientName" not in out:
        out.PatientName = ""
    if "PatientID" not in out:
        out.PatientID = ""
    return out


def now() -> datetime.datetime:
    """Content date and time of the objects we write (local time, as DICOM expects)."""
    return datetime.datetime.now()


def is_deidentified(ds: Dataset) -> bool:
    """Whether ``ds`` says its identity was removed (then the objects made from it say so too)."""
    return str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"


def derived_instance(
    findings: ImageFindings, *, series_uid: Optional[str], sop_uid: Optional[str], series_number: int
) -> dict[str, Any]:
    """The series, instance and equipment arguments of a highdicom object derived from an image.

    One place for them, so the presentation state and the segmentation name the same device
    (MicrocalcAI and the model that made the findings) and take new UIDs the same way.
    """
    import highdicom as hd  # only when a DICOM object is written

    return {
        "series_instance_uid": series_uid or hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": sop_uid or hd.UID(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": findings.model.name,
        "software_versions": f"MicrocalcAI {__version__}, model {findings.model.version}",
        "device_serial_number": "none",
    }
