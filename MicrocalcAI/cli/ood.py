"""``microcalcai ood-reference``: fit a model's out-of-distribution reference from COCO files."""

from __future__ import annotations

import argparse
from typing import Any, cast

from MicrocalcAI.cli.common import EXIT_OK, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ood = subparsers.add_parser(
        "ood-reference",
        help="fit the 'unlike the training data' reference of a model (train + validation COCO files)",
    )
    ood.add_argument("manifest", help="manifest.json (or its folder) holding the model's entry; updated in place")
    ood.add_argument("--model", default=None, metavar="NAME", help="model name (default: the manifest's default)")
    ood.add_argument(
        "--train", nargs="+", required=True, metavar="COCO", help="COCO file(s) of images the model was trained on"
    )
    ood.add_argument(
        "--val", nargs="+", required=True, metavar="COCO", help="COCO file(s) it was not trained on: the threshold"
    )
    ood.add_argument(
        "--max-train",
        type=int,
        default=None,
        metavar="N",
        help="training images used, evenly spread (default: 400, DEFAULT_REFERENCE_TRAIN_IMAGES of training/ood.py)",
    )
    ood.add_argument("--components", type=int, default=16, metavar="K", help="PCA dimensions (default 16)")
    ood.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    ood.add_argument("--quiet", action="store_true")
    ood.add_argument("--verbose", action="store_true")
    ood.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.training.ood import DEFAULT_REFERENCE_TRAIN_IMAGES, fit_model_reference

    max_train = DEFAULT_REFERENCE_TRAIN_IMAGES if args.max_train is None else args.max_train

    result = run_with_bar(
        "ood-reference",
        args.quiet,
        lambda bar: fit_model_reference(
            args.manifest,
            args.train,
            args.val,
            name=args.model,
            max_train=max_train,
            n_components=args.components,
            device=args.device,
            progress=bar,
        ),
    )
    spec, reference = cast(tuple[Any, Any], result)
    info = reference.info
    print(
        f"{spec.name} {spec.version}: OOD reference {spec.ood['file'] if spec.ood else '?'} "
        f"from {info['n_train']} training images, threshold {reference.threshold:.3f} "
        f"({info['threshold_rule']}, {info['n_val']} validation images)"
    )
    for name, (low, high) in sorted(reference.ranges.items()):
        print(f"  {name}: {low:.4g} .. {high:.4g}")
    return EXIT_OK
