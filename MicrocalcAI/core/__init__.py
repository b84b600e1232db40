"""The inference core: everything needed to analyse a mammogram, and nothing else.

The stages, in the order data flows through them::

    read          -> Mammogram          (core/read.py)
    standardise   -> CanonicalImage     (core/standardise.py)
    detect        -> Detection list     (core/detect/: tiling, network, weights, manifest, merge, run)
    findings      -> ImageFindings      (core/findings/: specks, lesions, risk, threshold)
    outputs       -> files              (core/outputs/: findings_json, overlay, tables, complete)

``core/pipeline.py`` chains them for one image (``Analyzer``, ``analyse``) and
``core/batch.py`` runs files and folders (``run_batch``). Shared: ``records.py`` (the typed
records), ``errors.py``, ``progress.py``, ``spacing.py``, ``atomic.py``. The 3D Slicer module
imports only this package and the top-level public API. Nothing here imports ``evaluation``,
``training``, ``simulation``, ``datasets`` or ``cli``: an import-linter contract in CI keeps it
that way, so the code a clinical user runs stays small and reviewable. See
``docs/architecture.md``.
"""

__all__: list[str] = []
