"""The whole flow for one image: read -> standardise -> detect -> findings.

This is the Python API the CLI, the Slicer module and console scripts use. An
:class:`Analyzer` loads (and checksum-verifies) a model once and then analyses any number of
images; :func:`analyse` is the one-call convenience for a single image. Batches of files and
folders, with their output files, are :mod:`MicrocalcAI.core.batch`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.lesions import ClusterRule, build_lesions
from MicrocalcAI.core.findings.risk import image_risk
from MicrocalcAI.core.findings.specks import SpeckConfig
from MicrocalcAI.core.ood.reference import OodReference, check_image, load_reference
from MicrocalcAI.core.ood.statistics import input_statistics
from MicrocalcAI.core.progress import ProgressCallback, no_progress, sub_progress
from MicrocalcAI.core.read import read_mammogram, user_overrides
from MicrocalcAI.core.records import (
    CanonicalImage,
    Detection,
    ImageFindings,
    Lesion,
    Mammogram,
    ModelInfo,
    OodCheck,
    Risk,
)
from MicrocalcAI.core.spacing import spacing_when_unknown
from MicrocalcAI.core.standardise import DEFAULT_UPSAMPLING, normalised_stored, standardise

__all__ = ["Analyzer", "PreparedImage", "Source", "analyse", "effective_spacing", "file_fingerprint"]

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Mammogram]


def effective_spacing(mammogram: Mammogram, spec: ModelSpec) -> tuple[tuple[float, float], str, list[str]]:
    """The spacing the analysis will use, where it came from, and the warning when it is a guess."""
    if mammogram.spacing_mm is not None:
        return (float(mammogram.spacing_mm[0]), float(mammogram.spacing_mm[1])), mammogram.spacing_source or "file", []
    spacing, warning = spacing_when_unknown(mammogram.shape, spec.assumed_input_spacing_mm)
    return spacing, "assumed", [warning]


@dataclass
class PreparedImage:
    """An image read and standardised, waiting for the model (see :meth:`Analyzer.prepare`)."""

    mammogram: Mammogram
    spacing: tuple[float, float]
    spacing_source: str
    warnings: list[str]
    stored01: np.ndarray
    stored_mask: np.ndarray
    canonical: CanonicalImage
    timings_s: dict[str, float] = field(default_factory=dict)
    #: Input statistics for the out-of-distribution check (None when the model has no reference).
    ood_statistics: Optional[dict[str, float]] = None


class Analyzer:
    """A loaded model, ready to analyse images one after the other.

    Loading verifies the weights' sha256 against the manifest, so a tampered or truncated
    weights file fails here, before any image is touched. ``score_threshold`` is the default
    lesion score threshold of every call; a call may pass its own ``threshold`` instead, so
    nobody needs to change the analyzer (which a batch or the Slicer module may share).
    """

    def __init__(
        self,
        model: Optional[str] = None,
        device: Optional[str] = "auto",
        *,
        score_threshold: Optional[float] = None,
        batch_size: int = 4,
        speck_config: Optional[SpeckConfig] = None,
        upsampling: Optional[str] = None,
        cluster_rule: Optional[ClusterRule] = None,
        ood_check: bool = True,
    ) -> None:
        from MicrocalcAI.core.detect.network import select_device
        from MicrocalcAI.core.runtime import cached_detector, configure_cpu

        self.spec: ModelSpec = resolve_model(model)
        self.device = select_device(device)
        if self.device.type == "cpu":
            configure_cpu()
        # Verified, batch norm folded, channels-last; loaded once per process and weights file.
        self.model = cached_detector(self.spec, self.device)
        #: The model's out-of-distribution reference (checksum-verified), None when it ships none.
        #: ``ood_check=False`` skips it (fitting a new reference for the model).
        self.ood_reference: Optional[OodReference] = load_reference(self.spec) if ood_check else None
        self._score_threshold = self._checked_threshold(score_threshold)
        self.batch_size = batch_size
        self.speck_config = speck_config
        #: How standardise upsamples inputs coarser than the model's spacing (None: its default).
        self.upsampling = upsampling
        #: Which detections make lesions (None: findings.lesions.DEFAULT_CLUSTER_RULE).
        self.cluster_rule = cluster_rule
        log.info("model %s %s (%s) on %s", self.spec.name, self.spec.version, self.spec.backbone, self.device)

    @property
    def score_threshold(self) -> float:
        """The default lesion score threshold (read-only: pass ``threshold`` per call instead)."""
        return self._score_threshold

    def _checked_threshold(self, threshold: Optional[float]) -> float:
        value = self.spec.score_threshold if threshold is None else float(threshold)
        if not 0.0 <= value <= 1.0:
            raise MicrocalcAIError(f"score threshold must be in [0, 1], got {value}")
        return value

    @property
    def model_info(self) -> ModelInfo:
        s = self.spec
        return ModelInfo(s.name, s.version, s.sha256, s.backbone, s.spacing_mm, s.settings_sha256)

    def analyse(
        self,
        source: Source,
        *,
        name: Optional[str] = None,
        spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
        laterality: Optional[str] = None,
        view: Optional[str] = None,
        threshold: Optional[float] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> ImageFindings:
        """Analyse one image (a path or a :class:`Mammogram`) and return its findings.

        ``threshold`` is this call's lesion score threshold (default: :attr:`score_threshold`).
        """
        findings, _ = self.analyse_with_image(
            source,
            name=name,
            spacing_mm=spacing_mm,
            laterality=laterality,
            view=view,
            threshold=threshold,
            progress=progress,
        )
        return findings

    def analyse_with_image(
        self,
        source: Source,
        *,
        name: Optional[str] = None,
        spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
        laterality: Optional[str] = None,
        view: Optional[str] = None,
        threshold: Optional[float] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> tuple[ImageFindings, np.ndarray]:
        """Like :meth:`analyse`, also returning the normalised stored-frame image for overlays.

        The stages in order, each timed: read, standardise (:meth:`prepare`), detect, findings
        (:meth:`analyse_prepared`).
        """
        progress = progress or no_progress
        prepared = self.prepare(source, spacing_mm=spacing_mm, laterality=laterality, view=view, progress=progress)
        return self.analyse_prepared(prepared, name=name, threshold=threshold, progress=progress)

    def prepare(
        self,
        source: Source,
        *,
        spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
        laterality: Optional[str] = None,
        view: Optional[str] = None,
        progress: Optional[ProgressCallback] = None,
        measure_ood: bool = False,
    ) -> PreparedImage:
        """Read and standardise one image: the CPU work that needs no model.

        Separate from :meth:`analyse_prepared` so that a batch can prepare the next image on
        another thread while the model runs on this one (:func:`MicrocalcAI.core.batch.run_batch`).
        The input statistics of the out-of-distribution check are measured here too (also
        CPU work on the native pixels), when the model has a reference or ``measure_ood``.
        """
        progress = progress or no_progress
        clock = _Stopwatch()
        progress(0.0, "reading")
        mammogram = _read(source, spacing_mm, laterality, view)
        clock.lap("read")
        spacing, spacing_source, warnings = effective_spacing(mammogram, self.spec)
        warnings = list(mammogram.warnings) + warnings

        progress(0.05, "standardising")
        canonical, stored01, stored_mask = self._standardise(_with_spacing(mammogram, spacing))
        warnings += [w for w in canonical.warnings if w not in warnings]  # spacing is always set here
        clock.lap("standardise")
        statistics = None
        if self.ood_reference is not None or measure_ood:
            statistics = input_statistics(mammogram.pixels, stored01, stored_mask, spacing)
            clock.lap("ood_statistics")
        return PreparedImage(
            mammogram, spacing, spacing_source, warnings, stored01, stored_mask, canonical, clock.timings, statistics
        )

    def analyse_prepared(
        self,
        prepared: PreparedImage,
        *,
        name: Optional[str] = None,
        threshold: Optional[float] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> tuple[ImageFindings, np.ndarray]:
        """Detect and measure lesions on an image from :meth:`prepare`: (findings, stored image)."""
        score_threshold = self._checked_threshold(self.score_threshold if threshold is None else threshold)
        progress = progress or no_progress
        clock = _Stopwatch()
        detections, descriptor = self._detect(
            prepared, score_threshold, sub_progress(progress, 0.15, 0.9), capture=self.ood_reference is not None
        )
        clock.lap("detect")
        ood = self._ood_check(prepared, descriptor)
        if ood is not None:
            clock.lap("ood_check")

        progress(0.9, "measuring lesions")
        lesions = self._lesions(
            detections, prepared.canonical, prepared.stored01, prepared.stored_mask, prepared.spacing
        )
        clock.lap("findings")

        # Stage sum, not wall time since reading: in a batch the image was prepared ahead.
        timings = {**prepared.timings_s, **clock.timings}
        timings["total"] = sum(timings.values())
        # ``ood`` (None: the model ships no OOD reference): a flagged check makes the image
        # risk "indeterminate" (core.findings.risk).
        findings = _image_findings(
            prepared.mammogram,
            name=name or _default_name(prepared.mammogram),
            spacing=prepared.spacing,
            spacing_source=prepared.spacing_source,
            lesions=lesions,
            risk=image_risk(lesions, self.spec.risk_categories, ood),
            ood=ood,
            model=self.model_info,
            score_threshold=score_threshold,
            warnings=prepared.warnings,
            timings=timings,
        )
        progress(1.0, "done")
        return findings, prepared.stored01

    def measure_ood(
        self,
        source: Source,
        *,
        spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> tuple[dict[str, float], Optional[np.ndarray]]:
        """The out-of-distribution measurements of one image: (input statistics, feature
        descriptor), from the same standardisation and detection pass an analysis runs.

        What :func:`MicrocalcAI.training.ood.fit_model_reference` fits a reference from.
        """
        progress = progress or no_progress
        prepared = self.prepare(source, spacing_mm=spacing_mm, progress=progress, measure_ood=True)
        _, descriptor = self._detect(prepared, self.score_threshold, sub_progress(progress, 0.15, 1.0), capture=True)
        return dict(prepared.ood_statistics or {}), descriptor

    def _detect(
        self, prepared: PreparedImage, score_threshold: float, progress: ProgressCallback, *, capture: bool
    ) -> tuple[list[Detection], Optional[np.ndarray]]:
        """The detection stage; with ``capture``, also the image's feature descriptor, taken
        from the same pass by a hook on the backbone (no second network pass)."""
        from MicrocalcAI.core.detect.run import detect

        def run() -> list[Detection]:
            return detect(
                prepared.canonical,
                self.model,
                self.spec,
                device=self.device,
                score_threshold=score_threshold,
                batch_size=self.batch_size,
                progress=progress,
            )

        if not capture:
            return run(), None
        from MicrocalcAI.core.ood.features import capture_features

        with capture_features(self.model, prepared.canonical.mask, self.spec.tile_size, self.spec.tile_overlap) as got:
            detections = run()
        return detections, got.descriptor()

    def _ood_check(self, prepared: PreparedImage, descriptor: Optional[np.ndarray]) -> Optional[OodCheck]:
        """The image's :class:`OodCheck`, or None when the model has no reference."""
        if self.ood_reference is None:
            return None
        statistics = prepared.ood_statistics
        if statistics is None:  # prepared by another analyzer: measure now
            m = prepared.mammogram
            statistics = input_statistics(m.pixels, prepared.stored01, prepared.stored_mask, prepared.spacing)
        return check_image(self.ood_reference, statistics, descriptor)

    def _standardise(self, work: Mammogram) -> tuple[CanonicalImage, np.ndarray, np.ndarray]:
        """(canonical image, normalised stored-frame image, stored-frame breast mask)."""
        assumed = self.spec.assumed_input_spacing_mm
        stored01, stored_mask = normalised_stored(work, assumed_input_spacing_mm=assumed)
        canonical = standardise(
            work,
            self.spec.spacing_mm,
            assumed_input_spacing_mm=assumed,
            stored=(stored01, stored_mask),
            upsampling=self.upsampling or DEFAULT_UPSAMPLING,
            noise_equalisation=self.spec.noise_equalisation,
        )
        return canonical, stored01, stored_mask

    def _lesions(
        self,
        detections: list[Detection],
        canonical: CanonicalImage,
        stored01: np.ndarray,
        stored_mask: np.ndarray,
        spacing: tuple[float, float],
    ) -> list[Lesion]:
        """Canonical detections -> lesions in stored pixels, with their specks and sizes."""
        if detections:
            boxes_px = canonical.transform.to_stored_boxes(np.stack([d.box for d in detections]))
        else:
            boxes_px = np.zeros((0, 4))
        return build_lesions(
            boxes_px,
            [d.label for d in detections],
            [d.score for d in detections],
            [d.p_malignant for d in detections],
            stored01,
            spacing,
            breast_mask=stored_mask,
            speck_config=self.speck_config,
            cluster_rule=self.cluster_rule,
        )


class _Stopwatch:
    """Seconds per stage, each :meth:`lap` since the previous one."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage], self.last = now - self.last, now


def _read(
    source: Source,
    spacing_mm: Optional[Union[float, tuple[float, float]]],
    laterality: Optional[str],
    view: Optional[str],
) -> Mammogram:
    """The mammogram to analyse, with the caller's explicit values applied."""
    if isinstance(source, Mammogram):
        return _with_overrides(source, spacing_mm, laterality, view)
    return read_mammogram(source, spacing_mm=spacing_mm, laterality=laterality, view=view)


def _image_findings(
    mammogram: Mammogram,
    *,
    name: str,
    spacing: tuple[float, float],
    spacing_source: str,
    lesions: list[Lesion],
    risk: Risk,
    model: ModelInfo,
    score_threshold: float,
    warnings: list[str],
    timings: dict[str, float],
    ood: Optional[OodCheck] = None,
) -> ImageFindings:
    """The findings record: the input's identity and metadata, plus what was found."""
    return ImageFindings(
        source=mammogram.source,
        name=name,
        image_shape=mammogram.shape,
        spacing_mm=spacing,
        spacing_source=spacing_source,
        photometric=mammogram.photometric,
        laterality=mammogram.laterality,
        laterality_source=mammogram.laterality_source,
        view=mammogram.view,
        view_source=mammogram.view_source,
        presentation_intent=mammogram.presentation_intent,
        patient_id=mammogram.patient_id,
        study_uid=mammogram.study_uid,
        series_uid=mammogram.series_uid,
        sop_uid=mammogram.sop_uid,
        manufacturer=mammogram.manufacturer,
        lesions=lesions,
        risk=risk,
        model=model,
        score_threshold=score_threshold,
        warnings=warnings,
        timings_s={k: round(v, 4) for k, v in timings.items()},
        ood=ood,
        input_fingerprint=file_fingerprint(mammogram.source) if mammogram.source else None,
    )


def file_fingerprint(path: Union[str, os.PathLike]) -> Optional[str]:
    """``"<size>:<mtime_ns>"`` of a file: changes whenever the file is replaced or edited."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _with_overrides(
    m: Mammogram,
    spacing_mm: Optional[Union[float, tuple[float, float]]],
    laterality: Optional[str],
    view: Optional[str],
) -> Mammogram:
    """A copy of ``m`` with explicit user values applied (the caller's record is not modified)."""
    from dataclasses import replace

    changes = user_overrides(spacing_mm=spacing_mm, laterality=laterality, view=view, source=m.source)
    return replace(m, warnings=list(m.warnings), **changes) if changes else m


def _with_spacing(m: Mammogram, spacing: tuple[float, float]) -> Mammogram:
    from dataclasses import replace

    if m.spacing_mm is not None:
        return m
    return replace(m, spacing_mm=spacing, spacing_source="assumed")


def _default_name(m: Mammogram) -> str:
    if m.source:
        return Path(m.source).name.split(".")[0] or "image"
    parts = [p for p in (m.patient_id, m.laterality, m.view) if p]
    return "_".join(parts) if parts else "image"


def analyse(
    source: Source,
    *,
    model: Optional[str] = None,
    device: Optional[str] = "auto",
    score_threshold: Optional[float] = None,
    spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
    progress: Optional[ProgressCallback] = None,
) -> ImageFindings:
    """Analyse one mammogram (path or :class:`Mammogram`) with a freshly loaded model.

    For many images build one :class:`Analyzer` and call its ``analyse`` so the model loads once.
    """
    analyzer = Analyzer(model, device, score_threshold=score_threshold)
    return analyzer.analyse(source, spacing_mm=spacing_mm, progress=progress)
