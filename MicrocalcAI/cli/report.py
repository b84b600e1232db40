"""``microcalcai report``: visual exam reports (HTML + PDF) from an earlier ``detect --out`` folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from MicrocalcAI.cli.common import EXIT_OK, EXIT_SOME_FAILED, run_with_bar

__all__ = ["print_report_failures", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = subparsers.add_parser(
        "report",
        help="build one visual exam report per exam (HTML and PDF) from an earlier 'detect --out' folder",
        description="Reads the findings JSON in OUTDIR and the input images they name (needed for the "
        "pictures), and writes OUTDIR/reports/<exam>.html and .pdf.",
    )
    rep.add_argument("outdir", metavar="OUTDIR", help="the --out folder of an earlier microcalcai detect")
    rep.add_argument(
        "--model",
        default=None,
        help="model name or manifest.json whose operating points categorise the risks "
        "(default: the model named in the findings, from the bundled manifest)",
    )
    rep.add_argument(
        "--format", choices=("both", "html", "pdf"), default="both", help="which files to write (default both)"
    )
    rep.add_argument("--quiet", action="store_true", help="no progress bar, only warnings and errors")
    rep.add_argument("--verbose", action="store_true", help="debug logging")
    rep.set_defaults(func=run)


def print_report_failures(failures: Sequence[tuple[str, str]]) -> None:
    print(f"{len(failures)} report(s) failed:", file=sys.stderr)
    for exam, reason in failures:
        print(f"  {exam}: {reason}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.outputs.report import REPORT_FORMATS, reports_from_folder

    formats = REPORT_FORMATS if args.format == "both" else (args.format,)
    result = run_with_bar(
        "report",
        args.quiet,
        lambda bar: reports_from_folder(args.outdir, model=args.model, formats=formats, progress=bar),
    )
    if not args.quiet:
        for path in result.written:  # type: ignore[attr-defined]
            print(path)
    if result.failed:  # type: ignore[attr-defined]
        print_report_failures(result.failed)  # type: ignore[attr-defined]
        return EXIT_SOME_FAILED
    return EXIT_OK
