"""Run the engine on volumes of a scene, on files or DICOM folders, and export results.

These functions are what the module's Logic calls; they take the scene, the nodes and a
loaded :class:`MicrocalcAI.core.pipeline.Analyzer` as arguments, report progress through a
``progress(fraction, message)`` callback and stop cleanly when a :class:`Canceller` is
cancelled (the callback raises :class:`MicrocalcAI.core.errors.CancelledError` at the next
step). They never open dialogs: the GUI decides what to show.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from MicrocalcAI.core.progress import ProgressCallback, sub_progress

from . import scene as scene_lib
from .scene import DisplayOptions, ResultNodes
from .volumes import DicomSource, VolumeImage, volume_to_mammogram

__all__ = [
    "ANALYSIS_FLOOR",
    "Canceller",
    "SceneRunResult",
    "VolumeResult",
    "analyse_volume",
    "analyse_volumes",
    "analysis_threshold",
    "cancellable_progress",
    "dicom_export_function",
    "export_results",
    "run_file_batch",
    "safe_name",
]


log = logging.getLogger(__name__)

#: Lesions are searched down to this score (or the chosen threshold, if lower) so that the
#: threshold can later be raised *and lowered* down to it without running the model again.
#: Detection never reports below MicrocalcAI.core.detect.manifest.MERGE_FLOOR (0.05), the slider's minimum.
ANALYSIS_FLOOR = 0.1


class Canceller:
    """A cancel flag shared between the GUI's Cancel button and a running analysis.

    Thread-safe, so a worker thread or the Qt event loop may set it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise CancelledError when cancelled (called between steps)."""
        from MicrocalcAI.core.errors import CancelledError

        if self._event.is_set():
            raise CancelledError("cancelled by the user")


def cancellable_progress(progress: Optional[ProgressCallback], canceller: Optional[Canceller]) -> ProgressCallback:
    """A progress callback that forwards to ``progress`` and then honours the cancel flag.

    The engine calls progress between tiles, so a cancel takes effect within one tile.
    """

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(max(float(fraction), 0.0), 1.0), message)
        if canceller is not None:
            canceller.check()

    return report


def analysis_threshold(display_threshold: Optional[float], model_threshold: float) -> float:
    """The score threshold the model runs at: low enough to allow later threshold changes."""
    wanted = model_threshold if display_threshold is None else float(display_threshold)
    return min(wanted, ANALYSIS_FLOOR)


def safe_name(text: str) -> str:
    """A file-name-safe version of a node name (outputs are named after volumes)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "image"


@dataclass
class VolumeResult:
    """The outcome of analysing one volume."""

    volume: Any
    findings: Any  # ImageFindings as shown (at the display threshold)
    all_findings: Any  # ImageFindings at the analysis threshold (everything the model found)
    nodes: ResultNodes
    image: VolumeImage


def analyse_volume(
    scene: Any,
    volume: Any,
    analyzer: Any,
    *,
    dicom: Optional[DicomSource] = None,
    options: Optional[DisplayOptions] = None,
    spacing_mm: Optional[float] = None,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    photometric: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    canceller: Optional[Canceller] = None,
) -> VolumeResult:
    """Analyse one volume node and (re)place its result nodes in the scene.

    The model runs at :func:`analysis_threshold` (passed per call; the shared analyzer is
    not changed). Raises ``MicrocalcAIError`` subclasses (including
    ``CancelledError``) and :class:`~MicrocalcAIModuleLib.volumes.VolumeError`.
    """
    options = options or DisplayOptions()
    report = cancellable_progress(progress, canceller)
    report(0.0, f"{volume.GetName()}: preparing the image")
    image = volume_to_mammogram(
        volume, dicom=dicom, spacing_mm=spacing_mm, laterality=laterality, view=view, photometric=photometric
    )
    findings = analyzer.analyse(
        image.mammogram,
        name=safe_name(volume.GetName()),
        threshold=analysis_threshold(options.threshold, analyzer.spec.score_threshold),
        progress=sub_progress(report, 0.02, 0.92, f"{volume.GetName()}: "),
    )
    report(0.93, f"{volume.GetName()}: creating the result nodes")
    nodes = scene_lib.write_results(scene, volume, findings, image.mapping, analyzer.spec, options)
    shown = scene_lib.shown_findings(scene, volume)
    log.info(
        "%s: %d lesion(s) at score >= %.2f, image risk %.2f (%s)",
        volume.GetName(),
        len(shown.lesions),
        shown.score_threshold,
        shown.risk.probability,
        shown.risk.category,
    )
    report(1.0, f"{volume.GetName()}: done")
    return VolumeResult(volume=volume, findings=shown, all_findings=findings, nodes=nodes, image=image)


@dataclass
class SceneRunResult:
    """Outcome of analysing several volumes: results, and the volumes that failed and why."""

    results: list[VolumeResult] = field(default_factory=list)
    failed: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def analyse_volumes(
    scene: Any,
    volumes: Sequence[Any],
    analyzer: Any,
    *,
    dicom_lookup: Optional[Callable[[Any], Optional[DicomSource]]] = None,
    options: Optional[DisplayOptions] = None,
    progress: Optional[ProgressCallback] = None,
    canceller: Optional[Canceller] = None,
) -> SceneRunResult:
    """Analyse several volumes; one bad volume is reported and the others still run."""
    from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError

    from .volumes import VolumeError

    outcome = SceneRunResult()
    n = max(len(volumes), 1)
    report = cancellable_progress(progress, canceller)
    for index, volume in enumerate(volumes):
        prefix = f"[{index + 1}/{len(volumes)}] "
        try:
            outcome.results.append(
                analyse_volume(
                    scene, volume, analyzer,
                    dicom=dicom_lookup(volume) if dicom_lookup else None,
                    options=options,
                    progress=sub_progress(report, index / n, (index + 1) / n, prefix),
                    canceller=canceller,
                )
            )  # fmt: skip
        except CancelledError:
            raise
        except (MicrocalcAIError, VolumeError) as exc:
            log.error("%s: %s", volume.GetName(), exc)
            outcome.failed.append((volume, str(exc)))
    report(1.0, f"{len(outcome.results)} image(s) analysed, {len(outcome.failed)} failed")
    return outcome


def run_file_batch(
    inputs: Sequence[Union[str, os.PathLike]],
    out_dir: Union[str, os.PathLike],
    analyzer: Any,
    *,
    force: bool = False,
    spacing_mm: Optional[float] = None,
    score_threshold: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    canceller: Optional[Canceller] = None,
) -> Any:
    """Analyse files and folders (DICOM folders included) into ``out_dir`` with the engine.

    Writes what the command line writes (per-image JSON and overlay PNG, images/breasts/
    exams CSV, all atomically) and returns the engine's BatchResult. Images whose outputs
    are complete are skipped unless ``force``, so an interrupted batch resumes.
    """
    from MicrocalcAI.core.batch import run_batch

    return run_batch(
        list(inputs), out_dir, analyzer=analyzer, force=force, spacing_mm=spacing_mm,
        score_threshold=score_threshold, progress=cancellable_progress(progress, canceller),
    )  # fmt: skip


def export_results(scene: Any, volumes: Sequence[Any], out_dir: Union[str, os.PathLike]) -> list[Path]:
    """Write the findings as shown (current threshold) for these volumes: one JSON per image
    and the images/breasts/exams CSV tables over them, in the engine's formats."""
    from MicrocalcAI.core.outputs.findings_json import write_image_json
    from MicrocalcAI.core.outputs.tables import write_batch_tables

    images, breasts, exams = scene_lib.combined_risks(scene, volumes)
    if not images:
        raise LookupError("nothing to export: none of the selected volumes has been analysed")
    out = Path(out_dir)
    written = [write_image_json(image, out) for image in images]
    written += write_batch_tables(images, breasts, exams, out)
    log.info("exported %d image(s) to %s", len(images), out)
    return written


def dicom_export_function() -> Optional[Callable[..., Any]]:
    """The engine's DICOM writer, ``write_dicom_outputs(findings, source_path, out_dir, *,
    deidentify=False) -> list[Path]``; None when the installed engine lacks it (the GUI then
    leaves its DICOM export button disabled)."""
    try:
        from MicrocalcAI.core.outputs.dicom import write_dicom_outputs
    except ImportError:
        return None
    return write_dicom_outputs


def export_dicom(
    scene: Any,
    volumes: Sequence[Any],
    out_dir: Union[str, os.PathLike],
    source_lookup: Callable[[Any], Optional[DicomSource]],
    *,
    deidentify: bool = False,
) -> list[Path]:
    """Write the engine's DICOM objects (CAD SR, TID 1500 SR, GSPS, SEG) of the findings as
    shown for these volumes. ``source_lookup(volume)`` gives the volume's DICOM file (the
    objects reference it); a volume without one, or not analysed, is a LookupError."""
    writer = dicom_export_function()
    if writer is None:
        raise LookupError("DICOM export is not available in this version of the MicrocalcAI engine")
    written: list[Path] = []
    for volume in volumes:
        findings = scene_lib.shown_findings(scene, volume)
        source = source_lookup(volume)
        if findings is None or source is None or not source.file:
            raise LookupError(f"'{volume.GetName()}' has no analysed DICOM source to reference")
        written += list(writer(findings, source.file, out_dir, deidentify=deidentify))
    log.info("exported DICOM objects of %d image(s) to %s", len(volumes), out_dir)
    return written
