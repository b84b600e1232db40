"""The inference core: everything needed to analyse a mammogram, and nothing else.

The stages, in the order data flows through them::

    read          -> Mammogram          (core/read.py)
    standardise   -> CanonicalImage     (core/standardise.py)
    detect        -> Detection list     (core/detect/: tiling and merge, network, weights, manifest)
    findings      -> ImageFindings      (core/findings/: lesions, specks, risk)
    outputs       -> files              (core/outputs/)

``core/pipeline.py`` chains them (``Analyzer``, ``run_batch``). The 3D Slicer module imports
only this package and the top-level public API. Nothing here imports ``evaluation``,
``training``, ``simulation``, ``datasets`` or ``cli``: an import-linter contract in CI keeps it
that way, so the code a clinical user runs stays small and reviewable.
"""
