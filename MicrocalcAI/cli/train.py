"""``microcalcai train``: train a detector from a JSON configuration, resumable."""

from __future__ import annotations

import argparse

from MicrocalcAI.cli.common import EXIT_OK, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tr = subparsers.add_parser("train", help="train a detector from a JSON config (COCO inputs), resumable")
    tr.add_argument("config", help="training configuration JSON (see configs/default_train.json)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--verbose", action="store_true")
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.training.loop import train_from_config_file

    result = run_with_bar(
        "train", args.quiet, lambda bar: train_from_config_file(args.config, resume=args.resume, progress=bar)
    )
    print(result)
    return EXIT_OK
