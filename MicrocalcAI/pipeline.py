"""The whole flow for one image or a batch: read -> standardise -> detect -> findings -> outputs.

This is the Python API the CLI, the Slicer module and console scripts use. An
:class:`Analyzer` loads (and checksum-verifies) a model once and then analyses any number of
images; :func:`analyse` is the one-call convenience for a single image; :func:`run_batch`
processes files and folders into the per-image and per-batch output files, skipping images
whose outputs are already complete and reporting bad files without stopping.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .errors import CancelledError, MicrocalcAIError, OutputError
from .findings import build_lesions
from .manifest import ModelSpec, resolve_model
from .reader import find_images, read_mammogram, user_overrides
from .records import (
    BreastFindings,
    ExamFindings,
    ImageFindings,
    Mammogram,
    ModelInfo,
    ProgressCallback,
    no_progress,
)
from .risk import breast_findings, exam_findings, image_risk
from .specks import SpeckConfig
from .standardise import normalised_stored, standardise

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
    ) -> None:
        from .model import select_device
        from .weights import load_detector

        self.spec: ModelSpec = resolve_model(model)
        self.device = select_device(device)
        self.model = load_detector(self.spec, self.device)
        self.score_threshold = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise MicrocalcAIError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        self.batch_size = batch_size
        self.speck_config = speck_config
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
        from .detect import detect

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


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class BatchResult:
    """What a batch did: analysed, skipped (already complete) and failed images, and the tables."""

    images: list[ImageFindings] = field(default_factory=list)  # analysed now + loaded from skipped
    analysed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    breasts: list[BreastFindings] = field(default_factory=list)
    exams: list[ExamFindings] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    overlays: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def output_names(paths: Sequence[Path]) -> list[str]:
    """Unique, stable output base names: the file stem, or its relative path where stems clash.

    DICOM exports often name every file ``1-1.dcm`` in its own folder, so the stem alone is not
    enough; the names depend only on the input paths, so a re-run finds its earlier outputs.
    """
    stems = [p.name.split(".")[0] or p.name for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path(".")
    names = []
    for stem, path in zip(stems, resolved):
        if counts[stem] == 1:
            names.append(stem)
            continue
        rel = path.relative_to(common)
        names.append("__".join(list(rel.parts[:-1]) + [stem]))
    # Still clashing (e.g. a.dcm and a.png in one folder): keep the suffix too.
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    names = [
        n if seen[n] == 1 else f"{n}_{p.name.split('.', 1)[1].replace('.', '_')}" if "." in p.name else n
        for n, p in zip(names, resolved)
    ]
    # Whatever the paths, two inputs must never share outputs: number any remaining clash.
    taken: set[str] = set()
    unique = []
    for n in names:
        candidate, k = n, 2
        while candidate in taken:
            candidate, k = f"{n}_{k}", k + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _still_valid(
    earlier: ImageFindings,
    path: Path,
    spec: ModelSpec,
    threshold: float,
    spacing_mm: Optional[float],
) -> bool:
    """Whether complete earlier outputs describe this file, analysed as this run would.

    Same file (path and size/mtime), same weights (sha256), same threshold, same spacing
    option; anything else is redone rather than silently reporting stale or foreign results.
    """
    if earlier.source is None or Path(earlier.source).resolve() != path.resolve():
        return False
    if earlier.input_fingerprint is None or earlier.input_fingerprint != file_fingerprint(path):
        return False
    if earlier.model.sha256 != spec.sha256 or abs(earlier.score_threshold - threshold) > 1e-9:
        return False
    if spacing_mm is None:
        return earlier.spacing_source != "user"
    return earlier.spacing_source == "user" and all(abs(s - float(spacing_mm)) < 1e-9 for s in earlier.spacing_mm)


def run_batch(
    inputs: Sequence[Union[str, os.PathLike]],
    out_dir: Union[str, os.PathLike],
    *,
    model: Optional[str] = None,
    device: Optional[str] = "auto",
    score_threshold: Optional[float] = None,
    spacing_mm: Optional[float] = None,
    force: bool = False,
    recursive: bool = True,
    analyzer: Optional[Analyzer] = None,
    progress: Optional[ProgressCallback] = None,
) -> BatchResult:
    """Analyse files and folders into ``out_dir``: per-image JSON + overlay, per-batch CSVs.

    A bad file is logged in one line, recorded in ``failed`` and skipped; the batch goes on.
    Images whose outputs are complete and still valid (same file, weights, threshold and
    spacing option: :func:`_still_valid`) are skipped unless ``force``; their JSON is loaded
    back so the breast and exam tables still cover the whole batch.
    """
    from .outputs import load_image_json, outputs_complete, write_batch_tables, write_image_json, write_overlay

    progress = progress or no_progress
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot use output folder {out}: {exc}") from exc
    files, missing = find_images(inputs, recursive=recursive)
    # An output folder inside an input folder must not be read back as input on a re-run.
    out_resolved = out.resolve()
    files = [p for p in files if not p.resolve().is_relative_to(out_resolved)]
    result = BatchResult(failed=[(str(p), reason) for p, reason in missing])
    for path, reason in missing:
        log.error("%s: %s", path, reason)
    spec = analyzer.spec if analyzer is not None else resolve_model(model)
    threshold = analyzer.score_threshold if analyzer is not None else (
        spec.score_threshold if score_threshold is None else float(score_threshold)
    )
    names = output_names(files)
    todo = []
    for path, name in zip(files, names):
        if not force and outputs_complete(name, out):
            try:
                earlier = load_image_json(out / f"{name}.json")
            except MicrocalcAIError:
                earlier = None  # unreadable earlier output: redo the image
            if earlier is not None and _still_valid(earlier, path, spec, threshold, spacing_mm):
                result.images.append(earlier)
                result.skipped.append(str(path))
                result.overlays[name] = out / f"{name}_overlay.png"
                continue
        todo.append((path, name))
    if todo and analyzer is None:
        progress(0.0, "loading model")
        analyzer = Analyzer(model, device, score_threshold=score_threshold)
    log.info("threshold %.3f; %d image(s) to analyse, %d already done", threshold, len(todo), len(result.skipped))

    n = max(len(todo), 1)
    for i, (path, name) in enumerate(todo):
        prefix = f"[{i + 1}/{len(todo)}] {path.name}: "
        try:
            assert analyzer is not None
            findings, stored01 = analyzer.analyse_with_image(
                path, name=name, spacing_mm=spacing_mm, progress=_sub_progress(progress, i / n, (i + 0.95) / n, prefix)
            )
            write_image_json(findings, out)
            result.overlays[name] = write_overlay(findings, stored01, out)
            result.images.append(findings)
            result.analysed.append(str(path))
        except CancelledError:
            raise
        except MicrocalcAIError as exc:
            message = str(exc)
            log.error("%s", message if str(path.name) in message else f"{path}: {message}")
            result.failed.append((str(path), message))
        except MemoryError:
            log.error("%s: not enough memory to analyse this image", path)
            result.failed.append((str(path), "not enough memory"))
        except RuntimeError as exc:  # torch reports device out-of-memory as a RuntimeError
            if "out of memory" not in str(exc).lower():
                raise
            log.error("%s: not enough %s memory to analyse this image", path, analyzer.device if analyzer else "device")
            result.failed.append((str(path), "not enough device memory (try --device cpu)"))
        progress((i + 1) / n, f"{prefix}done")

    if result.images:
        result.breasts = breast_findings(result.images, spec)
        result.exams = exam_findings(result.breasts, spec)
    result.tables = write_batch_tables(result.images, result.breasts, result.exams, out)
    progress(1.0, "batch done")
    return result
