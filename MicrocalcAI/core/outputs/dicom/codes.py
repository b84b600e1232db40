"""The coded concepts our DICOM objects use, each with a literal code meaning.

Meanings are written out here rather than taken from pydicom's code dictionary: some of its
meanings carry invisible characters (``Individual Impression/\\u200bRecommendation`` holds a
zero-width space) that validators and viewers show as garbage. Values follow PS3.16 (DCM
codes of the Mammography CAD templates TID 4000-4023, SCT codes of CID 6014 and CID 6063).
Concepts no standard context group covers (our risk categories, the probability unit) use
the private scheme ``99MCAI``.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept

__all__ = [
    "ALGORITHM_NAME",
    "ALGORITHM_PARAMETERS",
    "ALGORITHM_VERSION",
    "AREA",
    "BENIGN",
    "DIAMETER",
    "CAD_PROCESSING_AND_FINDINGS_SUMMARY",
    "CALCIFICATION_CLUSTER",
    "CENTER",
    "CERTAINTY_OF_FINDING",
    "CLASS_CODES",
    "DETECTION_PERFORMED",
    "PATHOLOGY",
    "HORIZONTAL_PIXEL_SPACING",
    "IMAGE_LATERALITY",
    "IMAGE_LIBRARY",
    "IMAGE_VIEW",
    "INDIVIDUAL_CALCIFICATION",
    "INDIVIDUAL_IMPRESSION_RECOMMENDATION",
    "LATERALITY_CODES",
    "MALIGNANT",
    "MAMMOGRAPHY_CAD_REPORT",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "NUMBER_OF_CALCIFICATIONS",
    "OUTLINE",
    "PRESENTATION_OPTIONAL",
    "PRESENTATION_REQUIRED",
    "PRIVATE_SCHEME",
    "PROBABILITY_OF_CANCER",
    "RENDERING_INTENT",
    "RISK_CATEGORY",
    "SINGLE_IMAGE_FINDING",
    "SUCCEEDED",
    "SUCCESSFUL_DETECTIONS",
    "SUMMARY_OF_ANALYSES",
    "SUMMARY_OF_DETECTIONS",
    "NOT_ATTEMPTED",
    "UNIT_MM",
    "UNIT_MM2",
    "UNIT_NONE",
    "UNIT_PERCENT",
    "VERTICAL_PIXEL_SPACING",
    "VIEW_CODES",
    "WITH_FINDINGS",
    "WITHOUT_FINDINGS",
    "risk_category_code",
]

PRIVATE_SCHEME = "99MCAI"


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "DCM", meaning)


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


def _ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "UCUM", meaning)


# Document structure of the Mammography CAD SR (TID 4000, 4001, 4003, 4006, 4015, 4019, 4020).
MAMMOGRAPHY_CAD_REPORT = _dcm("111036", "Mammography CAD Report")
IMAGE_LIBRARY = _dcm("111028", "Image Library")
CAD_PROCESSING_AND_FINDINGS_SUMMARY = _dcm("111017", "CAD Processing and Findings Summary")
WITH_FINDINGS = _dcm("111242", "All algorithms succeeded; with findings")
WITHOUT_FINDINGS = _dcm("111241", "All algorithms succeeded; without findings")
INDIVIDUAL_IMPRESSION_RECOMMENDATION = _dcm("111034", "Individual Impression/Recommendation")
SINGLE_IMAGE_FINDING = _dcm("111059", "Single Image Finding")
RENDERING_INTENT = _dcm("111056", "Rendering Intent")
PRESENTATION_REQUIRED = _dcm("111150", "Presentation Required: Rendering device is expected to present")
PRESENTATION_OPTIONAL = _dcm("111151", "Presentation Optional: Rendering device may present")
CERTAINTY_OF_FINDING = _dcm("111012", "Certainty of Finding")
PROBABILITY_OF_CANCER = _dcm("111047", "Probability of cancer")
CENTER = _dcm("111010", "Center")
OUTLINE = _dcm("111041", "Outline")
NUMBER_OF_CALCIFICATIONS = _dcm("111038", "Number of calcifications")
SUMMARY_OF_DETECTIONS = _dcm("111064", "Summary of Detections")
SUMMARY_OF_ANALYSES = _dcm("111065", "Summary of Analyses")
SUCCEEDED = _dcm("111222", "Succeeded")
NOT_ATTEMPTED = _dcm("111225", "Not Attempted")
SUCCESSFUL_DETECTIONS = _dcm("111063", "Successful Detections")
DETECTION_PERFORMED = _dcm("111022", "Detection Performed")
ALGORITHM_NAME = _dcm("111001", "Algorithm Name")
ALGORITHM_VERSION = _dcm("111003", "Algorithm Version")
ALGORITHM_PARAMETERS = _dcm("111002", "Algorithm Parameters")
IMAGE_LATERALITY = _dcm("111027", "Image Laterality")
IMAGE_VIEW = _dcm("111031", "Image View")
HORIZONTAL_PIXEL_SPACING = _dcm("111026", "Horizontal Pixel Spacing")
VERTICAL_PIXEL_SPACING = _dcm("111066", "Vertical Pixel Spacing")
PATHOLOGY = _dcm("111042", "Pathology")

# Findings (CID 6014 Mammography Single Image Finding) and classes (CID 6063).
CALCIFICATION_CLUSTER = _sct("129769006", "Calcification Cluster")
INDIVIDUAL_CALCIFICATION = _sct("129770007", "Individual Calcification")
BENIGN = _sct("30807003", "Benign")
MALIGNANT = _sct("21594007", "Malignant")
CLASS_CODES = {"benign": BENIGN, "malignant": MALIGNANT}
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically Abnormal Structure")
AREA = _sct("42798000", "Area")
DIAMETER = _sct("81827009", "Diameter")

# Laterality (CID 6022 Side) and views (CID 4014 View for Mammography).
LATERALITY_CODES = {
    "L": _sct("7771000", "Left"),
    "R": _sct("24028007", "Right"),
}
VIEW_CODES = {
    "CC": _sct("399162004", "cranio-caudal"),
    "MLO": _sct("399368009", "medio-lateral oblique"),
    "ML": _sct("399260004", "medial-lateral"),
    "LM": _sct("399352003", "latero-medial"),
    "XCCM": _sct("399101009", "cranio-caudal exaggerated medially"),
    "LMO": _sct("399099002", "latero-medial oblique"),
    "SIO": _sct("399188001", "superolateral to inferomedial oblique"),
    "FB": _sct("399196006", "caudo-cranial"),
}

# Units (UCUM).
UNIT_MM = _ucum("mm", "millimeter")
UNIT_MM2 = _ucum("mm2", "square millimeter")
UNIT_PERCENT = _ucum("%", "percent")
UNIT_NONE = _ucum("1", "no units")

# Our own concepts: the image risk category from the model's operating points.
RISK_CATEGORY = CodedConcept("risk-category", PRIVATE_SCHEME, "Cancer risk category")


#: Code values of the categories whose ``risk-<name>`` would exceed the 16 characters of a
#: DICOM code value (SH): "indeterminate" is the category of an image unlike the training
#: data (MicrocalcAI.core.findings.risk.INDETERMINATE).
_RISK_CATEGORY_VALUES = {"indeterminate": "risk-indeterm"}


def risk_category_code(category: str) -> CodedConcept:
    """The coded value of a risk category (``low``, ``intermediate``, ``high``,
    ``indeterminate``, ...); the code meaning is the category name, as read back."""
    value = _RISK_CATEGORY_VALUES.get(category, f"risk-{category}"[:16])
    return CodedConcept(value, PRIVATE_SCHEME, category)
