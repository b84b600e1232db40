"""``microcalcai evaluate``: measure a model on COCO-annotated images."""

from __future__ import annotations

import argparse
import sys

from MicrocalcAI.cli.common import EXIT_OK, EXIT_SOME_FAILED, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="measure a model on COCO-annotated images: lesion/image/breast metrics, ROC, FROC, calibration"
    )
    ev.add_argument(
        "coco", metavar="COCO", help="COCO annotations (boxes in stored pixels, categories benign/malignant)"
    )
    ev.add_argument(
        "--out", required=True, metavar="DIR", help="folder for metrics.json, roc.png, froc.png, calibration.png"
    )
    ev.add_argument(
        "--model", default=None, help="model name, manifest.json or weights file (default: the bundled default)"
    )
    ev.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    ev.add_argument(
        "--findings",
        default=None,
        metavar="DIR",
        help="reuse per-image JSON written by `microcalcai detect` instead of running the model",
    )
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--verbose", action="store_true")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.evaluation.evaluate import evaluate_dataset

    report = run_with_bar(
        "evaluate",
        args.quiet,
        lambda bar: evaluate_dataset(
            args.coco,
            args.out,
            model=args.model,
            device=args.device,
            progress=bar,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            findings_dir=args.findings,
        ),
    )
    print(report.summary())  # type: ignore[attr-defined]
    if report.failed:  # type: ignore[attr-defined]
        print(f"{len(report.failed)} image(s) could not be analysed and count as missed", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_SOME_FAILED
    return EXIT_OK
