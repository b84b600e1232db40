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
from pathlib import Path
from typing import Optional, Union

import numpy as np

from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.lesions import ClusterRule, build_lesions
from MicrocalcAI.core.findings.risk import image_risk
from MicrocalcAI.core.findings.specks import SpeckConfig
from MicrocalcAI.core.read import read_mammogram, user_overrides
from MicrocalcAI.core.records import (
    ImageFindings,
    Mammogram,
    ModelInfo,
    ProgressCallback,
    no_progress,
)
from MicrocalcAI.core.standardise import normalised_stored, standardise

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Mammogram]


def _sub_progress(progress: ProgressCallback, start: float, end: float, prefix: str) -> ProgressCallback:
    """A callback that maps a stage's own [0, 1] onto [start, end] of the caller's job."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), f"{prefix}{message}")

    return report


def effective_spacing(mammogram: Mammogram, spec: ModelSpec) -> tuple[tuple[float, float], str, list[str]]:
    """The spacing the analysis will use, where it came from, and the warning when it is a guess."""
    if mammogram.spacing_mm is not None:
        return (float(mammogram.spacing_mm[0]), float(mammogram.spacing_mm[1])), mammogram.spacing_source or "file", []
    assumed = spec.assumed_input_spacing_mm
    warning = (
        f"pixel spacing unknown: assumed {assumed} mm (model default); sizes in mm and detection "
        "quality depend on it, pass --spacing if you know the true value"
    )
    return (assumed, assumed), "assumed", [warning]


class Analyzer:
    """A loaded model, ready to analyse images one after the other.

    Loading verifies the weights' sha256 against the manifest, so a tampered or truncated
    weights file fails here, before any image is touched.
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
    ) -> None:
        from MicrocalcAI.core.detect.network import select_device
        from MicrocalcAI.core.detect.weights import load_detector

        self.spec: ModelSpec = resolve_model(model)
        self.device = select_device(device)
        self.model = load_detector(self.spec, self.device)
        self.score_threshold = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise MicrocalcAIError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        self.batch_size = batch_size
        self.speck_config = speck_config
        #: How standardise upsamples inputs coarser than the model's spacing (None: its default).
        self.upsampling = upsampling
        #: Which detections make lesions (None: findings.lesions.DEFAULT_CLUSTER_RULE).
        self.cluster_rule = cluster_rule
        log.info("model %s %s (%s) on %s", self.spec.name, self.spec.version, self.spec.backbone, self.device)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(self.spec.name, self.spec.version, self.spec.sha256, self.spec.backbone, self.spec.spacing_mm)

    def analyse(
        self,
        source: Source,
        *,
        name: Optional[str] = None,
        spacing_mm: Optional[Union[float, tuple[float, float]]] = None,
        laterality: Optional[str] = None,
        view: Optional[str] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> ImageFindings:
        """Analyse one image (a path or a :class:`Mammogram`) and return its findings."""
        findings, _ = self.analyse_with_image(
            source, name=name, spacing_mm=spacing_mm, laterality=laterality, view=view, progress=progress
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
        progress: Optional[ProgressCallback] = None,
    ) -> tuple[ImageFindings, np.ndarray]:
        """Like :meth:`analyse`, also returning the normalised stored-frame image for overlays."""
        from MicrocalcAI.core.detect.tiles import detect

        progress = progress or no_progress
        timings: dict[str, float] = {}
        t_start = time.perf_counter()

        progress(0.0, "reading")
        if isinstance(source, Mammogram):
            mammogram = _with_overrides(source, spacing_mm, laterality, view)
        else:
            mammogram = read_mammogram(source, spacing_mm=spacing_mm, laterality=laterality, view=view)
        timings["read"] = time.perf_counter() - t_start

        spacing, spacing_source, warnings = effective_spacing(mammogram, self.spec)
        warnings = list(mammogram.warnings) + warnings

        t = time.perf_counter()
        progress(0.05, "standardising")
        work = _with_spacing(mammogram, spacing)
        stored01, stored_mask = normalised_stored(work, assumed_input_spacing_mm=self.spec.assumed_input_spacing_mm)
        canonical = standardise(
            work,
            self.spec.spacing_mm,
            assumed_input_spacing_mm=self.spec.assumed_input_spacing_mm,
            stored=(stored01, stored_mask),
            **({} if self.upsampling is None else {"upsampling": self.upsampling}),
        )
        warnings += [w for w in canonical.warnings if w not in warnings]  # spacing is always set here
        timings["standardise"] = time.perf_counter() - t

        t = time.perf_counter()
        detections = detect(
            canonical,
            self.model,
            self.spec,
            device=self.device,
            score_threshold=self.score_threshold,
            batch_size=self.batch_size,
            progress=_sub_progress(progress, 0.15, 0.9, ""),
        )
        timings["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.9, "measuring lesions")
        if detections:
            canonical_boxes = np.stack([d.box for d in detections])
            boxes_px = canonical.transform.to_stored_boxes(canonical_boxes)
        else:
            boxes_px = np.zeros((0, 4))
        lesions = build_lesions(
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
        risk = image_risk(lesions, self.spec)
        timings["findings"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start

        findings = ImageFindings(
            source=mammogram.source,
            name=name or _default_name(mammogram),
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
            model=self.model_info,
            score_threshold=self.score_threshold,
            warnings=warnings,
            timings_s={k: round(v, 4) for k, v in timings.items()},
            input_fingerprint=file_fingerprint(mammogram.source) if mammogram.source else None,
        )
        progress(1.0, "done")
        return findings, stored01


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
