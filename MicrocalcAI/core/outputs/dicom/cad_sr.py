"""Mammography CAD SR (SOP class 1.2.840.10008.5.1.4.1.1.88.50, TID 4000), written with pydicom.

This is the object mammography review workstations draw CAD marks from. No library builds
it, so the content tree is assembled here, following PS3.16 TID 4000-4023:

    CONTAINER Mammography CAD Report                                  (TID 4000)
      HAS CONCEPT MOD  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name / Manufacturer / Model
      CONTAINS CONTAINER Image Library                                 (TID 4020)
        CONTAINS IMAGE  the analysed image
          HAS ACQ CONTEXT  Image Laterality, Image View, Horizontal / Vertical Pixel Spacing
      CONTAINS CODE CAD Processing and Findings Summary = with / without findings  (TID 4001)
        INFERRED FROM CONTAINER Individual Impression/Recommendation   (TID 4003), one per lesion
          HAS CONCEPT MOD  Rendering Intent = Presentation Required
          CONTAINS CODE Single Image Finding = Calcification Cluster    (TID 4006)
            HAS CONCEPT MOD  Rendering Intent, Algorithm Name / Version / Parameters (TID 4019)
            HAS PROPERTIES   Pathology = Benign / Malignant, Certainty of Finding (%),
                             Probability of cancer (%), Number of calcifications,
                             Center (POINT) and Outline (closed POLYLINE), each
                             SELECTED FROM the Image Library entry (by reference)
            INFERRED FROM CODE Single Image Finding = Individual Calcification, one per speck
              HAS CONCEPT MOD  Rendering Intent = Presentation Optional
              HAS PROPERTIES   Center (POINT), SELECTED FROM the image (by reference)
      CONTAINS CODE Summary of Detections = Succeeded
        INFERRED FROM CONTAINER Successful Detections
          CONTAINS CODE Detection Performed = Calcification Cluster       (TID 4015)
            HAS CONCEPT MOD  Algorithm Name / Version
      CONTAINS CODE Summary of Analyses = Not Attempted

Coordinates are those of :mod:`.scoords` (stored pixels, pixel centres at +0.5).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Optional

import numpy as np
from highdicom import UID
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID as PydicomUID
from pydicom.uid import ExplicitVRLittleEndian

from MicrocalcAI import __version__
from MicrocalcAI.core.outputs.dicom import codes
from MicrocalcAI.core.outputs.dicom.identity import MANUFACTURER, is_deidentified, mark_deidentified, now
from MicrocalcAI.core.outputs.dicom.parameters import algorithm_parameters
from MicrocalcAI.core.outputs.dicom.scoords import box_centre, box_polyline
from MicrocalcAI.core.records import ImageFindings, Lesion

__all__ = ["CAD_SR_SERIES_NUMBER", "DEVICE_OBSERVER_UID", "MAMMOGRAPHY_CAD_SR_STORAGE", "build_cad_sr"]

MAMMOGRAPHY_CAD_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.50"
CAD_SR_SERIES_NUMBER = 9901

#: Copied from the source: the Patient and General Study modules (and the type 3 extras).
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def _code_sequence(code: CodedConcept) -> list[Dataset]:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return [item]


class _Tree:
    """Builds content items and numbers them so that by-reference relationships can point
    at an item by its position (ReferencedContentItemIdentifier, PS3.3 C.17.3.2.5)."""

    @staticmethod
    def item(relationship: Optional[str], value_type: str, name: Optional[CodedConcept]) -> Dataset:
        ds = Dataset()
        if relationship is not None:
            ds.RelationshipType = relationship
        ds.ValueType = value_type
        if name is not None:
            ds.ConceptNameCodeSequence = _code_sequence(name)
        return ds

    @classmethod
    def container(cls, relationship: Optional[str], name: CodedConcept, children: Sequence[Dataset]) -> Dataset:
        ds = cls.item(relationship, "CONTAINER", name)
        ds.ContinuityOfContent = "SEPARATE"
        ds.ContentSequence = list(children)
        return ds

    @classmethod
    def code(
        cls, relationship: str, name: CodedConcept, value: CodedConcept, children: Sequence[Dataset] = ()
    ) -> Dataset:
        ds = cls.item(relationship, "CODE", name)
        ds.ConceptCodeSequence = _code_sequence(value)
        if children:
            ds.ContentSequence = list(children)
        return ds

    @classmethod
    def text(cls, relationship: str, name: CodedConcept, value: str) -> Dataset:
        ds = cls.item(relationship, "TEXT", name)
        ds.TextValue = value
        return ds

    @classmethod
    def uidref(cls, relationship: str, name: CodedConcept, value: str) -> Dataset:
        ds = cls.item(relationship, "UIDREF", name)
        ds.UID = value
        return ds

    @classmethod
    def num(cls, relationship: str, name: CodedConcept, value: float, unit: CodedConcept) -> Dataset:
        ds = cls.item(relationship, "NUM", name)
        measured = Dataset()
        measured.NumericValue = _ds_value(value)
        measured.FloatingPointValue = float(value)
        measured.MeasurementUnitsCodeSequence = _code_sequence(unit)
        ds.MeasuredValueSequence = [measured]
        return ds

    @classmethod
    def scoord(cls, name: CodedConcept, graphic_type: str, points: np.ndarray, image_position: list[int]) -> Dataset:
        ds = cls.item("HAS PROPERTIES", "SCOORD", name)
        ds.GraphicType = graphic_type
        ds.GraphicData = [float(v) for v in np.asarray(points, dtype=np.float32).ravel()]
        ds.ContentSequence = [cls.by_reference("SELECTED FROM", image_position)]
        return ds

    @staticmethod
    def by_reference(relationship: str, position: list[int]) -> Dataset:
        ds = Dataset()
        ds.RelationshipType = relationship
        ds.ReferencedContentItemIdentifier = position
        return ds


def _ds_value(value: float) -> str:
    """A decimal string (at most 16 characters) as close to ``value`` as DS allows."""
    for digits in range(15, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return "0"


def _algorithm(f: ImageFindings, with_parameters: bool) -> list[Dataset]:
    items = [
        _Tree.text("HAS CONCEPT MOD", codes.ALGORITHM_NAME, f.model.name),
        _Tree.text("HAS CONCEPT MOD", codes.ALGORITHM_VERSION, f.model.version),
    ]
    if with_parameters:
        items += [_Tree.text("HAS CONCEPT MOD", codes.ALGORITHM_PARAMETERS, p) for p in algorithm_parameters(f)]
    return items


def _image_entry(f: ImageFindings, source: Dataset) -> Dataset:
    image = _Tree.item("CONTAINS", "IMAGE", None)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.ReferencedSOPSequence = [ref]
    context: list[Dataset] = []
    if f.laterality in codes.LATERALITY_CODES:
        context.append(_Tree.code("HAS ACQ CONTEXT", codes.IMAGE_LATERALITY, codes.LATERALITY_CODES[f.laterality]))
    if f.view in codes.VIEW_CODES:
        context.append(_Tree.code("HAS ACQ CONTEXT", codes.IMAGE_VIEW, codes.VIEW_CODES[f.view]))
    context.append(_Tree.num("HAS ACQ CONTEXT", codes.HORIZONTAL_PIXEL_SPACING, f.spacing_mm[1], codes.UNIT_MM))
    context.append(_Tree.num("HAS ACQ CONTEXT", codes.VERTICAL_PIXEL_SPACING, f.spacing_mm[0], codes.UNIT_MM))
    image.ContentSequence = context
    return image


#: Position of the Image Library's IMAGE item in the tree: root (1) > 3rd child (Image Library,
#: after language and the 5 observer-context items: see :func:`_root_children`) > 1st child.
def _image_position(n_before_library: int) -> list[int]:
    return [1, n_before_library + 1, 1]


def _speck_finding(centroid: tuple[float, float], image_position: list[int]) -> Dataset:
    children = [
        _Tree.code("HAS CONCEPT MOD", codes.RENDERING_INTENT, codes.PRESENTATION_OPTIONAL),
        _Tree.scoord(codes.CENTER, "POINT", np.array([centroid], dtype=np.float32), image_position),
    ]
    return _Tree.code("INFERRED FROM", codes.SINGLE_IMAGE_FINDING, codes.INDIVIDUAL_CALCIFICATION, children)


def _lesion_impression(f: ImageFindings, lesion: Lesion, image_position: list[int]) -> Dataset:
    finding_children = [
        _Tree.code("HAS CONCEPT MOD", codes.RENDERING_INTENT, codes.PRESENTATION_REQUIRED),
        *_algorithm(f, with_parameters=False),
        _Tree.code("HAS PROPERTIES", codes.PATHOLOGY, codes.CLASS_CODES[lesion.label]),
        _Tree.num("HAS PROPERTIES", codes.CERTAINTY_OF_FINDING, 100.0 * lesion.score, codes.UNIT_PERCENT),
        _Tree.num("HAS PROPERTIES", codes.PROBABILITY_OF_CANCER, 100.0 * lesion.p_malignant, codes.UNIT_PERCENT),
        _Tree.num("HAS PROPERTIES", codes.NUMBER_OF_CALCIFICATIONS, lesion.speck_count, codes.UNIT_NONE),
        _Tree.scoord(codes.CENTER, "POINT", box_centre(lesion.box_px), image_position),
        _Tree.scoord(codes.OUTLINE, "POLYLINE", box_polyline(lesion.box_px), image_position),
        *[_speck_finding(s.centroid_px, image_position) for s in lesion.specks],
    ]
    finding = _Tree.code("CONTAINS", codes.SINGLE_IMAGE_FINDING, codes.CALCIFICATION_CLUSTER, finding_children)
    impression = _Tree.container(
        "INFERRED FROM",
        codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION,
        [_Tree.code("HAS CONCEPT MOD", codes.RENDERING_INTENT, codes.PRESENTATION_REQUIRED), finding],
    )
    return impression


def _observer_context(uid: str) -> list[Dataset]:
    return [
        _Tree.code(
            "HAS OBS CONTEXT", CodedConcept("121005", "DCM", "Observer Type"), CodedConcept("121007", "DCM", "Device")
        ),
        _Tree.uidref("HAS OBS CONTEXT", CodedConcept("121012", "DCM", "Device Observer UID"), uid),
        _Tree.text("HAS OBS CONTEXT", CodedConcept("121013", "DCM", "Device Observer Name"), "MicrocalcAI"),
        _Tree.text("HAS OBS CONTEXT", CodedConcept("121014", "DCM", "Device Observer Manufacturer"), MANUFACTURER),
        _Tree.text("HAS OBS CONTEXT", CodedConcept("121015", "DCM", "Device Observer Model Name"), __version__),
    ]


#: One fixed UID for the MicrocalcAI "device" observer, derived from its name (UUID-based, 2.25).
DEVICE_OBSERVER_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_DNS, 'microcalcai.device-observer').int}"


def _content(f: ImageFindings, source: Dataset) -> list[Dataset]:
    language = _Tree.code(
        "HAS CONCEPT MOD",
        CodedConcept("121049", "DCM", "Language of Content Item and Descendants"),
        CodedConcept("en", "RFC5646", "English"),
    )
    before_library = [language, *_observer_context(DEVICE_OBSERVER_UID)]
    image_position = _image_position(len(before_library))
    library = _Tree.container("CONTAINS", codes.IMAGE_LIBRARY, [_image_entry(f, source)])
    impressions = [_lesion_impression(f, lesion, image_position) for lesion in f.lesions]
    summary = _Tree.code(
        "CONTAINS",
        codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY,
        codes.WITH_FINDINGS if f.lesions else codes.WITHOUT_FINDINGS,
        impressions,
    )
    detections = _Tree.code(
        "CONTAINS",
        codes.SUMMARY_OF_DETECTIONS,
        codes.SUCCEEDED,
        [
            _Tree.container(
                "INFERRED FROM",
                codes.SUCCESSFUL_DETECTIONS,
                [
                    _Tree.code(
                        "CONTAINS",
                        codes.DETECTION_PERFORMED,
                        codes.CALCIFICATION_CLUSTER,
                        _algorithm(f, with_parameters=True),
                    )
                ],
            )
        ],
    )
    analyses = _Tree.code("CONTAINS", codes.SUMMARY_OF_ANALYSES, codes.NOT_ATTEMPTED)
    return [*before_library, library, summary, detections, analyses]


def build_cad_sr(
    f: ImageFindings,
    source: Dataset,
    *,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    created: Optional[datetime.datetime] = None,
) -> Dataset:
    """The Mammography CAD SR of ``f`` for the image whose header is ``source``.

    ``source`` is the header prepared by :func:`.identity.prepare_source` (already
    de-identified when asked); patient and study attributes are copied from it.
    """
    created = created or now()
    sop_uid = sop_uid or str(UID())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = PydicomUID(MAMMOGRAPHY_CAD_SR_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = PydicomUID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MAMMOGRAPHY_CAD_SR_STORAGE
    ds.SOPInstanceUID = sop_uid
    for keyword in _PATIENT_STUDY:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    if is_deidentified(source):
        mark_deidentified(ds)
    # SR Document Series and General Equipment.
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid or str(UID())
    ds.SeriesNumber = CAD_SR_SERIES_NUMBER
    ds.SeriesDescription = "MicrocalcAI Mammography CAD SR (research use only)"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f.model.name
    ds.SoftwareVersions = [__version__, f.model.version]
    # SR Document General.
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = created.strftime("%Y%m%d")
    ds.ContentTime = created.strftime("%H%M%S.%f")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.PerformedProcedureCodeSequence = []
    evidence_sop = Dataset()
    evidence_sop.ReferencedSOPClassUID = source.SOPClassUID
    evidence_sop.ReferencedSOPInstanceUID = source.SOPInstanceUID
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = source.SeriesInstanceUID
    evidence_series.ReferencedSOPSequence = [evidence_sop]
    evidence = Dataset()
    evidence.StudyInstanceUID = source.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [evidence_series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    # SR Document Content: the root container.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _code_sequence(codes.MAMMOGRAPHY_CAD_REPORT)
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "4000"
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = _content(f, source)
    return ds
