"""Comprehensive SR with a TID 1500 Measurement Report, written with highdicom.

This is what OHIF, Slicer's QuantitativeReporting and research code (highdicom, dcmqi) read.
One Planar ROI Measurements group (TID 1410) per lesion:

* the region: the lesion box as a closed 5-point POLYLINE on the source image (SR has no
  rectangle), in stored-pixel (column, row) coordinates (:mod:`.scoords`);
* finding type Calcification Cluster (SCT 129769006), tracking identifier ``L<id>``;
* qualitative evaluation Pathology = Benign / Malignant (the detector's class);
* measurements: Probability of cancer (p_malignant, no units), Certainty of Finding (the
  detector score, %), Area of the box (mm2), Number of calcifications and, when there are
  specks, their mean Diameter (mm);

per lesion with specks a group (TID 1501, tracking identifier ``L<id> calcifications``,
finding type Individual Calcification) whose Number of calcifications is inferred from the
speck centres (a MULTIPOINT, or a POINT for one speck); and one image-level group with the image risk: Probability of cancer and the
category from the model's operating points as a qualitative evaluation. The algorithm is the
observer (a device) and is named in every group (Algorithm Identification, TID 4019) with
the parameters of :mod:`.parameters`.
"""

from __future__ import annotations

from typing import Optional

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from MicrocalcAI import __version__
from MicrocalcAI.core.outputs.dicom import codes
from MicrocalcAI.core.outputs.dicom.cad_sr import DEVICE_OBSERVER_UID
from MicrocalcAI.core.outputs.dicom.identity import MANUFACTURER, is_deidentified, mark_deidentified
from MicrocalcAI.core.outputs.dicom.parameters import algorithm_parameters
from MicrocalcAI.core.outputs.dicom.scoords import box_polyline
from MicrocalcAI.core.records import ImageFindings, Lesion

__all__ = ["IMAGE_GROUP_IDENTIFIER", "TID1500_SERIES_NUMBER", "build_tid1500", "speck_group_identifier"]

TID1500_SERIES_NUMBER = 9902

#: (126000, DCM, "Imaging Measurement Report") is highdicom's default title; the procedure
#: reported is a mammogram (LOINC 24606-6 "MG Breast Screening"; see CID 100 for alternatives).
PROCEDURE_REPORTED = hd.sr.CodedConcept("24606-6", "LN", "MG Breast Screening")


def _algorithm(f: ImageFindings, with_parameters: bool = False) -> hd.sr.AlgorithmIdentification:
    """The algorithm; its parameters (:mod:`.parameters`) once per report, in the image group."""
    parameters = algorithm_parameters(f) if with_parameters else None
    return hd.sr.AlgorithmIdentification(name=f.model.name, version=f.model.version, parameters=parameters)


def _source_image(source: Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID
    )


def _lesion_group(
    f: ImageFindings, lesion: Lesion, source: Dataset
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    algorithm = _algorithm(f)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(lesion.box_px),
        source_image=_source_image(source),
    )
    measurements = [
        hd.sr.Measurement(
            codes.PROBABILITY_OF_CANCER, float(lesion.p_malignant), codes.UNIT_NONE, algorithm_id=algorithm
        ),
        hd.sr.Measurement(
            codes.CERTAINTY_OF_FINDING, 100.0 * float(lesion.score), codes.UNIT_PERCENT, algorithm_id=algorithm
        ),
        hd.sr.Measurement(codes.AREA, float(lesion.area_mm2), codes.UNIT_MM2, algorithm_id=algorithm),
    ]
    measurements.append(
        hd.sr.Measurement(
            codes.NUMBER_OF_CALCIFICATIONS, float(lesion.speck_count), codes.UNIT_NONE, algorithm_id=algorithm
        )
    )
    if lesion.specks:
        mean_diameter = float(np.mean([s.diameter_mm for s in lesion.specks]))
        measurements.append(hd.sr.Measurement(codes.DIAMETER, mean_diameter, codes.UNIT_MM, algorithm_id=algorithm))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"L{lesion.id}"),
        referenced_region=region,
        finding_type=codes.CALCIFICATION_CLUSTER,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.PATHOLOGY, codes.CLASS_CODES[lesion.label])],
    )


#: Tracking identifier of the image-level group (image risk and the algorithm's parameters).
IMAGE_GROUP_IDENTIFIER = "image risk"


def speck_group_identifier(lesion_id: int) -> str:
    """Tracking identifier of the group that holds lesion ``lesion_id``'s speck centres."""
    return f"L{lesion_id} calcifications"


def _speck_group(f: ImageFindings, lesion: Lesion, source: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The speck centres of one lesion: TID 1410 groups may not carry measurement coordinates,
    so they go in a TID 1501 group, as the coordinates the calcification count is inferred from."""
    algorithm = _algorithm(f)
    points = np.array([s.centroid_px for s in lesion.specks], dtype=np.float32)
    centres = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.MULTIPOINT if len(points) > 1 else hd.sr.GraphicTypeValues.POINT,
        graphic_data=points,
        source_image=_source_image(source),
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=speck_group_identifier(lesion.id)),
        finding_type=codes.INDIVIDUAL_CALCIFICATION,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                codes.NUMBER_OF_CALCIFICATIONS,
                float(lesion.speck_count),
                codes.UNIT_NONE,
                algorithm_id=algorithm,
                referenced_coordinates=[centres],
            )
        ],
    )


def _image_group(f: ImageFindings, source: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = _algorithm(f)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=IMAGE_GROUP_IDENTIFIER),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        algorithm_id=_algorithm(f, with_parameters=True),
        measurements=[
            hd.sr.Measurement(
                codes.PROBABILITY_OF_CANCER, float(f.risk.probability), codes.UNIT_NONE, algorithm_id=algorithm
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.RISK_CATEGORY, codes.risk_category_code(f.risk.category))
        ],
    )


def build_tid1500(
    f: ImageFindings,
    source: Dataset,
    *,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 measurement report of ``f`` as a Comprehensive SR (see module docstring).

    ``source`` is the header prepared by :func:`.identity.prepare_source`; highdicom copies
    the patient and study from it.
    """
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID, name="MicrocalcAI", manufacturer_name=MANUFACTURER, model_name=__version__
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[
            _image_group(f, source),
            *[_lesion_group(f, les, source) for les in f.lesions],
            *[_speck_group(f, les, source) for les in f.lesions if les.specks],
        ],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_uid or hd.UID(),
        series_number=TID1500_SERIES_NUMBER,
        sop_instance_uid=sop_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="MicrocalcAI TID 1500 measurement report (research use only)",
    )
    # Our private coding scheme (risk categories) is declared, as PS3.3 C.12.1.1.2 asks.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = codes.PRIVATE_SCHEME
    scheme.CodingSchemeName = "MicrocalcAI risk categories"
    scheme.CodingSchemeResponsibleOrganization = "MicrocalcAI project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    if is_deidentified(source):
        mark_deidentified(sr)
    return sr
