"""MicrocalcAI: detect breast microcalcification lesions on mammograms and estimate cancer risk.

The engine of the MicrocalcAI 3D Slicer extension, usable on its own::

    import MicrocalcAI
    findings = MicrocalcAI.analyse("exam/R_CC.dcm")      # or a Mammogram record
    for lesion in findings.lesions:
        print(lesion.label, lesion.p_malignant, lesion.box_px)

Heavy dependencies (torch) are imported only when a model is needed, so importing this
package is cheap (Slicer imports it at start-up).

Research software: the bundled weights are trained on simulated data and are NOT for
clinical use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "analyse", "Analyzer", "run_batch", "read_mammogram", "standardise"]


def __getattr__(name: str) -> Any:  # lazy: keep `import MicrocalcAI` free of torch
    if name in ("analyse", "Analyzer"):
        from MicrocalcAI.core import pipeline

        return getattr(pipeline, name)
    if name == "run_batch":
        from MicrocalcAI.core.batch import run_batch

        return run_batch
    if name == "read_mammogram":
        from MicrocalcAI.core.read import read_mammogram

        return read_mammogram
    if name == "standardise":
        from MicrocalcAI.core.standardise import standardise

        return standardise
    raise AttributeError(f"module 'MicrocalcAI' has no attribute {name!r}")
