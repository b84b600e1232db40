"""The typed records that flow between the stages (read -> standardise -> detect -> findings).

They are plain dataclasses so that a test, a script in Slicer's console or the Slicer module
can build or inspect any stage's input and output without running the others.

Coordinate convention used everywhere a user can see it (docs/output-format.md):
stored-pixel coordinates of the input image, x = column, y = row, origin at the top-left
*corner* of the top-left pixel, so pixel (row r, column c) covers [c, c+1) x [r, r+1).
Boxes are ``[x0, y0, x1, y1]`` in those continuous coordinates. Millimetres are the same
coordinates multiplied by the pixel spacing (column spacing for x, row spacing for y).
The canonical frame (resampled, flipped, cropped) is internal to the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = [
    "SPACING_SOURCES",
    "BreastFindings",
    "CanonicalImage",
    "CanonicalTransform",
    "Detection",
    "ExamFindings",
    "ImageFindings",
    "Lesion",
    "Mammogram",
    "ModelInfo",
    "OodCheck",
    "Risk",
    "Speck",
]


#: Where a pixel spacing came from, reported in every output.
SPACING_SOURCES = (
    "ImagerPixelSpacing",  # DICOM (0018,1164), detector plane
    "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",  # corrected to the breast plane
    "PixelSpacing",  # DICOM (0028,0030)
    "NominalScannedPixelSpacing",  # DICOM (0018,2010), film digitisers
    "file",  # spacing stored in a NRRD/NIfTI/MHA/TIFF header
    "user",  # --spacing or an explicit argument
    "assumed",  # nothing known: the model's assumed input spacing, with a warning
)


@dataclass
class Mammogram:
    """One 2-D mammogram as stored, plus what is needed to interpret it.

    ``pixels`` are exactly as stored (before any modality LUT, inversion or flip), shape
    (rows, columns). Missing metadata is ``None``/empty, never guessed silently: a guess is
    recorded in the matching ``*_source`` field and in ``warnings``.
    """

    pixels: np.ndarray
    spacing_mm: Optional[tuple[float, float]]  # (row spacing, column spacing); None = unknown
    spacing_source: Optional[str] = None  # one of SPACING_SOURCES, None when unknown
    photometric: str = "MONOCHROME2"  # MONOCHROME1 = bright is low attenuation (must be inverted)
    laterality: Optional[str] = None  # "L" or "R"
    laterality_source: Optional[str] = (
        None  # "ImageLaterality", "Laterality", "PatientID", "SeriesDescription", "filename", "image", "user"
    )
    view: Optional[str] = None  # "CC", "MLO", "ML", "LM", "XCCL", ... (ACR abbreviations, upper case)
    view_source: Optional[str] = None
    presentation_intent: Optional[str] = None  # "FOR PRESENTATION", "FOR PROCESSING" or None
    bits_stored: Optional[int] = None
    rescale_slope: float = 1.0  # modality LUT as linear rescale (DICOM 0028,1053)
    rescale_intercept: float = 0.0  # (DICOM 0028,1052)
    #: Modality LUT as a table (DICOM 0028,3000): (first mapped stored value, table values).
    modality_lut: Optional[tuple[int, np.ndarray]] = None
    modality: Optional[str] = None  # "MG", "DX", "CR", ... or None for non-DICOM files
    manufacturer: Optional[str] = None
    patient_id: Optional[str] = None
    study_uid: Optional[str] = None
    series_uid: Optional[str] = None
    sop_uid: Optional[str] = None
    source: Optional[str] = None  # path of the file read, or None for arrays
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


@dataclass
class CanonicalTransform:
    """Exact, invertible mapping between stored-pixel and canonical coordinates.

    Stored (x, y) -> canonical (u, v), in continuous pixel-corner coordinates:
    1. flip: ``x' = columns - x`` when ``flipped`` else ``x' = x`` (y unchanged);
    2. resample: ``x'' = x' * scale[1]``, ``y'' = y * scale[0]`` where ``scale`` is
       stored spacing / canonical spacing (row, column);
    3. crop: ``u = x'' - offset[1]``, ``v = y'' - offset[0]``.
    """

    stored_shape: tuple[int, int]  # (rows, columns) of the stored image
    flipped: bool  # True when the stored image was mirrored left-right
    scale: tuple[float, float]  # (row, column) stored spacing / canonical spacing
    offset: tuple[float, float]  # (row, column) crop origin in the resampled, flipped frame
    canonical_shape: tuple[int, int]  # (rows, columns) of the canonical image

    def to_canonical_points(self, xy: np.ndarray) -> np.ndarray:
        """Map an (N, 2) array of stored (x, y) points into canonical (u, v)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        x = self.stored_shape[1] - xy[:, 0] if self.flipped else xy[:, 0]
        u = x * self.scale[1] - self.offset[1]
        v = xy[:, 1] * self.scale[0] - self.offset[0]
        return np.stack([u, v], axis=1)

    def to_stored_points(self, uv: np.ndarray) -> np.ndarray:
        """Map an (N, 2) array of canonical (u, v) points back to stored (x, y)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        x = (uv[:, 0] + self.offset[1]) / self.scale[1]
        y = (uv[:, 1] + self.offset[0]) / self.scale[0]
        if self.flipped:
            x = self.stored_shape[1] - x
        return np.stack([x, y], axis=1)

    def _map_boxes(self, boxes: np.ndarray, point_map: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        p0 = point_map(boxes[:, 0:2])
        p1 = point_map(boxes[:, 2:4])
        # A flip swaps which corner is the left one: re-order so x0 <= x1, y0 <= y1.
        return np.concatenate([np.minimum(p0, p1), np.maximum(p0, p1)], axis=1)

    def to_canonical_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) stored ``[x0, y0, x1, y1]`` boxes into the canonical frame."""
        return self._map_boxes(boxes, self.to_canonical_points)

    def to_stored_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) canonical boxes back to stored ``[x0, y0, x1, y1]``."""
        return self._map_boxes(boxes, self.to_stored_points)


@dataclass
class CanonicalImage:
    """A mammogram in the model's frame: what the detector sees.

    ``image`` is float32 in [0, 1], MONOCHROME2 (bright = dense), resampled to isotropic
    ``spacing_mm``, breast on the canonical side (chest wall at the left, column 0), cropped
    to the breast. ``mask`` is the breast mask in the same frame (True = breast tissue).
    """

    image: np.ndarray  # float32 (rows, cols) in [0, 1]
    mask: np.ndarray  # bool (rows, cols)
    spacing_mm: float
    transform: CanonicalTransform
    warnings: list[str] = field(default_factory=list)


@dataclass
class Detection:
    """One detector output in the canonical frame, before it becomes a :class:`Lesion`."""

    box: np.ndarray  # (4,) canonical [u0, v0, u1, v1]
    label: str  # "benign" or "malignant"
    score: float  # detector confidence for ``label``
    p_malignant: float  # P(malignant | lesion) from the class scores, in [0, 1]


@dataclass
class Speck:
    """One individual calcification inside a lesion (a connected component of the speck mask)."""

    centroid_px: tuple[float, float]  # stored (x, y)
    area_px: int  # stored pixels
    area_mm2: float
    diameter_mm: float  # equivalent-circle diameter


@dataclass
class Lesion:
    """A suspicious calcification lesion (a cluster of specks), in stored-pixel coordinates."""

    id: int  # 1-based, ordered by decreasing p_malignant within an image
    box_px: tuple[float, float, float, float]  # stored [x0, y0, x1, y1]
    box_mm: tuple[float, float, float, float]  # box_px times spacing (column spacing for x)
    label: str  # "benign" or "malignant"
    score: float
    p_malignant: float
    area_mm2: float  # area of the box in mm^2
    #: Boolean speck mask over the integer pixel window ``mask_origin`` (row, col) + mask.shape,
    #: in stored pixels: the "highlighted lesion region".
    speck_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    mask_origin: tuple[int, int] = (0, 0)
    specks: list[Speck] = field(default_factory=list)

    @property
    def speck_count(self) -> int:
        return len(self.specks)


@dataclass
class Risk:
    """A probability of malignancy and its category from the model's operating points."""

    probability: float
    category: str


@dataclass
class ModelInfo:
    """Which model produced a result: reported in every output for traceability."""

    name: str
    version: str
    sha256: str
    backbone: str
    spacing_mm: float
    #: :attr:`~MicrocalcAI.core.detect.manifest.ModelSpec.settings_sha256` of the manifest
    #: entry (weights plus calibration, OOD reference, thresholds, input settings); None in
    #: findings written before schema 1.2.
    settings_sha256: Optional[str] = None


@dataclass
class OodCheck:
    """Whether an image looks like what the model was trained on (the "unsure" signal).

    ``score`` is one documented number (docs/output-format.md#ood): larger means less like
    the training data; the image is ``flagged`` when it reaches ``threshold``, which the
    model's manifest entry fixes from data the model was not trained on. ``measurements``
    holds the input statistics and feature distance behind it, ``reasons`` says in words
    which of them are outside the training range. A flagged image's risk category becomes
    "indeterminate" (its probability is still reported).
    """

    score: float
    threshold: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageFindings:
    """Everything found on one image: the unit the outputs are written from."""

    source: Optional[str]
    name: str  # output base name, unique within a batch
    image_shape: tuple[int, int]  # stored (rows, columns)
    spacing_mm: tuple[float, float]  # (row, column) spacing actually used
    spacing_source: str
    photometric: str
    laterality: Optional[str]
    laterality_source: Optional[str]
    view: Optional[str]
    view_source: Optional[str]
    presentation_intent: Optional[str]
    patient_id: Optional[str]
    study_uid: Optional[str]
    series_uid: Optional[str]
    sop_uid: Optional[str]
    manufacturer: Optional[str]
    lesions: list[Lesion]
    risk: Risk
    model: ModelInfo
    score_threshold: float
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: Identity of the input file content ("<size>:<mtime_ns>") so a re-run can tell whether
    #: earlier outputs still describe the file; None for in-memory images.
    input_fingerprint: Optional[str] = None
    #: The out-of-distribution check, or None when the model ships no OOD reference.
    ood: Optional[OodCheck] = None


@dataclass
class BreastFindings:
    """Risk of one breast (one side of one study), combining its views (CC and MLO)."""

    patient_id: Optional[str]
    study_uid: Optional[str]
    laterality: Optional[str]
    image_names: list[str]
    views: list[Optional[str]]
    risk: Risk
    warnings: list[str] = field(default_factory=list)
    #: Names of this breast's images flagged as unlike the training data ("indeterminate"),
    #: whatever the breast's category: the user sees which images the result rests on.
    indeterminate_images: list[str] = field(default_factory=list)


@dataclass
class ExamFindings:
    """Risk of one exam (study): the highest breast risk."""

    patient_id: Optional[str]
    study_uid: Optional[str]
    breasts: list[BreastFindings]
    risk: Risk
    #: Names of the exam's images flagged as unlike the training data (see BreastFindings).
    indeterminate_images: list[str] = field(default_factory=list)
