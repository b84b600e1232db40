"""``microcalcai detect``: analyse mammograms into findings JSON, overlays and CSV tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MicrocalcAI.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    fraction_arg,
    positive_count_arg,
    run_with_bar,
    spacing_arg,
)
from MicrocalcAI.cli.report import print_report_failures

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    det = subparsers.add_parser(
        "detect", help="analyse mammograms (files or folders) into JSON, overlays and CSV tables"
    )
    det.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    det.add_argument("--out", required=True, metavar="DIR", help="output folder")
    det.add_argument(
        "--model",
        default=None,
        help="model name in the bundled manifest, a manifest.json, or a weights file listed in a manifest next to it",
    )
    det.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, cuda:1, mps")
    det.add_argument(
        "--threshold",
        type=fraction_arg,
        default=None,
        help="lesion score threshold (default: the model's); nothing below 0.05 is ever reported",
    )
    det.add_argument(
        "--spacing",
        type=spacing_arg,
        default=None,
        metavar="MM",
        help="pixel spacing in mm for all inputs (overrides the files')",
    )
    det.add_argument(
        "--report",
        action="store_true",
        help="also write one visual exam report per exam (HTML and PDF) into DIR/reports",
    )
    det.add_argument(
        "--dicom",
        action="store_true",
        help="also write, per DICOM input, a Mammography CAD SR, a TID 1500 SR, a presentation state and a speck SEG",
    )
    det.add_argument(
        "--deidentify",
        action="store_true",
        help="with --dicom: write the DICOM objects with patient and study identity removed (PS3.15 basic profile)",
    )
    det.add_argument("--force", action="store_true", help="redo images whose outputs already exist")
    det.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    where = det.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_count_arg("worker processes"),
        default=None,
        metavar="N",
        help="run on a Dask LocalCluster of N worker processes on this machine (127.0.0.1 only; needs dask)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster (e.g. tcp://host:8786); its workers must see the same paths",
    )
    det.add_argument("--quiet", action="store_true", help="no progress bar, only warnings and errors")
    det.add_argument("--verbose", action="store_true", help="debug logging")
    det.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.batch import run_batch

    if args.deidentify and not args.dicom:
        print("error: --deidentify applies to the DICOM objects: add --dicom", file=sys.stderr)
        return EXIT_ERROR

    def batch(bar, client=None):  # noqa: ANN001, ANN202
        return run_batch(
            args.inputs,
            args.out,
            model=args.model,
            device=args.device,
            score_threshold=args.threshold,
            spacing_mm=args.spacing,
            force=args.force,
            recursive=not args.no_recursive,
            progress=bar,
            report=args.report,
            dicom=args.dicom,
            deidentify=args.deidentify,
            client=client,
        )

    if args.workers is None and args.scheduler is None:
        result = run_with_bar("detect", args.quiet, batch)
    else:
        result = _run_on_dask(args, batch)
    if not args.quiet:
        _print_summary(result, Path(args.out))
    status = EXIT_OK
    if result.failed:  # type: ignore[attr-defined]
        print(f"{len(result.failed)} input(s) failed:", file=sys.stderr)  # type: ignore[attr-defined]
        for path, reason in result.failed:  # type: ignore[attr-defined]
            line = reason if Path(path).name in reason else f"{path}: {reason}"
            print(f"  {line}", file=sys.stderr)
        status = EXIT_SOME_FAILED
    if result.report_failures:  # type: ignore[attr-defined]
        print_report_failures(result.report_failures)  # type: ignore[attr-defined]
        status = EXIT_SOME_FAILED
    return status


def _run_on_dask(args: argparse.Namespace, batch) -> object:  # noqa: ANN001
    try:
        from MicrocalcAI.core.distributed import cluster_client, dashboard_link
    except ImportError as exc:
        from MicrocalcAI.core.errors import MicrocalcAIError

        raise MicrocalcAIError(
            f"--workers/--scheduler need Dask ({exc}); install it with: pip install 'MicrocalcAI[cluster]'"
        ) from exc
    with cluster_client(workers=args.workers, scheduler=args.scheduler) as client:
        link = dashboard_link(client)
        if link and not args.quiet:
            print(f"Dask dashboard: {link}", file=sys.stderr)
        return run_with_bar("detect", args.quiet, lambda bar: batch(bar, client))


def _print_summary(result, out: Path) -> None:
    print(
        f"\n{len(result.analysed)} analysed, {len(result.skipped)} already done (skipped), {len(result.failed)} failed"
    )
    if result.images:
        print(f"\n{'image':40s} {'side':4s} {'view':4s} {'lesions':>7s} {'malig.':>6s} {'p(cancer)':>9s}  category")
        for f in result.images:
            n_mal = sum(1 for les in f.lesions if les.label == "malignant")
            print(
                f"{f.name[:40]:40s} {f.laterality or '?':4s} {f.view or '?':4s} {len(f.lesions):7d} {n_mal:6d} "
                f"{f.risk.probability:9.3f}  {f.risk.category}"
            )
    if result.breasts:
        print(f"\n{'breast (patient / side)':40s} {'views':10s} {'p(cancer)':>9s}  category")
        for b in result.breasts:
            views = "+".join(v or "?" for v in b.views)
            print(
                f"{(b.patient_id or '?')[:36] + ' / ' + (b.laterality or '?'):40s} {views:10s} {b.risk.probability:9.3f}  {b.risk.category}"
            )
    if result.exams:
        print(f"\n{'exam (patient)':40s} {'p(cancer)':>9s}  category")
        for e in result.exams:
            print(f"{(e.patient_id or '?')[:40]:40s} {e.risk.probability:9.3f}  {e.risk.category}")
    unlike = [f for f in result.images if f.ood is not None and f.ood.flagged]
    if unlike:
        print(
            f"\n{len(unlike)} image(s) unlike the model's training data: risk 'indeterminate' "
            "(probability shown, but the model cannot vouch for it; reasons in the ood block of each JSON):"
        )
        for f in unlike:
            print(f"  {f.name}: OOD score {f.ood.score:.2f} >= {f.ood.threshold:.2f}  {'; '.join(f.ood.reasons)}")
    if result.overlays:
        print("\noverlays:")
        for name in sorted(result.overlays):
            print(f"  {result.overlays[name]}")
    if result.dicom:
        n_files = sum(len(paths) for paths in result.dicom.values())
        print(
            f"DICOM:   {n_files} object(s) for {len(result.dicom)} image(s) (NAME_cad.sr.dcm, _tid1500.sr.dcm, _gsps.dcm, _seg.dcm)"
        )
    if result.tables:
        print("tables:  " + ", ".join(str(p) for p in result.tables))
    if result.reports:
        print("reports: " + ", ".join(str(p) for p in result.reports))
    print(f"results in {out.resolve()}")
