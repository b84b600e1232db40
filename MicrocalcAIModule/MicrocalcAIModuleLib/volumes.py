"""Volume node (and, when it came from DICOM, its source file and tags) -> Mammogram.

No image processing happens here: the engine reads and standardises. This module decides
*which* pixels and metadata the engine gets and how they lie on the volume's grid:

1. The volume came from DICOM and its file is readable: the engine reads **the file**
   (:func:`MicrocalcAI.core.read.read_mammogram`), so it gets the stored pixels exactly as in
   the file plus every tag it knows (photometric interpretation - Slicer's loader does not
   invert MONOCHROME1 -, ImagerPixelSpacing and the magnification correction, laterality,
   view, presentation intent, UIDs, modality LUT). The orientation of the file's pixel grid
   on the volume's IJK grid is then *measured* (:func:`match_pixel_mapping`) rather than
   assumed, so a loader that flips rows is handled too.
2. Otherwise the volume's own array is the stored image (IJK order: column i, row j), with
   spacing from the volume and photometric, laterality, view and UIDs from the DICOM tags
   when known (Slicer's DICOM database), else from the node name, else estimated by the
   engine with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .geometry import PixelMapping

__all__ = [
    "DICOM_TAGS",
    "MATCH_CORRELATION",
    "MATCH_SAMPLES",
    "UNKNOWN_SPACING",
    "DicomSource",
    "VolumeError",
    "VolumeImage",
    "dicom_source_from_database",
    "mammogram_volumes",
    "match_pixel_mapping",
    "tags_from_mapping",
    "volume_plane",
    "volume_to_mammogram",
]


log = logging.getLogger(__name__)

#: DICOM tags the module reads from Slicer's DICOM database (keyword -> "gggg,eeee").
DICOM_TAGS: dict[str, str] = {
    "PhotometricInterpretation": "0028,0004",
    "ImageLaterality": "0020,0062",
    "Laterality": "0020,0060",
    "ViewPosition": "0018,5101",
    "PatientID": "0010,0020",
    "StudyInstanceUID": "0020,000D",
    "SeriesInstanceUID": "0020,000E",
    "SOPInstanceUID": "0008,0018",
    "Modality": "0008,0060",
    "Manufacturer": "0008,0070",
    "PresentationIntentType": "0008,0068",
    "ImagerPixelSpacing": "0018,1164",
    "PixelSpacing": "0028,0030",
    "SeriesDescription": "0008,103E",
}

#: Volume spacing that means "the file had none" (Slicer's default for PNG/JPEG/TIFF).
UNKNOWN_SPACING = (1.0, 1.0)
#: Correlation above which a flip/transpose of the file is taken as the volume's pixel grid.
MATCH_CORRELATION = 0.98
#: At most this many samples per axis are compared when matching the file to the volume.
MATCH_SAMPLES = 256


class VolumeError(ValueError):
    """The selected node cannot be analysed as a mammogram (clear, user-facing message)."""


@dataclass
class DicomSource:
    """What Slicer's DICOM database knows about a volume's source instance."""

    file: Optional[str] = None  # path of the (first) instance file, when known and present
    tags: dict[str, str] = field(default_factory=dict)  # DICOM keyword -> value (strings)

    def tag(self, keyword: str) -> Optional[str]:
        value = self.tags.get(keyword)
        if value is None:
            return None
        value = str(value).strip()
        return value or None


@dataclass
class VolumeImage:
    """The engine's input for one volume, and how its stored pixels lie on the volume grid."""

    mammogram: Any  # MicrocalcAI.core.records.Mammogram
    mapping: PixelMapping
    origin: str  # "dicom-file" (engine read the file) or "volume" (the volume's array)
    notes: list[str] = field(default_factory=list)


def volume_plane(volume_node: Any) -> np.ndarray:
    """The volume's single slice as a (J, I) array (a copy), after checking it is 2-D grey.

    Raises :class:`VolumeError` for label maps, colour (vector) volumes, empty nodes and
    volumes with more than one slice (tomosynthesis, CT ...).
    """
    import slicer

    if volume_node is None:
        raise VolumeError("no input volume selected")
    name = volume_node.GetName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VolumeError(
            f"'{name}' is not a grey-scale image volume (label maps and colour images cannot be analysed)"
        )
    image = volume_node.GetImageData()
    if image is None:
        raise VolumeError(f"'{name}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise VolumeError(f"'{name}' is a colour image; MicrocalcAI needs a grey-scale mammogram")
    dims = image.GetDimensions()
    if dims[2] != 1:
        raise VolumeError(
            f"'{name}' has {dims[2]} slices; MicrocalcAI analyses 2-D mammograms "
            "(one slice), not tomosynthesis or 3-D volumes"
        )
    return np.array(slicer.util.arrayFromVolume(volume_node)[0], copy=True)


def match_pixel_mapping(plane: np.ndarray, stored: np.ndarray) -> Optional[PixelMapping]:
    """Which flip/transpose of ``stored`` is the volume ``plane`` (None when none fits).

    Compared by correlation on a regular sub-sample, which ignores the linear rescale a
    loader applies (RescaleSlope/Intercept) and costs milliseconds on a full mammogram.
    The identity wins ties (symmetric images), since that is what Slicer's loaders do.
    """
    plane = np.asarray(plane, dtype=np.float64)
    stored = np.asarray(stored)
    best: Optional[PixelMapping] = None
    best_r = -1.0
    for mapping in PixelMapping.all_mappings(stored.shape):
        if mapping.plane_shape != plane.shape:
            continue
        candidate = mapping.stored_to_plane(stored)
        step_r = max(1, plane.shape[0] // MATCH_SAMPLES)
        step_c = max(1, plane.shape[1] // MATCH_SAMPLES)
        a = candidate[::step_r, ::step_c].astype(np.float64).ravel()
        b = plane[::step_r, ::step_c].ravel()
        if a.std() == 0 or b.std() == 0:
            r = 1.0 if np.array_equal(a, b) else 0.0
        else:
            r = float(np.corrcoef(a, b)[0, 1])
        if r > best_r + 1e-9:
            best, best_r = mapping, r
    if best is None or best_r < MATCH_CORRELATION:
        return None
    return best


def _spacing_from_volume(volume_node: Any) -> tuple[float, float]:
    sx, sy, _ = volume_node.GetSpacing()
    return (float(sy), float(sx))  # (row spacing = j, column spacing = i)


def _parse_ds_pair(value: Optional[str]) -> Optional[tuple[float, float]]:
    if not value:
        return None
    parts = [p for p in re.split(r"[\\/, ]+", value.strip()) if p]
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        return None
    return (nums[0], nums[1])


def _laterality_view_hints(
    dicom: Optional[DicomSource], node_name: str
) -> tuple[Optional[tuple[str, str]], Optional[tuple[str, str]]]:
    """((laterality, source), (view, source)) from DICOM tags, then free text, else None."""
    from MicrocalcAI.core.read import parse_laterality_view

    lat: Optional[tuple[str, str]] = None
    view: Optional[tuple[str, str]] = None
    if dicom is not None:
        for keyword in ("ImageLaterality", "Laterality"):
            value = (dicom.tag(keyword) or "").upper()
            if value in ("L", "R") and lat is None:
                lat = (value, keyword)
        value = (dicom.tag("ViewPosition") or "").upper()
        if value:
            _, parsed = parse_laterality_view(value)
            if parsed:
                view = (parsed, "ViewPosition")
        for keyword in ("PatientID", "SeriesDescription"):
            text = dicom.tag(keyword)
            if text and (lat is None or view is None):
                t_lat, t_view = parse_laterality_view(text)
                if lat is None and t_lat:
                    lat = (t_lat, keyword)
                if view is None and t_view:
                    view = (t_view, keyword)
    if lat is None or view is None:
        n_lat, n_view = parse_laterality_view(node_name)
        if lat is None and n_lat:
            lat = (n_lat, "filename")
        if view is None and n_view:
            view = (n_view, "filename")
    return lat, view


def volume_to_mammogram(
    volume_node: Any,
    *,
    dicom: Optional[DicomSource] = None,
    spacing_mm: Optional[float | Sequence[float]] = None,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    photometric: Optional[str] = None,
) -> VolumeImage:
    """Build the engine's Mammogram for a volume node (see the module docstring).

    Explicit ``spacing_mm``, ``laterality``, ``view`` and ``photometric`` override anything
    read (their source becomes "user"), as in the engine's own reader.
    Raises :class:`VolumeError` or :class:`MicrocalcAI.core.errors.MicrocalcAIError` subclasses.
    """
    from MicrocalcAI.core.errors import UnreadableFileError
    from MicrocalcAI.core.read import ACCEPTED_MODALITIES, read_mammogram

    plane = volume_plane(volume_node)
    name = volume_node.GetName()
    notes: list[str] = []
    modality = (dicom.tag("Modality") or "").upper() if dicom is not None else ""
    if modality and modality not in ACCEPTED_MODALITIES:
        raise VolumeError(f"'{name}' is a {modality} image, not a mammogram (MG, DX or CR)")

    if dicom is not None and dicom.file and os.path.isfile(dicom.file):
        try:
            m = read_mammogram(
                dicom.file,
                spacing_mm=spacing_mm,
                laterality=laterality,
                view=view,
                photometric=photometric or "MONOCHROME2",
            )
        except UnreadableFileError as exc:  # e.g. a compression the engine cannot decode: Slicer could
            notes.append(f"the DICOM file could not be read by the engine ({exc}); the volume's pixels are used")
            log.warning("%s: %s", name, notes[-1])
        else:
            mapping = match_pixel_mapping(plane, m.pixels)
            if mapping is not None:
                if not mapping.is_identity:
                    notes.append(
                        f"the volume's pixel grid is a flip/transpose of the file ({mapping}); boxes are mapped accordingly"
                    )
                    log.info("%s: %s", name, notes[-1])
                if photometric is not None and photometric != m.photometric:
                    m = replace(m, photometric=photometric)
                return VolumeImage(mammogram=m, mapping=mapping, origin="dicom-file", notes=notes)
            notes.append(
                "the DICOM file's pixels do not match the volume (edited or resampled?); the volume's pixels are used"
            )
            log.warning("%s: %s", name, notes[-1])

    return VolumeImage(
        mammogram=_mammogram_from_plane(plane, volume_node, dicom, spacing_mm, laterality, view, photometric, notes),
        mapping=PixelMapping.identity(plane.shape),
        origin="volume",
        notes=notes,
    )


def _mammogram_from_plane(
    plane: np.ndarray,
    volume_node: Any,
    dicom: Optional[DicomSource],
    spacing_mm: Optional[float | Sequence[float]],
    laterality: Optional[str],
    view: Optional[str],
    photometric: Optional[str],
    notes: list[str],
) -> Any:
    """The Mammogram of a volume's own array: pixels in IJK order, metadata from tags/name."""
    from MicrocalcAI.core.read import read_mammogram

    name = volume_node.GetName()
    # Spacing: explicit > DICOM tags (as the loader used them) > volume spacing (not 1x1).
    spacing_source = "user"
    spacing: Optional[tuple[float, float]] = None
    if spacing_mm is not None:
        spacing = (float(spacing_mm), float(spacing_mm)) if np.isscalar(spacing_mm) else tuple(map(float, spacing_mm))  # type: ignore[arg-type]
    elif dicom is not None and (
        _parse_ds_pair(dicom.tag("ImagerPixelSpacing")) or _parse_ds_pair(dicom.tag("PixelSpacing"))
    ):
        spacing = _spacing_from_volume(volume_node)
        spacing_source = "ImagerPixelSpacing" if dicom.tag("ImagerPixelSpacing") else "PixelSpacing"
    else:
        vol_spacing = _spacing_from_volume(volume_node)
        if np.allclose(vol_spacing, UNKNOWN_SPACING):
            notes.append(
                "the volume has spacing 1 x 1 mm, which means its file recorded none: the model's assumed spacing is "
                "used (or, if the image cannot be a whole mammogram at it, a digitiser spacing; a warning names it)"
            )
        else:
            spacing, spacing_source = vol_spacing, "file"

    phot = photometric or (dicom.tag("PhotometricInterpretation") if dicom else None) or "MONOCHROME2"
    phot = phot.upper()
    if phot not in ("MONOCHROME1", "MONOCHROME2"):
        phot = "MONOCHROME2"

    lat_hint, view_hint = _laterality_view_hints(dicom, name)
    lat_value = laterality or (lat_hint[0] if lat_hint else None)
    view_value = view or (view_hint[0] if view_hint else None)

    m = read_mammogram(plane, spacing_mm=spacing, laterality=lat_value, view=view_value, photometric=phot)
    changes: dict[str, Any] = {}
    if spacing is not None:
        changes["spacing_source"] = spacing_source
    if laterality is None and lat_hint:
        changes["laterality_source"] = lat_hint[1]
    if view is None and view_hint:
        changes["view_source"] = view_hint[1]
    if dicom is not None:
        changes.update(
            patient_id=dicom.tag("PatientID"),
            study_uid=dicom.tag("StudyInstanceUID"),
            series_uid=dicom.tag("SeriesInstanceUID"),
            sop_uid=dicom.tag("SOPInstanceUID"),
            modality=dicom.tag("Modality"),
            manufacturer=dicom.tag("Manufacturer"),
            presentation_intent=(dicom.tag("PresentationIntentType") or "").upper() or None,
            source=dicom.file,
        )
    m = replace(m, warnings=list(m.warnings) + notes, **changes)
    return m


def dicom_source_from_database(volume_node: Any, database: Any) -> Optional[DicomSource]:
    """Look a volume's first instance up in a ctkDICOMDatabase (``slicer.dicomDatabase``).

    Slicer's DICOM loaders store the instance UIDs in the node attribute
    ``DICOM.instanceUIDs``; volumes from files or drag-and-drop have none (None returned).
    """
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or database is None:
        return None
    try:
        path = database.fileForInstance(uids[0])
    except Exception as exc:  # noqa: BLE001 - a closed or broken database must not stop the analysis
        log.warning("DICOM database lookup failed for %s: %s", volume_node.GetName(), exc)
        return None
    if not path:
        return None
    tags: dict[str, str] = {}
    for keyword, tag in DICOM_TAGS.items():
        try:
            value = database.fileValue(path, tag)
        except Exception:  # noqa: BLE001
            value = ""
        if value:
            tags[keyword] = str(value)
    return DicomSource(file=str(path) if Path(str(path)).is_file() else None, tags=tags)


def mammogram_volumes(scene: Any) -> list[Any]:
    """Scalar volumes of the scene that can be analysed (single slice, grey-scale).

    Used for "all mammograms in the scene"; label maps, colour images and 3-D volumes are
    left out so that a mixed scene (e.g. a CT next to the mammograms) still runs.
    """
    out = []
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        image = node.GetImageData()
        if image is None or image.GetNumberOfScalarComponents() != 1 or image.GetDimensions()[2] != 1:
            continue
        out.append(node)
    return out


def tags_from_mapping(values: Mapping[str, Any]) -> DicomSource:
    """A :class:`DicomSource` from plain keyword -> value pairs (console scripts, tests)."""
    return DicomSource(file=None, tags={k: str(v) for k, v in values.items() if v is not None})
