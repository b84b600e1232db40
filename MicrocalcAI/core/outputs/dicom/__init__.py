"""DICOM result objects for an analysed DICOM image, and reading our SRs back.

:func:`write_dicom_outputs` writes, next to the JSON and overlay, four objects that
reference the analysed image: the Mammography CAD SR (:mod:`.cad_sr`), the TID 1500
Comprehensive SR (:mod:`.tid1500`), a presentation state with the boxes (:mod:`.gsps`) and a
SEG with the speck masks (:mod:`.seg`). :mod:`.read_sr` turns either SR back into findings.
"""

from __future__ import annotations

from MicrocalcAI.core.outputs.dicom.write import (
    DICOM_SUFFIXES,
    dicom_output_paths,
    dicom_outputs_complete,
    write_dicom_outputs,
)

__all__ = ["DICOM_SUFFIXES", "dicom_output_paths", "dicom_outputs_complete", "write_dicom_outputs"]
