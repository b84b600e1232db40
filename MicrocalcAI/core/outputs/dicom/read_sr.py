"""Our SRs back into findings, so results survive a round trip through a PACS.

:func:`read_sr` reads a TID 1500 Comprehensive SR or a Mammography CAD SR written by
:mod:`.tid1500` / :mod:`.cad_sr` and returns :class:`ImageFindings` with the same boxes,
classes, scores, probabilities, speck centres and counts, image risk, model and input
description (from the Algorithm Parameters, :mod:`.parameters`). The content tree is walked
with pydicom by concept codes, so an SR that went through a PACS (re-encoded, other
transfer syntax, extra attributes) reads the same.

What an SR does not hold: speck areas and masks. Pass the SEG written with it
(:func:`read_sr` ``seg=``) to rebuild them; without it each speck has its centre and zero
area, and a warning says so. The SEG has one segment per class and specks are segmented per
lesion box, so where two lesions of a class overlap, a speck both found (with different
pixels) cannot be told apart in the SEG and keeps only its centre (a warning says so too).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from scipy import ndimage as ndi

from MicrocalcAI.core.errors import UnreadableFileError
from MicrocalcAI.core.findings.lesions import box_to_mm
from MicrocalcAI.core.findings.risk import image_probability
from MicrocalcAI.core.findings.specks import box_window
from MicrocalcAI.core.outputs.dicom import codes
from MicrocalcAI.core.outputs.dicom.cad_sr import MAMMOGRAPHY_CAD_SR_STORAGE
from MicrocalcAI.core.outputs.dicom.parameters import ood_from_parameters, parse_algorithm_parameters
from MicrocalcAI.core.outputs.dicom.scoords import polyline_box
from MicrocalcAI.core.outputs.dicom.seg import SEG_CLASSES
from MicrocalcAI.core.outputs.dicom.tid1500 import IMAGE_GROUP_IDENTIFIER, speck_group_identifier
from MicrocalcAI.core.outputs.dicom.write import DICOM_SUFFIXES
from MicrocalcAI.core.records import ImageFindings, Lesion, ModelInfo, Risk, Speck

__all__ = ["MERGED_SPECKS_WARNING", "NO_SPECK_SIZES_WARNING", "referenced_sop_uid", "read_sr", "sr_kind"]

PathLike = Union[str, "os.PathLike[str]"]
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
_MEASUREMENT_GROUP = ("125007", "DCM")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_FINDING_TYPE = ("121071", "DCM")
NO_SPECK_SIZES_WARNING = "speck sizes and masks are not in the SR (read it with its SEG to restore them)"
MERGED_SPECKS_WARNING = (
    "some specks of overlapping lesions of one class merged in the SEG: they keep their centre, not their size"
)


def _key(code: Optional[codes.CodedConcept]) -> tuple[str, str]:
    assert code is not None
    return (str(code.value), str(code.scheme_designator))


def _concept(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> Optional[tuple[str, str]]:
    seq = item.get(keyword)
    if not seq:
        return None
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator))


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []) or [])


def _find(items: list[Dataset], name: tuple[str, str]) -> Iterator[Dataset]:
    return (child for child in items if _concept(child) == name)


def _first(items: list[Dataset], name: tuple[str, str]) -> Optional[Dataset]:
    return next(_find(items, name), None)


def _num(item: Optional[Dataset]) -> Optional[float]:
    if item is None or not item.get("MeasuredValueSequence"):
        return None
    measured = item.MeasuredValueSequence[0]
    if "FloatingPointValue" in measured:
        return float(measured.FloatingPointValue)
    return float(measured.NumericValue)


def _text(item: Optional[Dataset]) -> Optional[str]:
    return None if item is None else str(item.get("TextValue", ""))


def _texts(items: list[Dataset], name: tuple[str, str]) -> list[str]:
    return [str(child.get("TextValue", "")) for child in _find(items, name)]


def sr_kind(ds: Dataset) -> Optional[str]:
    """``"cad_sr"``, ``"tid1500"`` or None for an SR we did not write."""
    if str(ds.get("SOPClassUID", "")) == MAMMOGRAPHY_CAD_SR_STORAGE:
        return "cad_sr" if _concept(ds) == _key(codes.MAMMOGRAPHY_CAD_REPORT) else None
    if _concept(ds) == ("126000", "DCM"):
        return "tid1500"
    return None


def referenced_sop_uid(ds: Dataset) -> Optional[str]:
    """SOP Instance UID of the image an SR describes (its evidence)."""
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            for sop in series.get("ReferencedSOPSequence", []) or []:
                return str(sop.ReferencedSOPInstanceUID)
    return None


def _referenced_series_uid(ds: Dataset) -> Optional[str]:
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            return str(series.SeriesInstanceUID)
    return None


def _pair(text: Optional[str], cast: Any) -> Optional[tuple[Any, Any]]:
    if not text:
        return None
    a, b = text.split(",")
    return cast(a), cast(b)


def _name_from_path(path: Path) -> str:
    for suffix in DICOM_SUFFIXES.values():
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name.split(".")[0]


# --------------------------------------------------------------------------- lesions per SR kind


def _cad_lesions(ds: Dataset) -> tuple[list[dict[str, Any]], list[str]]:
    root = _children(ds)
    summary = _first(root, _key(codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY))
    detections = _first(root, _key(codes.SUMMARY_OF_DETECTIONS))
    parameters: list[str] = []
    if detections is not None:
        for container in _find(_children(detections), _key(codes.SUCCESSFUL_DETECTIONS)):
            for performed in _find(_children(container), _key(codes.DETECTION_PERFORMED)):
                parameters += _texts(_children(performed), _key(codes.ALGORITHM_PARAMETERS))
    lesions = []
    impressions = _find(_children(summary), _key(codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION)) if summary else []
    for impression in impressions:
        for finding in _find(_children(impression), _key(codes.SINGLE_IMAGE_FINDING)):
            if _concept(finding, "ConceptCodeSequence") != _key(codes.CALCIFICATION_CLUSTER):
                continue
            items = _children(finding)
            outline = _first(items, _key(codes.OUTLINE))
            specks = []
            for speck in _find(items, _key(codes.SINGLE_IMAGE_FINDING)):
                if _concept(speck, "ConceptCodeSequence") == _key(codes.INDIVIDUAL_CALCIFICATION):
                    centre = _first(_children(speck), _key(codes.CENTER))
                    if centre is not None:
                        specks.append((float(centre.GraphicData[0]), float(centre.GraphicData[1])))
            pathology = _first(items, _key(codes.PATHOLOGY))
            lesions.append(
                {
                    "box": polyline_box(outline.GraphicData) if outline is not None else None,
                    "class": _concept(pathology, "ConceptCodeSequence") if pathology is not None else None,
                    "score": (_num(_first(items, _key(codes.CERTAINTY_OF_FINDING))) or 0.0) / 100.0,
                    "p": (_num(_first(items, _key(codes.PROBABILITY_OF_CANCER))) or 0.0) / 100.0,
                    "count": _num(_first(items, _key(codes.NUMBER_OF_CALCIFICATIONS))),
                    "specks": specks,
                    "name": _text(_first(items, _key(codes.ALGORITHM_NAME))),
                    "version": _text(_first(items, _key(codes.ALGORITHM_VERSION))),
                }
            )
    return lesions, parameters


def _groups(ds: Dataset) -> Iterator[tuple[str, list[Dataset]]]:
    for container in _children(ds):
        if _concept(container) != ("126010", "DCM"):  # Imaging Measurements
            continue
        for group in _find(_children(container), _MEASUREMENT_GROUP):
            items = _children(group)
            yield _text(_first(items, _TRACKING_IDENTIFIER)) or "", items


def _tid1500_lesions(ds: Dataset) -> tuple[list[dict[str, Any]], list[str], Optional[float], Optional[str]]:
    groups = dict(_groups(ds))
    image = groups.get(IMAGE_GROUP_IDENTIFIER, [])
    parameters = _texts(image, _key(codes.ALGORITHM_PARAMETERS))
    risk_p = _num(_first(image, _key(codes.PROBABILITY_OF_CANCER)))
    category_item = _first(image, _key(codes.RISK_CATEGORY))
    category = str(category_item.ConceptCodeSequence[0].CodeMeaning) if category_item is not None else None
    lesions: list[dict[str, Any]] = []
    for identifier, items in groups.items():
        finding = _first(items, _FINDING_TYPE)
        if finding is None or _concept(finding, "ConceptCodeSequence") != _key(codes.CALCIFICATION_CLUSTER):
            continue
        region = next((child for child in items if child.get("ValueType") == "SCOORD"), None)
        pathology = _first(items, _key(codes.PATHOLOGY))
        lesion_id = int(identifier[1:]) if identifier[:1] == "L" and identifier[1:].isdigit() else len(lesions) + 1
        specks: list[tuple[float, float]] = []
        count_item = _first(groups.get(speck_group_identifier(lesion_id), []), _key(codes.NUMBER_OF_CALCIFICATIONS))
        if count_item is not None:
            for scoord in (child for child in _children(count_item) if child.get("ValueType") == "SCOORD"):
                xy = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
                specks += [(float(x), float(y)) for x, y in xy]
        lesions.append(
            {
                "id": lesion_id,
                "box": polyline_box(region.GraphicData) if region is not None else None,
                "class": _concept(pathology, "ConceptCodeSequence") if pathology is not None else None,
                "score": (_num(_first(items, _key(codes.CERTAINTY_OF_FINDING))) or 0.0) / 100.0,
                "p": _num(_first(items, _key(codes.PROBABILITY_OF_CANCER))) or 0.0,
                "count": _num(_first(items, _key(codes.NUMBER_OF_CALCIFICATIONS))),
                "specks": specks,
                "name": _text(_first(items, _key(codes.ALGORITHM_NAME))),
                "version": _text(_first(items, _key(codes.ALGORITHM_VERSION))),
            }
        )
    lesions.sort(key=lambda d: int(d["id"]))
    return lesions, parameters, risk_p, category


# --------------------------------------------------------------------------- specks from the SEG


def _seg_source_uids(seg: Dataset) -> set[str]:
    """SOP Instance UIDs of the images a SEG was made on."""
    return {
        str(instance.ReferencedSOPInstanceUID)
        for series in seg.get("ReferencedSeriesSequence", []) or []
        for instance in series.get("ReferencedInstanceSequence", []) or []
    }


def _seg_class_masks(seg: Dataset, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Full-image speck mask per class from our SEG (segment labels ``<class> calcification specks``)."""
    pixels = seg.pixel_array.reshape(-1, *shape).astype(bool)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel).split(" ")[0] for s in seg.SegmentSequence}
    masks = {label: np.zeros(shape, dtype=bool) for label in SEG_CLASSES}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = labels.get(number)
        if label in masks:
            masks[label] |= pixels[index]
    return masks


def _specks_from_mask(
    mask: np.ndarray, origin: tuple[int, int], spacing_mm: tuple[float, float], centres: list[tuple[float, float]]
) -> tuple[np.ndarray, list[Speck], bool]:
    """The lesion's speck mask and specks from the SEG's class mask over its window, and
    whether every speck was restored.

    The class mask also holds the specks of other lesions of the class whose boxes overlap
    this window, so only the connected components whose centroid is one of the SR's speck
    centres are kept, in the SR's order. Where lesions of one class overlap, a speck found by
    both with different pixels merges into another shape; it keeps only its centre (zero
    area) and the flag says so.
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    found: list[tuple[int, Speck]] = []
    for lab in range(1, n + 1):
        rr, cc = np.nonzero(labels == lab)
        area_px = int(rr.size)
        area_mm2 = area_px * spacing_mm[0] * spacing_mm[1]
        centre = (origin[1] + float(cc.mean()) + 0.5, origin[0] + float(rr.mean()) + 0.5)
        found.append((lab, Speck(centre, area_px, float(area_mm2), float(2.0 * math.sqrt(area_mm2 / math.pi)))))
    kept_labels, specks, complete = [], [], True
    for cx, cy in centres:
        match = [(lab, s) for lab, s in found if math.dist(s.centroid_px, (cx, cy)) < 1e-2]
        if match:
            kept_labels.append(match[0][0])
            specks.append(match[0][1])
        else:
            specks.append(Speck((cx, cy), 0, 0.0, 0.0))
            complete = False
    return np.isin(labels, kept_labels), specks, complete


# --------------------------------------------------------------------------- the reader


def read_sr(path: PathLike, *, seg: Optional[Union[PathLike, Dataset]] = None) -> ImageFindings:
    """Findings from our TID 1500 or Mammography CAD SR (see module docstring).

    ``seg``: our SEG of the same image (path or dataset), to restore speck sizes and masks.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"{path.name}: not a readable DICOM file ({exc})") from exc
    kind = sr_kind(ds)
    if kind is None:
        raise UnreadableFileError(f"{path.name}: not a MicrocalcAI TID 1500 or Mammography CAD SR")
    if kind == "cad_sr":
        raw, parameter_texts = _cad_lesions(ds)
        risk_p, category = None, None
    else:
        raw, parameter_texts, risk_p, category = _tid1500_lesions(ds)
    params, warnings = parse_algorithm_parameters(parameter_texts)
    try:
        shape = _pair(params.get("image_shape"), int)
        spacing = _pair(params.get("spacing_mm"), float)
    except ValueError as exc:
        raise UnreadableFileError(f"{path.name}: malformed algorithm parameters ({exc})") from exc
    if shape is None or spacing is None:
        raise UnreadableFileError(f"{path.name}: no image shape / spacing in the algorithm parameters")
    class_by_code = {_key(code): label for label, code in codes.CLASS_CODES.items()}
    seg_ds = pydicom.dcmread(seg) if isinstance(seg, (str, os.PathLike)) else seg
    if seg_ds is not None and referenced_sop_uid(ds) not in _seg_source_uids(seg_ds):
        raise UnreadableFileError(f"{path.name}: the SEG given describes another image")
    masks = _seg_class_masks(seg_ds, shape) if seg_ds is not None else None
    lesions = []
    sizes_missing = sizes_incomplete = False
    for index, d in enumerate(raw, start=1):
        if d["box"] is None or d["class"] not in class_by_code:
            raise UnreadableFileError(f"{path.name}: lesion {index} has no outline or no benign/malignant class")
        label = class_by_code[d["class"]]
        box = d["box"]
        r0, c0, r1, c1 = box_window(box, shape)
        if masks is not None:
            window, specks, complete = _specks_from_mask(masks[label][r0:r1, c0:c1], (r0, c0), spacing, d["specks"])
            sizes_incomplete = sizes_incomplete or not complete
        else:
            window = np.zeros((r1 - r0, c1 - c0), dtype=bool)
            specks = [Speck(centre, 0, 0.0, 0.0) for centre in d["specks"]]
            sizes_missing = sizes_missing or bool(specks)
        if d["count"] is not None and int(round(d["count"])) != len(specks):
            raise UnreadableFileError(
                f"{path.name}: lesion {index} says {int(round(d['count']))} calcifications but has {len(specks)} centres"
            )
        area = (box[2] - box[0]) * spacing[1] * (box[3] - box[1]) * spacing[0]
        lesions.append(
            Lesion(
                id=int(d.get("id", index)),
                box_px=box,
                box_mm=box_to_mm(box, spacing),
                label=label,
                score=float(d["score"]),
                p_malignant=float(d["p"]),
                area_mm2=float(area),
                speck_mask=window,
                mask_origin=(r0, c0),
                specks=specks,
            )
        )
    if sizes_missing:
        warnings.append(NO_SPECK_SIZES_WARNING)
    if sizes_incomplete:
        warnings.append(MERGED_SPECKS_WARNING)
    if risk_p is None:  # the CAD SR has no image risk item: the engine's image rule
        risk_p = image_probability(lesions)
    name = raw[0]["name"] if raw else None
    version = raw[0]["version"] if raw else None
    return ImageFindings(
        source=None,
        name=_name_from_path(path),
        image_shape=shape,
        spacing_mm=spacing,
        spacing_source=params.get("spacing_source") or "assumed",
        photometric=params.get("photometric") or "MONOCHROME2",
        laterality=params.get("laterality"),
        laterality_source=params.get("laterality_source"),
        view=params.get("view"),
        view_source=params.get("view_source"),
        presentation_intent=params.get("presentation_intent"),
        patient_id=str(ds.get("PatientID", "")) or None,
        study_uid=str(ds.get("StudyInstanceUID", "")) or None,
        series_uid=_referenced_series_uid(ds),
        sop_uid=referenced_sop_uid(ds),
        manufacturer=None,
        lesions=lesions,
        risk=Risk(probability=float(risk_p), category=category or params.get("risk_category") or "unknown"),
        model=ModelInfo(
            name=name or str(ds.get("ManufacturerModelName", "")) or "unknown",
            version=version or "unknown",
            sha256=params.get("model_sha256") or "",
            backbone=params.get("model_backbone") or "",
            spacing_mm=float(params.get("model_spacing_mm") or "nan"),
            settings_sha256=params.get("model_settings_sha256"),  # None in SRs older than schema 1.2
        ),
        score_threshold=float(params.get("score_threshold") or "nan"),
        warnings=warnings,
        ood=ood_from_parameters(parameter_texts),
    )
