"""Batches: files and folders -> per-image outputs and per-batch tables, resumable.

:func:`run_batch` analyses every image found, writes its JSON and overlay atomically, skips
images whose outputs are already complete and were made the same way, reports a bad file
with its reason and goes on, and finally writes the image, breast and exam tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from MicrocalcAI.core.atomic import remove_temporaries
from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model
from MicrocalcAI.core.errors import CancelledError, DiskFullError, InputError, MicrocalcAIError, OutputError
from MicrocalcAI.core.findings.risk import breast_findings, exam_findings
from MicrocalcAI.core.pipeline import Analyzer, PreparedImage, file_fingerprint
from MicrocalcAI.core.progress import ProgressCallback, no_progress, sub_progress
from MicrocalcAI.core.read import find_images
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings
from MicrocalcAI.core.spacing import spacing_when_unknown

if TYPE_CHECKING:  # dask is optional and never imported unless a client is passed
    from distributed import Client

__all__ = ["BatchResult", "ImageOutcome", "analyse_to_files", "output_names", "run_batch"]

log = logging.getLogger(__name__)


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
    reports: list[Path] = field(default_factory=list)  # with report=True: HTML and PDF per exam
    report_failures: list[tuple[str, str]] = field(default_factory=list)  # (exam, reason)
    dicom: dict[str, list[Path]] = field(default_factory=dict)  # name -> DICOM objects written now
    dicom_skipped: list[str] = field(default_factory=list)  # non-DICOM inputs (no DICOM output)

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

    Same file (path and size/mtime), same model settings (weights, calibration, OOD
    reference, input settings: ``settings_sha256``; files from before schema 1.2 lack it and
    are redone), same threshold, same spacing option (for an assumed spacing: the one the rule
    for an unknown spacing gives now), and an OOD check exactly when the model ships a
    reference; anything else is redone rather than silently reporting stale or foreign
    results.
    """
    if earlier.source is None or Path(earlier.source).resolve() != path.resolve():
        return False
    if earlier.input_fingerprint is None or earlier.input_fingerprint != file_fingerprint(path):
        return False
    if earlier.model.sha256 != spec.sha256 or abs(earlier.score_threshold - threshold) > 1e-9:
        return False
    if earlier.model.settings_sha256 != spec.settings_sha256:
        return False
    if (earlier.ood is None) != (spec.ood is None):
        return False
    if spacing_mm is None:
        if earlier.spacing_source == "assumed":  # the rule for an unknown spacing changed on 2026-12-03
            expected, _ = spacing_when_unknown(earlier.image_shape, spec.assumed_input_spacing_mm)
            return all(abs(a - b) < 1e-9 for a, b in zip(earlier.spacing_mm, expected))
        return earlier.spacing_source != "user"
    return earlier.spacing_source == "user" and all(abs(s - float(spacing_mm)) < 1e-9 for s in earlier.spacing_mm)


def _write_dicom(
    findings: ImageFindings, out: Path, deidentify: bool, result: BatchResult, *, only_missing: bool = False
) -> bool:
    """The DICOM step of one image; False when it failed (recorded in ``failed``; the image's
    findings, JSON and overlay stay valid). A non-DICOM input (no SOP Instance UID) gets one
    line saying its DICOM output is skipped.
    """
    from MicrocalcAI.core.outputs.dicom import dicom_outputs_complete, write_dicom_outputs

    if findings.sop_uid is None:
        log.warning("%s: not a DICOM input, DICOM output skipped", findings.source or findings.name)
        result.dicom_skipped.append(findings.source or findings.name)
        return True
    json_file = out / f"{findings.name}.json"
    if only_missing and dicom_outputs_complete(findings.name, out, deidentify=deidentify, not_older_than=json_file):
        return True
    try:
        result.dicom[findings.name] = write_dicom_outputs(findings, findings.source, out, deidentify=deidentify)
    except DiskFullError:
        raise  # the whole batch stops, as for the JSON and overlay
    except MicrocalcAIError as exc:
        log.error("%s: DICOM output failed: %s", findings.source or findings.name, exc)
        result.failed.append((findings.source or findings.name, f"DICOM output failed: {exc}"))
        return False
    return True


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
    report: bool = False,
    dicom: bool = False,
    deidentify: bool = False,
    client: Optional[Client] = None,
) -> BatchResult:
    """Analyse files and folders into ``out_dir``: per-image JSON + overlay, per-batch CSVs.

    ``score_threshold`` applies to this batch only (default: the analyzer's, else the
    model's); a shared ``analyzer`` is never changed.

    Longer than the core's 60-line guideline: finding, skipping, analysing (in-process or on
    Dask), the DICOM step and tabulating all share the batch's ``result``; splitting it into a
    planning and a collecting step is the next clean-up here.

    A bad file is logged in one line, recorded in ``failed`` and skipped; the batch goes on.
    Images whose outputs are complete and still valid (same file, weights and model settings,
    threshold and spacing option: :func:`_still_valid`) are skipped unless ``force``; their JSON is loaded
    back so the breast and exam tables still cover the whole batch. ``report`` also writes
    one HTML and PDF exam report per exam into ``out_dir/reports``
    (:mod:`MicrocalcAI.core.outputs.report`); an exam whose report fails is listed in
    ``report_failures`` and the others are still written.

    ``dicom`` also writes the DICOM objects of each DICOM input (:func:`_write_dicom`),
    ``deidentify`` with the identity removed; a skipped image whose objects are missing or
    were written with the other ``deidentify`` choice gets them from its earlier findings.

    With a Dask ``client`` (:mod:`MicrocalcAI.core.distributed`) each image is a task on the
    cluster running :func:`analyse_to_files`, exactly as here; the DICOM objects, the tables and
    the reports are written here, by the client, once the images are done. A full output disk
    stops the batch at once (:class:`DiskFullError`).
    """
    from MicrocalcAI.core.outputs.complete import outputs_complete
    from MicrocalcAI.core.outputs.findings_json import load_image_json
    from MicrocalcAI.core.outputs.tables import write_batch_tables

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
    default_threshold = analyzer.score_threshold if analyzer is not None else spec.score_threshold
    threshold = default_threshold if score_threshold is None else float(score_threshold)
    if not 0.0 <= threshold <= 1.0:  # checked once here, the same for every path and worker
        raise InputError(f"score threshold must be in [0, 1], got {threshold}")
    names = output_names(files)
    todo = []
    for path, name in zip(files, names):
        if not force and outputs_complete(name, out):
            try:
                earlier = load_image_json(out / f"{name}.json")
            except MicrocalcAIError:
                earlier = None  # unreadable earlier output: redo the image
            if earlier is not None and _still_valid(earlier, path, spec, threshold, spacing_mm):
                if dicom:
                    _write_dicom(earlier, out, deidentify, result, only_missing=True)
                result.images.append(earlier)
                result.skipped.append(str(path))
                result.overlays[name] = out / f"{name}_overlay.png"
                continue
        todo.append((path, name))
    if todo and analyzer is None and client is None:
        progress(0.0, "loading model")
        analyzer = Analyzer(model, device, score_threshold=score_threshold)
    log.info("threshold %.3f; %d image(s) to analyse, %d already done", threshold, len(todo), len(result.skipped))

    if client is None:
        assert analyzer is not None or not todo
        outcomes = _analyse_here(analyzer, todo, out, spacing_mm, threshold, progress)
    else:
        from MicrocalcAI.core.distributed import analyse_on_cluster

        outcomes = analyse_on_cluster(
            client, todo, out, spec=spec, model=model, device=device, score_threshold=threshold, analyzer=analyzer,
            spacing_mm=spacing_mm, progress=progress,
        )  # fmt: skip
    done: dict[int, ImageOutcome] = {}
    try:
        for index, outcome in outcomes:
            done[index] = outcome
            if outcome.error is not None:
                path, message = outcome.path, outcome.error
                log.error("%s", message if str(path.name) in message else f"{path}: {message}")
    except DiskFullError as exc:
        raise DiskFullError(
            f"{exc}; batch stopped after {sum(o.error is None for o in done.values())} of {len(todo)} image(s) "
            "(finished images are kept and skipped on a re-run)"
        ) from exc
    finally:  # a writer killed outright (a cluster worker, SIGKILL) leaves its temporary file
        for _, name in todo:
            for suffix in (".json", "_overlay.png"):
                remove_temporaries(out / f"{name}{suffix}")
    for index in sorted(done):  # input order, whatever order a cluster finished them in
        outcome = done[index]
        if outcome.findings is None:
            result.failed.append((str(outcome.path), outcome.error or "failed"))
            continue
        result.images.append(outcome.findings)
        result.analysed.append(str(outcome.path))
        if outcome.overlay is not None:
            result.overlays[outcome.name] = outcome.overlay
        if dicom:
            _write_dicom(outcome.findings, out, deidentify, result)

    if result.images:
        result.breasts = breast_findings(result.images, spec.risk_categories)
        result.exams = exam_findings(result.breasts, spec.risk_categories)
    result.tables = write_batch_tables(result.images, result.breasts, result.exams, out)
    if report and result.images:
        from MicrocalcAI.core.outputs.report import write_exam_reports

        reports = write_exam_reports(
            result.images, out, spec=spec, exams=result.exams, progress=sub_progress(progress, 0.99, 1.0, "report: ")
        )
        result.reports, result.report_failures = reports.written, reports.failed
    progress(1.0, "batch done")
    return result


@dataclass
class ImageOutcome:
    """One image of a batch: its findings and overlay, or the one-line reason it failed."""

    path: Path
    name: str
    findings: Optional[ImageFindings] = None
    overlay: Optional[Path] = None
    error: Optional[str] = None
    disk_full: bool = False  # set by a cluster worker, which returns rather than raises it


def analyse_to_files(
    analyzer: Analyzer,
    path: Path,
    name: str,
    out: Path,
    *,
    spacing_mm: Optional[float] = None,
    threshold: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    prepared: Optional[Callable[[], PreparedImage]] = None,
) -> ImageOutcome:
    """Analyse one image and write its per-image outputs: the unit of work, local or on a cluster.

    ``prepared`` hands over the image already read and standardised on another thread (the
    in-process batch prefetches one image ahead); its errors count as this image's, like a
    read here would. A problem with this image becomes its ``error``; cancelling, a full disk
    and genuine bugs raise, because they concern the whole batch.
    """
    from MicrocalcAI.core.outputs.findings_json import write_image_json
    from MicrocalcAI.core.outputs.overlay import write_overlay

    try:
        if prepared is None:
            findings, stored01 = analyzer.analyse_with_image(
                path, name=name, spacing_mm=spacing_mm, threshold=threshold, progress=progress
            )
        else:
            findings, stored01 = analyzer.analyse_prepared(
                prepared(), name=name, threshold=threshold, progress=progress
            )
        write_image_json(findings, out)
        overlay = write_overlay(findings, stored01, out)
        return ImageOutcome(path, name, findings, overlay)
    except (CancelledError, DiskFullError):
        raise
    except MicrocalcAIError as exc:
        return ImageOutcome(path, name, error=str(exc))
    except MemoryError:
        return ImageOutcome(path, name, error="not enough memory")
    except RuntimeError as exc:  # torch reports device out-of-memory as a RuntimeError
        if "out of memory" not in str(exc).lower():
            raise
        return ImageOutcome(path, name, error="not enough device memory (try --device cpu)")


def _analyse_here(
    analyzer: Optional[Analyzer],
    todo: Sequence[tuple[Path, str]],
    out: Path,
    spacing_mm: Optional[float],
    threshold: Optional[float],
    progress: ProgressCallback,
) -> Iterator[tuple[int, ImageOutcome]]:
    """The in-process path: one image after the other with the caller's model.

    One image ahead: reading and standardising image i+1 (numpy, SimpleITK, pydicom, mostly
    outside the GIL) overlaps the model on image i, so both cores stay busy.
    """
    if not todo:
        return
    assert analyzer is not None
    n = len(todo)
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microcalcai-prefetch")

    def prepare(k: int) -> Future[PreparedImage]:
        return ahead.submit(analyzer.prepare, todo[k][0], spacing_mm=spacing_mm)

    try:
        pending: Optional[Future[PreparedImage]] = prepare(0)
        for i, (path, name) in enumerate(todo):
            current, pending = pending, (prepare(i + 1) if i + 1 < n else None)
            assert current is not None
            prefix = f"[{i + 1}/{n}] {path.name}: "
            progress(i / n, f"{prefix}reading")
            sub = sub_progress(progress, i / n, (i + 0.95) / n, prefix)
            yield (
                i,
                analyse_to_files(analyzer, path, name, out, threshold=threshold, progress=sub, prepared=current.result),
            )
            progress((i + 1) / n, f"{prefix}done")
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
