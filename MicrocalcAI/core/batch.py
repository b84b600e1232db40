"""Batches: files and folders -> per-image outputs and per-batch tables, resumable.

:func:`run_batch` analyses every image found, writes its JSON and overlay atomically, skips
images whose outputs are already complete and were made the same way, reports a bad file
with its reason and goes on, and finally writes the image, breast and exam tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model
from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError, OutputError
from MicrocalcAI.core.findings.risk import breast_findings, exam_findings
from MicrocalcAI.core.pipeline import Analyzer, _sub_progress, file_fingerprint
from MicrocalcAI.core.read import find_images
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings, ProgressCallback, no_progress

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
    from MicrocalcAI.core.outputs.findings_json import (
        load_image_json,
        outputs_complete,
        write_batch_tables,
        write_image_json,
        write_overlay,
    )

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
    threshold = (
        analyzer.score_threshold
        if analyzer is not None
        else (spec.score_threshold if score_threshold is None else float(score_threshold))
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
    # One image ahead: reading and standardising image i+1 (numpy, SimpleITK, pydicom, mostly
    # outside the GIL) overlaps the model on image i, so both cores stay busy. A failure of
    # the read surfaces from .result() below, in the loop that reports and skips it.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microcalcai-prefetch")

    def prepare(k: int) -> Future:
        assert analyzer is not None
        return ahead.submit(analyzer.prepare, todo[k][0], spacing_mm=spacing_mm)

    try:
        pending = prepare(0) if todo else None
        for i, (path, name) in enumerate(todo):
            prefix = f"[{i + 1}/{len(todo)}] {path.name}: "
            current, pending = pending, (prepare(i + 1) if i + 1 < len(todo) else None)
            try:
                assert analyzer is not None and current is not None
                progress(i / n, f"{prefix}reading")
                findings, stored01 = analyzer.analyse_prepared(
                    current.result(), name=name, progress=_sub_progress(progress, i / n, (i + 0.95) / n, prefix)
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
                log.error(
                    "%s: not enough %s memory to analyse this image", path, analyzer.device if analyzer else "device"
                )
                result.failed.append((str(path), "not enough device memory (try --device cpu)"))
            progress((i + 1) / n, f"{prefix}done")
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)

    if result.images:
        result.breasts = breast_findings(result.images, spec)
        result.exams = exam_findings(result.breasts, spec)
    result.tables = write_batch_tables(result.images, result.breasts, result.exams, out)
    progress(1.0, "batch done")
    return result
