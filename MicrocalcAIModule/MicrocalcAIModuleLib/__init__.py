"""Slicer-side helpers of the MicrocalcAI module, usable without the Slicer GUI.

Everything that touches MRML (volume node -> :class:`MicrocalcAI.core.records.Mammogram`,
findings -> markups ROIs, segmentation, table, subject hierarchy) lives here as plain
functions that take the scene and nodes as arguments. That keeps ``MicrocalcAIModule.py``
a thin layer and lets the tests run this code on the real MRML library of the
``slicer-core`` wheel, without the Slicer application.

Sub-modules (import them explicitly; none but ``widget`` imports torch, Qt or ``slicer.app``):

- :mod:`.paths`        where the engine package and the Resources folder are
- :mod:`.geometry`     stored-pixel <-> IJK <-> RAS mapping of boxes, masks and points
- :mod:`.volumes`      volume node (+ DICOM source) -> Mammogram
- :mod:`.scene`        findings -> MRML nodes, replacement, re-thresholding for display, risks
- :mod:`.runner`       analyse a volume / the scene / files, progress and cancellation, export
- :mod:`.models`       model list, model card, importing users' weights
- :mod:`.dependencies` requirements checks and installation inside Slicer
- :mod:`.widget`       the module panel (Qt wiring only; needs the Slicer application, so it
                       is left out of ``__all__``)
"""

__all__ = ["paths", "geometry", "volumes", "scene", "runner", "models", "dependencies"]
