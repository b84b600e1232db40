"""Dataset adapters: public mammography datasets converted into MicrocalcAI's COCO training format.

``microcalcai train`` and ``microcalcai evaluate`` read one format only, the COCO file of
:mod:`MicrocalcAI.datasets.coco` (the one reader and writer). Users own the public datasets
in their published layouts, so each one gets an adapter module here:

=================  =================================================================
module (kind)      what is read
=================  =================================================================
``cbis_ddsm``      ``calc_case_description_*.csv`` + the TCIA DICOM tree; box = bounding
(cbis-ddsm)        box of the ROI mask DICOM; class from the biopsy ``pathology``
``inbreast``       ``AllXML/*.xml`` (OsiriX plist ROIs) + ``AllDICOMs`` + ``INbreast.csv``;
(inbreast)         box = "Cluster" ROI, or proximity groups of "Calcification" ROIs;
                   class from the image's BI-RADS (a proxy: no per-lesion pathology)
``vindr_mammo``    ``finding_annotations.csv`` rows whose categories include "Suspicious
(vindr-mammo)      Calcification" + ``images/<study>/<image>.dicom``; class from the
                   finding's BI-RADS (a proxy)
``mini_mias``      ``Info.txt`` + ``mdbNNN.pgm``; circle (centre, radius) with the origin at
(mini-mias)        the BOTTOM-left corner, 200 um pixels
``coco_import``    any COCO file: validated, categories mapped to benign/malignant, paths
(coco)             made relative to the output file
=================  =================================================================

What they share (report, builder, the rules every adapter follows, header readers) is in
:mod:`MicrocalcAI.datasets.common`; :func:`convert_dataset` in
:mod:`MicrocalcAI.datasets.registry` dispatches by kind.
"""

from MicrocalcAI.datasets.cbis_ddsm import convert_cbis_ddsm
from MicrocalcAI.datasets.coco import LABEL_IDS, LABEL_NAMES, CocoImage, parse_coco, write_coco
from MicrocalcAI.datasets.coco_import import convert_coco
from MicrocalcAI.datasets.common import ConversionReport, SkippedItem
from MicrocalcAI.datasets.inbreast import convert_inbreast
from MicrocalcAI.datasets.mini_mias import convert_mini_mias
from MicrocalcAI.datasets.registry import KINDS, convert_dataset, normalise_kind
from MicrocalcAI.datasets.vindr_mammo import convert_vindr_mammo

__all__ = [
    "KINDS",
    "LABEL_IDS",
    "LABEL_NAMES",
    "CocoImage",
    "ConversionReport",
    "SkippedItem",
    "convert_cbis_ddsm",
    "convert_coco",
    "convert_dataset",
    "convert_inbreast",
    "convert_mini_mias",
    "convert_vindr_mammo",
    "normalise_kind",
    "parse_coco",
    "write_coco",
]
