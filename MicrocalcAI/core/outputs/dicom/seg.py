"""DICOM Segmentation of the calcification specks on the source image's grid (highdicom).

A BINARY SEG with one frame per segment, each the size of the stored image: segment 1 holds
the specks of the benign lesions, segment 2 those of the malignant ones (segment type
Individual Calcification, SCT 129770007). Both segments are always written, empty where a
class has no specks, so every analysed DICOM image has the same four objects. Slicer cannot load
a SEG of a non-volumetric image, so this is an export for PACS and research code; in Slicer
the specks are a segmentation node.
"""

from __future__ import annotations

from typing import Optional

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from MicrocalcAI.core.outputs.dicom import codes
from MicrocalcAI.core.outputs.dicom.identity import derived_instance, is_deidentified, mark_deidentified
from MicrocalcAI.core.records import ImageFindings

__all__ = ["SEG_CLASSES", "SEG_SERIES_NUMBER", "build_seg", "class_masks"]

SEG_SERIES_NUMBER = 9904
#: Segment label per lesion class, in segment order.
SEG_CLASSES = ("benign", "malignant")
_COLOURS = {"benign": hd.color.CIELabColor(97.1, -21.6, 94.5), "malignant": hd.color.CIELabColor(53.2, 80.1, 67.2)}


def class_masks(f: ImageFindings) -> dict[str, np.ndarray]:
    """Full-image boolean speck masks per class (stored grid), from the lesions' windows."""
    rows, cols = f.image_shape
    masks = {label: np.zeros((rows, cols), dtype=bool) for label in SEG_CLASSES}
    for lesion in f.lesions:
        if lesion.label not in masks or lesion.speck_mask.size == 0:
            continue
        r0, c0 = lesion.mask_origin
        h, w = lesion.speck_mask.shape
        masks[lesion.label][r0 : r0 + h, c0 : c0 + w] |= lesion.speck_mask
    return masks


def build_seg(
    f: ImageFindings,
    source: Dataset,
    *,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
) -> hd.seg.Segmentation:
    """The speck SEG of ``f`` on the (prepared) source header (see module docstring)."""
    masks = class_masks(f)
    present = list(SEG_CLASSES)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f.model.name,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        version=f.model.version,
    )
    descriptions = []
    stack = np.zeros((1, *f.image_shape, len(present)), dtype=bool)
    for number, label in enumerate(present, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"{label} calcification specks",
                segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                segmented_property_type=codes.INDIVIDUAL_CALCIFICATION,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"{label} specks",
                tracking_uid=hd.UID(),
                display_color=_COLOURS[label],
            )
        )
        stack[0, :, :, number - 1] = masks[label]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **derived_instance(f, series_uid=series_uid, sop_uid=sop_uid, series_number=SEG_SERIES_NUMBER),
        content_label="SPECKS",
        content_description="MicrocalcAI calcification specks (research use only)",
        omit_empty_frames=False,
    )
    # The General Image module of a SEG on a projection image wants its PatientOrientation.
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    if is_deidentified(source):
        mark_deidentified(seg)
    return seg
