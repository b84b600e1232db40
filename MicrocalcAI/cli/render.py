"""``microcalcai render``: findings JSON and overlays from our DICOM SRs (e.g. back from a PACS)."""

from __future__ import annotations

import argparse
import sys

from MicrocalcAI.cli.common import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    render = subparsers.add_parser(
        "render",
        help="re-create findings JSON and overlays from MicrocalcAI TID 1500 / Mammography CAD SRs",
    )
    render.add_argument(
        "inputs", nargs="+", metavar="SR_OR_FOLDER", help="SR files or folders (their SEGs restore the speck sizes)"
    )
    render.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="folders (or files) holding the analysed images, found by SOP Instance UID (needed for overlays)",
    )
    render.add_argument("--out", required=True, metavar="DIR", help="output folder")
    render.add_argument("--quiet", action="store_true", help="no progress bar, only warnings and errors")
    render.add_argument("--verbose", action="store_true", help="debug logging")
    render.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.outputs.dicom.render import render_srs

    result = run_with_bar(
        "render", args.quiet, lambda bar: render_srs(args.inputs, args.out, image_dirs=args.images, progress=bar)
    )
    if not args.quiet:
        print(f"{len(result.json)} findings JSON, {len(result.overlays)} overlay(s) in {args.out}")  # type: ignore[attr-defined]
    if not result.json and not result.failed:  # type: ignore[attr-defined]
        return EXIT_ERROR
    if result.failed or result.missing_images:  # type: ignore[attr-defined]
        for path, reason in result.failed:  # type: ignore[attr-defined]
            print(f"  {path}: {reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
