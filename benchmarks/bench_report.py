"""Time the exam reports: pictures (re-read + draw), HTML (jinja2) and PDF (WeasyPrint) per exam.

Reads the findings JSON of an earlier ``microcalcai detect --out OUTDIR`` and, for every exam,
times ``--repeats`` runs after one warm-up of each stage; prints the medians, the file sizes
and, as the baseline timed in the same run, re-reading and normalising the exam's images
alone (what any picture of the inputs costs). Run with

    python -m MicrocalcAI detect Resources/Samples/sim_R_CC.dcm --out /tmp/out
    python benchmarks/bench_report.py /tmp/out [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.detect.manifest import resolve_model  # noqa: E402
from MicrocalcAI.core.findings.risk import breast_findings, exam_findings  # noqa: E402
from MicrocalcAI.core.outputs.findings_json import load_image_json  # noqa: E402
from MicrocalcAI.core.outputs.report.exam_report import build_context, build_report_html, render_pdf  # noqa: E402
from MicrocalcAI.core.outputs.report.hanging import exam_images  # noqa: E402
from MicrocalcAI.core.outputs.report.pictures import load_view  # noqa: E402


def _median_time(job, repeats: int):
    job()  # warm-up (imports, font cache)
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = job()
        times.append(time.perf_counter() - t)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = [load_image_json(p) for p in sorted(args.outdir.glob("*.json"))]
    spec = resolve_model(images[0].model.name)
    units = exam_images(images, exam_findings(breast_findings(images, spec.risk_categories), spec.risk_categories))
    print(
        f"{'exam':36s} {'views':>5s} {'lesions':>7s} {'re-read':>8s} {'pictures':>8s} {'html':>6s} {'pdf':>6s}"
        f" {'html MB':>7s} {'pdf MB':>6s}  (median of {args.repeats}, seconds)"
    )
    for unit in units:
        reread, _ = _median_time(lambda u=unit: [load_view(f) for f in u.images], args.repeats)
        pictures, context = _median_time(lambda u=unit: build_context(u, spec), args.repeats)
        html_s, html = _median_time(lambda c=context: build_report_html(c), args.repeats)
        pdf_s, pdf = _median_time(lambda h=html: render_pdf(h), args.repeats)
        n_lesions = sum(len(f.lesions) for f in unit.images)
        print(
            f"{unit.name[:36]:36s} {len(unit.images):5d} {n_lesions:7d} {reread:8.2f} {pictures:8.2f} {html_s:6.2f}"
            f" {pdf_s:6.2f} {len(html.encode()) / 1e6:7.2f} {len(pdf) / 1e6:6.2f}"
        )
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
