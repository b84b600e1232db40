"""Visual exam reports (HTML and PDF), one per exam, from findings and the input images.

``write_exam_reports`` builds them from findings in memory (``microcalcai detect --report``);
``reports_from_folder`` from the findings JSON of an earlier run (``microcalcai report``).
"""

from MicrocalcAI.core.outputs.report.exam_report import (
    REPORT_FOLDER,
    REPORT_FORMATS,
    ReportError,
    ReportResult,
    build_report_html,
    render_pdf,
    reports_from_folder,
    write_exam_reports,
)

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
