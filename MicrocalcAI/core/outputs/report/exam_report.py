"""One visual report per exam: a self-contained HTML page and a PDF rendered from it.

The report is for people who would rather look than read: page 1 hangs the views with their
marks and shows the image, breast and exam risk in colour, with a warning box above them
when a view is unlike the model's training data (its risk is then "indeterminate"); then a close-up of every lesion;
then warnings, the model (name, version, training data) and the research-use notice.

The HTML embeds every picture as a ``data:`` URI and its style inline, so the single file
opens anywhere (mail, archive, offline browser) without missing pieces; WeasyPrint renders
the PDF from the same HTML. Each exam is built and written on its own: one that fails
(input moved, unreadable) is reported and the others still get theirs. Files are written
atomically, so an interrupted run leaves no half report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from MicrocalcAI import __version__
from MicrocalcAI.core.atomic import atomic_write_bytes, atomic_write_text
from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model, settings_mismatch
from MicrocalcAI.core.errors import MicrocalcAIError, ModelError
from MicrocalcAI.core.findings.risk import INDETERMINATE, breast_findings, exam_findings
from MicrocalcAI.core.outputs.findings_json import SCHEMA_VERSION, load_image_json
from MicrocalcAI.core.outputs.report.hanging import ExamImages, exam_images, side_name, view_label
from MicrocalcAI.core.outputs.report.pictures import data_uri, lesion_crop, load_view, view_picture
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import ExamFindings, ImageFindings, Risk

__all__ = [
    "REPORT_FOLDER",
    "REPORT_FORMATS",
    "ReportError",
    "ReportResult",
    "build_report_html",
    "render_pdf",
    "reports_from_folder",
    "write_exam_reports",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Reports go into this sub-folder of the output folder.
REPORT_FOLDER = "reports"
REPORT_FORMATS = ("html", "pdf")
TEMPLATE = "exam_report.html.j2"

NOT_FOR_CLINICAL_USE = (
    "Research software. Not for clinical use. These marks and risks are not a diagnosis and must not "
    "guide patient care."
)

#: Colours of the risk categories a model may name; other names are coloured by their rank.
#: "indeterminate" (an image unlike the training data) is purple: no rank, not a low or high.
CATEGORY_COLOURS = {"low": "#2e7d32", "intermediate": "#ef6c00", "high": "#c62828", INDETERMINATE: "#6a1b9a"}
RANK_COLOURS = ("#2e7d32", "#f9a825", "#ef6c00", "#c62828")
UNKNOWN_COLOUR = "#616161"
CLASS_CSS = {"malignant": "#c62828", "benign": "#b59a00"}


class ReportError(MicrocalcAIError):
    """A report cannot be built (missing template engine, unknown model, nothing to report)."""


@dataclass
class ReportResult:
    """Reports written and exams that failed, with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (exam, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- context


def _risk_colour(category: str, spec: Optional[ModelSpec]) -> str:
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    if spec is not None:
        names = [c.name for c in sorted(spec.risk_categories, key=lambda c: c.min_probability)]
        if category in names and len(names) > 1:
            step = (len(RANK_COLOURS) - 1) / (len(names) - 1)
            return RANK_COLOURS[int(round(names.index(category) * step))]
    return UNKNOWN_COLOUR


def _risk(risk: Risk, spec: Optional[ModelSpec]) -> dict[str, Any]:
    return {"p": f"{risk.probability:.2f}", "category": risk.category, "colour": _risk_colour(risk.category, spec)}


def _categories(spec: Optional[ModelSpec]) -> list[dict[str, Any]]:
    if spec is None:
        return []
    ordered = sorted(spec.risk_categories, key=lambda c: c.min_probability)
    return [{"name": c.name, "from": f"{c.min_probability:.2f}", "colour": _risk_colour(c.name, spec)} for c in ordered]


def _model(images: list[ImageFindings], spec: Optional[ModelSpec]) -> dict[str, Any]:
    info = images[0].model
    same = spec is not None and spec.sha256 == info.sha256
    return {
        "name": info.name,
        "version": info.version,
        "backbone": info.backbone,
        "sha256": info.sha256[:12],
        "threshold": f"{images[0].score_threshold:.2f}",
        "training_data": spec.training_data if same and spec and spec.training_data else "not recorded",
        "intended_use": spec.intended_use if same and spec else "",
    }


def _size_mm(box_mm: tuple[float, float, float, float]) -> str:
    return f"{abs(box_mm[2] - box_mm[0]):.1f} x {abs(box_mm[3] - box_mm[1]):.1f}"


def build_context(unit: ExamImages, spec: Optional[ModelSpec], *, created: Optional[datetime] = None) -> dict[str, Any]:
    """Everything the template shows for one exam, pictures included (as data URIs)."""
    created = created or datetime.now(timezone.utc)
    views, lesions, warnings = [], [], []
    unlike: list[dict[str, Any]] = []  # views flagged as unlike the training data
    assumed_spacing = spec.assumed_input_spacing_mm if spec is not None else 0.05
    for f in unit.images:
        pixels = load_view(f, assumed_input_spacing_mm=assumed_spacing)
        label = view_label(f)
        image_warnings = list(dict.fromkeys(list(f.warnings) + pixels.warnings))
        warnings += [{"view": label, "text": w} for w in image_warnings]
        if f.ood is not None and f.ood.flagged:
            unlike.append(
                {
                    "view": label,
                    "score": f"{f.ood.score:.2f}",
                    "threshold": f"{f.ood.threshold:.2f}",
                    "p": f"{f.risk.probability:.2f}",
                    "reasons": list(f.ood.reasons),
                }
            )
        views.append(
            {
                "label": label,
                "name": f.name,
                "src": data_uri(view_picture(f, pixels), fmt="JPEG"),
                "risk": _risk(f.risk, spec),
                "n_lesions": len(f.lesions),
                "spacing_assumed": f.spacing_source == "assumed",
                "spacing": f"{f.spacing_mm[1]:g}",
                "n_warnings": len(image_warnings),
                "mirrored": pixels.mirror,
                "unlike_training": bool(f.ood is not None and f.ood.flagged),
            }
        )
        for lesion in f.lesions:
            lesions.append(
                {
                    "view": label,
                    "id": lesion.id,
                    "label": lesion.label,
                    "colour": CLASS_CSS.get(lesion.label, UNKNOWN_COLOUR),
                    "p": f"{lesion.p_malignant:.2f}",
                    "score": f"{lesion.score:.2f}",
                    "specks": lesion.speck_count,
                    "size_mm": _size_mm(lesion.box_mm),
                    "src": data_uri(lesion_crop(f, pixels, lesion)),
                }
            )
    for breast in unit.exam.breasts:
        warnings += [{"view": f"{side_name(breast.laterality)} breast", "text": w} for w in breast.warnings]
    other = settings_mismatch((f.model.settings_sha256 for f in unit.images), spec)
    if other:
        warnings.append({"view": "model", "text": other})
    breasts = [
        {
            "side": side_name(b.laterality),
            "views": " + ".join(v or "?" for v in b.views),
            "risk": _risk(b.risk, spec),
            "indeterminate_images": list(b.indeterminate_images),
        }
        for b in sorted(unit.exam.breasts, key=lambda b: {"R": 0, "L": 1}.get(b.laterality or "", 2))
    ]
    exam = unit.exam
    return {
        "title": f"MicrocalcAI exam report: {exam.patient_id or unit.images[0].name}",
        "patient_id": exam.patient_id or "unknown",
        "study_uid": exam.study_uid or "unknown",
        "exam_risk": _risk(exam.risk, spec),
        "breasts": breasts,
        "views": views,
        "lesions": lesions,
        "warnings": warnings,
        "unlike_training": unlike,
        "exam_indeterminate": exam.risk.category == INDETERMINATE,
        "categories": _categories(spec)
        + ([{"name": INDETERMINATE, "from": None, "colour": CATEGORY_COLOURS[INDETERMINATE]}] if unlike else []),
        "model": _model(unit.images, spec),
        "notice": NOT_FOR_CLINICAL_USE,
        "created": created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tool_version": __version__,
    }


# --------------------------------------------------------------------------- rendering


def _environment():
    try:
        import jinja2
    except ImportError as exc:
        raise ReportError("reports need jinja2 and weasyprint: pip install 'MicrocalcAI[report]'") from exc
    return jinja2.Environment(
        loader=jinja2.PackageLoader("MicrocalcAI.core.outputs.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_report_html(context: dict[str, Any]) -> str:
    """The report as one self-contained HTML document."""
    return _environment().get_template(TEMPLATE).render(**context)


def render_pdf(html: str) -> bytes:
    """The PDF WeasyPrint renders from the report HTML (it needs nothing outside the HTML)."""
    try:
        import weasyprint
    except ImportError as exc:
        raise ReportError("PDF reports need weasyprint: pip install 'MicrocalcAI[report]'") from exc

    # Everything is embedded: any fetch other than a data: URI means a broken report, so it fails.
    fetcher_class = getattr(weasyprint.urls, "URLFetcher", None)
    if fetcher_class is not None:  # WeasyPrint >= 68
        fetcher = fetcher_class(allowed_protocols={"data"}, fail_on_errors=True)
    else:  # older WeasyPrint: a plain function

        def fetcher(url: str, *args: Any, **kwargs: Any) -> Any:
            if not url.startswith("data:"):
                raise ValueError(f"report refers to an external resource {url!r}")
            return weasyprint.default_url_fetcher(url, *args, **kwargs)

    return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()


def _resolve_spec(images: list[ImageFindings], spec: Optional[ModelSpec], model: Optional[str]) -> ModelSpec:
    """The model entry whose operating points categorise the breast and exam risks."""
    if spec is not None:
        return spec
    name = model or images[0].model.name
    try:
        return resolve_model(name)
    except ModelError as exc:
        raise ReportError(
            f"the findings were made by model {images[0].model.name!r}, which the bundled manifest does not list: "
            f"pass --model with its manifest ({exc})"
        ) from exc


def write_exam_reports(
    images: Sequence[ImageFindings],
    out_dir: PathLike,
    *,
    spec: Optional[ModelSpec] = None,
    model: Optional[str] = None,
    exams: Optional[list[ExamFindings]] = None,
    formats: Sequence[str] = REPORT_FORMATS,
    progress: Optional[ProgressCallback] = None,
) -> ReportResult:
    """Write ``out_dir/reports/<exam>.html`` and ``.pdf`` for every exam among ``images``.

    ``exams`` defaults to grouping ``images`` with :mod:`MicrocalcAI.core.findings.risk`
    (pass the batch's own to reuse them). A failing exam is logged, listed in ``failed``
    and skipped; the others are still written.
    """
    progress = progress or no_progress
    bad = [f for f in formats if f not in REPORT_FORMATS]
    if bad or not formats:
        raise ReportError(f"unknown report format(s) {bad or list(formats)}; use {list(REPORT_FORMATS)}")
    images = list(images)
    result = ReportResult()
    if not images:
        return result
    spec = _resolve_spec(images, spec, model)
    if exams is None:
        exams = exam_findings(breast_findings(images, spec.risk_categories), spec.risk_categories)
    _environment()  # a missing jinja2 stops here, once, not once per exam
    folder = Path(out_dir) / REPORT_FOLDER
    units = exam_images(images, exams)
    for i, unit in enumerate(units):
        label = unit.exam.patient_id or unit.name
        progress(i / len(units), f"report {i + 1}/{len(units)}: {label}")
        try:
            html = build_report_html(build_context(unit, spec))
            if "html" in formats:
                result.written.append(atomic_write_text(folder / f"{unit.name}.html", html))
            if "pdf" in formats:
                result.written.append(atomic_write_bytes(folder / f"{unit.name}.pdf", render_pdf(html)))
        except (MicrocalcAIError, OSError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, MicrocalcAIError) else f"{type(exc).__name__}: {exc}"
            log.error("report for exam %s failed: %s", label, reason)
            result.failed.append((label, reason))
    progress(1.0, "reports done")
    return result


def _is_findings_json(path: Path) -> bool:
    """A findings JSON of this tool (other JSON in the folder, e.g. metrics, is not)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError):
        return True  # unreadable: let the loader say why, as a failure of that image
    return isinstance(doc, dict) and "schema_version" in doc and "lesions" in doc and "input" in doc


def reports_from_folder(
    out_dir: PathLike,
    *,
    spec: Optional[ModelSpec] = None,
    model: Optional[str] = None,
    formats: Sequence[str] = REPORT_FORMATS,
    progress: Optional[ProgressCallback] = None,
) -> ReportResult:
    """Reports from an earlier ``microcalcai detect --out out_dir``: its findings JSON plus the inputs.

    An unreadable findings file is listed in ``failed`` (its exam cannot be complete); the
    other exams are still written.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder: give the --out folder of an earlier microcalcai detect")
    images: list[ImageFindings] = []
    failed: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.json")):
        if not _is_findings_json(path):
            continue
        try:
            images.append(load_image_json(path))
        except MicrocalcAIError as exc:
            log.error("%s", exc)
            failed.append((path.name, str(exc)))
    if not images and not failed:
        raise ReportError(
            f"no findings JSON (schema {SCHEMA_VERSION}) in {folder}: run microcalcai detect --out {folder} first"
        )
    result = write_exam_reports(images, folder, spec=spec, model=model, formats=formats, progress=progress)
    result.failed = failed + result.failed
    return result
