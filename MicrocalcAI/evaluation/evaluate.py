"""Where a model is measured on a labelled dataset (``microcalcai evaluate COCO --out DIR``).

The figures of Lin et al. (lesion-level accuracy, sensitivity and specificity for malignant;
the same at image and breast level), plus threshold-free curves: ROC AUC with bootstrap 95%
intervals, FROC and calibration. The exact definitions are in ``docs/evaluation.md``; the
short version:

* **Matching rule** (the one used in training, :func:`MicrocalcAI.core.boxes.hit_matrix`): a
  ground-truth (GT) lesion is *found* by a reported lesion when their boxes have IoU >= 0.2 or
  the reported box's centre lies inside the GT box. Among several finders the highest-scoring
  one is *the* match. A reported lesion that finds no GT lesion is a false positive (FP).
* **Missed lesions are never dropped.** A GT lesion with no match is a *missed* lesion; for
  malignancy it is "predicted not malignant", so a missed malignant lesion is a false
  negative. (The paper's released code evaluates only lesions with an overlapping
  prediction, which hides every miss; ``matched_only`` numbers are reported next to ours
  only so the two can be compared.)
* Images the pipeline refuses, or that have no findings file, count as images with no
  detection: all their lesions missed, image risk 0. They are listed in the report.
* Image and breast level: truth positive = at least one malignant GT lesion (images with no
  lesions are negatives); the score is the image risk ``detect`` reports (highest
  ``score * p_malignant`` of the reported lesions,
  :func:`MicrocalcAI.core.findings.risk.image_probability_of`) and the breast risk (highest of
  its views). Operating points, cuts on a lesion's p_malignant, are applied to the highest
  reported p_malignant; risk-category boundaries to the risk.

The package is split by stage: :mod:`~MicrocalcAI.evaluation.matching` (who finds whom, on
the hit rule of :mod:`MicrocalcAI.core.boxes`), :mod:`~MicrocalcAI.evaluation.metrics` (pure:
GT + findings in, a JSON-ready dict out), :mod:`~MicrocalcAI.evaluation.curves` (ROC, FROC,
calibration) and :mod:`~MicrocalcAI.evaluation.plots`. This module is the dataset runner:
:func:`evaluate_dataset` runs the real pipeline (or reads ``microcalcai detect`` outputs) and
:func:`write_report` writes ``metrics.json`` and the ROC, FROC and calibration plots.

Boxes are compared in stored-pixel coordinates. Training compares them in the canonical frame;
the two agree because flips, translations and per-axis scalings change neither IoU nor
"centre inside".
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from MicrocalcAI.core.atomic import atomic_write_bytes, atomic_write_text
from MicrocalcAI.core.detect.manifest import ModelSpec, settings_mismatch
from MicrocalcAI.core.errors import CancelledError, DatasetError, MicrocalcAIError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import ImageFindings
from MicrocalcAI.datasets.coco import parse_coco
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE
from MicrocalcAI.evaluation.matching import truth_from_entry
from MicrocalcAI.evaluation.metrics import DETECTOR_CLASS, compute_metrics, json_ready
from MicrocalcAI.evaluation.plots import PLOTTERS

__all__ = ["METRICS_FILE", "PLOT_FILES", "EvaluationReport", "evaluate_dataset", "write_report"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

METRICS_FILE = "metrics.json"
PLOT_FILES = tuple(PLOTTERS)


@dataclass
class EvaluationReport:
    """Everything one evaluation produced: the metrics and where they came from."""

    dataset: str
    model: dict[str, Any]
    metrics: dict[str, Any]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)
    elapsed_s: float = 0.0
    seconds_per_image: Optional[float] = None
    findings_source: str = "pipeline"  # "pipeline" or the findings folder
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return json_ready(
            {
                "dataset": self.dataset,
                "model": self.model,
                "findings_source": self.findings_source,
                "elapsed_s": round(self.elapsed_s, 2),
                "seconds_per_image": self.seconds_per_image,
                "failed": [{"path": p, "reason": r} for p, r in self.failed],
                **self.metrics,
            }
        )

    def summary(self) -> str:
        """A few lines for a terminal: the paper's headline figures and the curves' summaries."""
        m = self.metrics
        det, les = m["detection"], m["lesion_level"]
        cls = les["classification"][DETECTOR_CLASS]

        def f(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        def ci(block: dict[str, Any], key: str) -> str:
            c = block.get(key)
            return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""

        lines = [
            (
                f"{m['n_images']} images, {les['n_lesions']} lesions ({les['n_malignant']} malignant); "
                f"threshold {m['score_threshold']:.2f}; {m['n_images_not_analysed']} not analysed"
            ),
            f"detection: sensitivity {f(det['lesion_sensitivity'])}, {f(det['fp_per_image'])} FP/image; FROC "
            + ", ".join(f"{k}:{f(v)}" for k, v in det["froc"]["sensitivity_at_fp_per_image"].items()),
            (
                f"lesion (malignant, missed = negative): accuracy {f(cls['accuracy'])}, sensitivity "
                f"{f(cls['sensitivity'])}{ci(cls, 'sensitivity_ci95')}, specificity {f(cls['specificity'])}; "
                f"AUC (matched) {f(les['auc_benign_vs_malignant_matched']['auc'])}"
                f"{ci(les['auc_benign_vs_malignant_matched'], 'auc_ci95')}"
            ),
        ]
        hard = det.get("hard_negatives") or {}
        if hard.get("n"):
            lines.append(
                f"hard negatives marked: {hard['marked']}/{hard['n']} ("
                + ", ".join(f"{k} {v['marked']}/{v['n']}" for k, v in sorted(hard["by_type"].items()))
                + ")"
            )
        for key, block in (det.get("by_descriptor") or {}).items():
            lines.append(
                f"sensitivity by {key}: "
                + ", ".join(f"{k} {f(v['sensitivity'])} (n={v['n']})" for k, v in block.items())
            )
        cal = m.get("calibration")
        if cal is not None:
            lines.append(
                "calibration (raw -> calibrated ECE): p_malignant "
                + " -> ".join(f(cal["p_malignant_matched"][k]["ece"]) for k in ("raw", "calibrated"))
                + ", lesion score "
                + " -> ".join(f(cal["lesion_score"][k]["ece"]) for k in ("raw", "calibrated"))
                + ("" if cal["model_calibration"] else " (model has no calibration)")
            )
        for level in ("image_level", "breast_level"):
            block = m[level]
            detection = block.get("detection_auc") or {}  # absent from reports before 2026-12-03
            lines.append(
                f"{level.replace('_', ' ')}: AUC {f(block['auc']['auc'])}{ci(block['auc'], 'auc_ci95')}"
                f" (malignant vs the rest, by the risk); lesion vs none AUC {f(detection.get('auc'))}"
                f"{ci(detection, 'auc_ci95')} (by the detection score); "
                + "; ".join(
                    f"{name}: acc {f(c['accuracy'])} sens {f(c['sensitivity'])} spec {f(c['specificity'])}"
                    for name, c in block["classification"].items()
                )
            )
        return "\n".join(lines)


def _findings_index(findings_dir: Path) -> tuple[dict[str, ImageFindings], dict[str, ImageFindings]]:
    """Findings JSON files of a ``microcalcai detect`` folder, by resolved source path and by name."""
    from MicrocalcAI.core.outputs.findings_json import load_image_json

    by_source: dict[str, ImageFindings] = {}
    by_name: dict[str, ImageFindings] = {}
    for path in sorted(findings_dir.glob("*.json")):
        if path.name == METRICS_FILE:
            continue
        try:
            f = load_image_json(path)
        except MicrocalcAIError as exc:
            log.debug("not a findings file, ignored: %s (%s)", path, exc)
            continue
        if f.source:
            by_source[str(Path(f.source).resolve())] = f
        by_name[f.name] = f
    return by_source, by_name


def _resolve_spec(model: Optional[str], findings: Sequence[Optional[ImageFindings]]) -> ModelSpec:
    """The model whose operating points apply: ``model``, else the one named in the findings."""
    from MicrocalcAI.core.detect.manifest import resolve_model

    named = next((f.model for f in findings if f is not None), None)
    if model is None and named is not None:
        try:
            spec = resolve_model(named.name)
        except MicrocalcAIError:
            log.warning(
                "model %r of the findings is not in the bundled manifest: default operating points used", named.name
            )
            spec = resolve_model(None)
    else:
        spec = resolve_model(model)
    other = settings_mismatch((f.model.settings_sha256 for f in findings if f is not None), spec)
    if other:
        log.warning("%s", other)
    shas = {f.model.sha256 for f in findings if f is not None}
    if shas and shas != {spec.sha256}:
        log.warning(
            "findings were made by weights %s, evaluated with the operating points of %s (%s)",
            sorted(s[:12] for s in shas),
            spec.name,
            spec.sha256[:12],
        )
    return spec


def evaluate_dataset(
    coco_json: PathLike,
    out_dir: PathLike,
    *,
    model: Optional[str] = None,
    device: Optional[str] = "auto",
    progress: Optional[ProgressCallback] = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    findings_dir: Optional[PathLike] = None,
) -> EvaluationReport:
    """Evaluate a model on a COCO dataset and write ``metrics.json`` and plots into ``out_dir``.

    Without ``findings_dir`` every image goes through the real pipeline (read, standardise,
    tiled detect, findings) with one :class:`MicrocalcAI.core.pipeline.Analyzer`, keeping lesions
    down to score :data:`EVAL_MIN_SCORE` so the FROC sweep covers the low-threshold end; the
    per-image findings are also written to ``out_dir/findings/`` (reusable with
    ``findings_dir``). With ``findings_dir`` the JSON files written by ``microcalcai detect``
    are used (matched by source path, else by file stem); the FROC then starts at their
    threshold. Images that cannot be analysed or have no findings count as "nothing
    detected" and are listed in the report.
    """
    from MicrocalcAI.core.batch import output_names
    from MicrocalcAI.core.outputs.findings_json import write_image_json
    from MicrocalcAI.core.pipeline import Analyzer
    from MicrocalcAI.core.read import read_mammogram

    progress = progress or no_progress
    started = time.monotonic()
    out = Path(out_dir)
    entries = parse_coco(coco_json)
    truth = [truth_from_entry(entry) for entry in entries]
    findings: list[Optional[ImageFindings]] = [None] * len(truth)
    failed: list[tuple[str, str]] = []
    analyse_s: Optional[float] = None

    if findings_dir is not None:
        folder = Path(findings_dir)
        if not folder.is_dir():
            raise DatasetError(f"findings folder not found: {folder}")
        by_source, by_name = _findings_index(folder)
        for i, (t, entry) in enumerate(zip(truth, entries)):
            f = by_source.get(str(entry.path.resolve())) or by_name.get(t.name)
            if f is None:
                failed.append((str(entry.path), f"no findings file in {folder}"))
                log.warning("%s: no findings in %s; counted as nothing detected", entry.path.name, folder)
            findings[i] = f
        spec = _resolve_spec(model, findings)
        source = str(folder)
    else:
        progress(0.0, "loading model")
        probe = _resolve_spec(model, [])
        # Everything the model can report: its merge floor on the calibrated scale.
        analyzer = Analyzer(
            model, device, score_threshold=min(EVAL_MIN_SCORE, probe.reporting_floor, probe.score_threshold)
        )
        spec = analyzer.spec
        names = output_names([e.path for e in entries])
        n = max(len(entries), 1)
        t0 = time.monotonic()
        for i, (entry, name) in enumerate(zip(entries, names)):
            prefix = f"[{i + 1}/{len(entries)}] {entry.path.name}: "
            progress(0.02 + 0.93 * i / n, f"{prefix}analysing")
            try:
                mammogram = read_mammogram(entry.path)
                if mammogram.spacing_mm is None and entry.spacing_mm is not None:
                    # As a user's --spacing would: only where the file itself has none.
                    mammogram.spacing_mm = (entry.spacing_mm, entry.spacing_mm)
                    mammogram.spacing_source = "user"
                f = analyzer.analyse(mammogram, name=name)
                findings[i] = f
                write_image_json(f, out / "findings")
            except CancelledError:
                raise
            except MicrocalcAIError as exc:
                log.error("%s: %s; counted as nothing detected", entry.path, exc)
                failed.append((str(entry.path), str(exc)))
        analyse_s = (time.monotonic() - t0) / len(entries) if entries else None
        source = "pipeline"

    progress(0.96, "computing metrics")
    metrics = compute_metrics(truth, findings, spec=spec, n_bootstrap=n_bootstrap, seed=seed)
    report = EvaluationReport(
        dataset=str(coco_json),
        model={"name": spec.name, "version": spec.version, "sha256": spec.sha256, "backbone": spec.backbone},
        metrics=metrics,
        failed=failed,
        elapsed_s=time.monotonic() - started,
        seconds_per_image=analyse_s,
        findings_source=source,
    )
    progress(0.98, "writing report")
    report.files = write_report(report, out)
    progress(1.0, f"evaluation written to {out}")
    log.info("evaluated %d images in %.1f s", len(truth), report.elapsed_s)
    return report


def write_report(report: EvaluationReport, out_dir: PathLike) -> list[Path]:
    """Write ``metrics.json``, ``roc.png``, ``froc.png`` and ``calibration.png`` atomically."""
    out = Path(out_dir)
    text = json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n"
    written = [atomic_write_text(out / METRICS_FILE, text)]
    for name, plot in PLOTTERS.items():
        written.append(atomic_write_bytes(out / name, plot(report.metrics)))
    return written
