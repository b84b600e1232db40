"""``microcalcai mine-negatives``: record a model's false marks as hard negatives for retraining."""

from __future__ import annotations

import argparse
import sys
from typing import cast

from MicrocalcAI.cli.common import EXIT_OK, EXIT_SOME_FAILED, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mine = subparsers.add_parser(
        "mine-negatives",
        help="run a model on a COCO dataset and write a copy whose images list its false marks as hard negatives",
    )
    mine.add_argument("coco", metavar="COCO", help="COCO file (lesion boxes in stored pixels; normals may have none)")
    mine.add_argument("--out", required=True, metavar="JSON", help="the new COCO file (the input is never modified)")
    mine.add_argument(
        "--model", default=None, help="model name, manifest.json or weights file (default: the bundled default)"
    )
    mine.add_argument(
        "--min-score",
        type=float,
        default=0.2,
        help="lowest mark score mined (default 0.2; below the operating threshold on purpose)",
    )
    mine.add_argument("--max-per-image", type=int, default=20, help="most marks mined per image (default 20)")
    mine.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    mine.add_argument("--quiet", action="store_true")
    mine.add_argument("--verbose", action="store_true")
    mine.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.detect.network import select_device
    from MicrocalcAI.core.detect.weights import load_detector
    from MicrocalcAI.training.mining import MiningConfig, MiningResult, mine_false_marks

    config = MiningConfig(min_score=args.min_score, max_per_image=args.max_per_image)
    spec = resolve_model(args.model)
    device = select_device(args.device)
    model = load_detector(spec, device)
    result = cast(
        MiningResult,
        run_with_bar(
            "mine-negatives",
            args.quiet,
            lambda bar: mine_false_marks(args.coco, args.out, spec, model, device, config, progress=bar),
        ),
    )
    print(
        f"{result.coco_path}: {result.n_mined} false marks of {spec.name} {spec.version} "
        f"(score >= {config.min_score:g}) recorded as hard negatives on {result.n_analysed} images"
    )
    for line in result.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return EXIT_SOME_FAILED if result.skipped else EXIT_OK
