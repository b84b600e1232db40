"""Grayscale Softcopy Presentation State with the lesion boxes and labels (highdicom).

Any PACS viewer that applies presentation states shows these marks on the mammogram without
knowing anything about MicrocalcAI. Everything is on one graphic layer of our own
(``MICROCALCAI``): per lesion a closed 5-point POLYLINE for its box and a text
``L<id> <label> <p_malignant>`` anchored at the box's top-left corner, in PIXEL units of the
stored image (:mod:`.scoords`).
"""

from __future__ import annotations

from typing import Optional

import highdicom as hd
from pydicom.dataset import Dataset

from MicrocalcAI.core.outputs.dicom.identity import derived_instance, is_deidentified, mark_deidentified
from MicrocalcAI.core.outputs.dicom.scoords import box_polyline
from MicrocalcAI.core.records import ImageFindings, Lesion

__all__ = ["GRAPHIC_LAYER", "GSPS_SERIES_NUMBER", "build_gsps", "lesion_text"]

GSPS_SERIES_NUMBER = 9903
GRAPHIC_LAYER = "MICROCALCAI"
#: Layer colour (CIELab): red, like the malignant boxes of the overlay.
LAYER_COLOUR = hd.color.CIELabColor(53.2, 80.1, 67.2)


def lesion_text(lesion: Lesion) -> str:
    """The label drawn next to a lesion box, as in the overlay PNG."""
    return f"L{lesion.id} {lesion.label} {lesion.p_malignant:.2f}"


def build_gsps(
    f: ImageFindings,
    source: Dataset,
    *,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The presentation state of ``f`` on the image whose (prepared) header is ``source``."""
    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description="MicrocalcAI calcification lesions (research use only)",
        display_color=LAYER_COLOUR,
    )
    graphics = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(lesion.box_px),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=f"L{lesion.id}",
            tracking_uid=hd.UID(),
        )
        for lesion in f.lesions
    ]
    texts = [
        hd.pr.TextObject(
            text_value=lesion_text(lesion),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=(float(lesion.box_px[0]), float(lesion.box_px[1])),
            anchor_point_visible=False,
        )
        for lesion in f.lesions
    ]
    annotations = []
    if graphics:
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[source], graphic_layer=layer, graphic_objects=graphics, text_objects=texts
            )
        )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        **derived_instance(f, series_uid=series_uid, sop_uid=sop_uid, series_number=GSPS_SERIES_NUMBER),
        content_label="MICROCALCAI",
        content_description=f"MicrocalcAI lesions, image risk {f.risk.probability:.2f} ({f.risk.category})"[:64],
        graphic_annotations=annotations or None,
        graphic_layers=[layer],
    )
    # The General Series module wants the laterality of a paired body part (dciodvfy checks).
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality:
        gsps.Laterality = laterality
    if is_deidentified(source):
        mark_deidentified(gsps)
    return gsps
