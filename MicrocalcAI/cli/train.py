"""``microcalcai train``: train a detector from a JSON configuration, resumable.

``--nproc K`` trains with K processes (torch DistributedDataParallel) by starting
``torchrun --standalone --nproc-per-node K -m MicrocalcAI train CONFIG``; a multi-node run
calls torchrun itself (docs/scale.md). Under torchrun each process runs this same command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from MicrocalcAI.cli.common import EXIT_ERROR, EXIT_OK, positive_count_arg, run_with_bar

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tr = subparsers.add_parser("train", help="train a detector from a JSON config (COCO inputs), resumable")
    tr.add_argument("config", help="training configuration JSON (see configs/default_train.json)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    tr.add_argument(
        "--nproc",
        type=positive_count_arg("processes"),
        default=1,
        metavar="K",
        help="train with K processes on this machine (DDP via torchrun: gloo on CPU, one GPU each with CUDA)",
    )
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--verbose", action="store_true")
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        return _launch_torchrun(args)
    from MicrocalcAI.training.loop import train_from_config_file

    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 shows progress
    result = run_with_bar(
        "train",
        args.quiet or not main_process,
        lambda bar: train_from_config_file(args.config, resume=args.resume, progress=bar),
    )
    if main_process:
        print(result)
    return EXIT_OK


def _launch_torchrun(args: argparse.Namespace) -> int:
    """K copies of ``microcalcai train CONFIG`` under torchrun, on this machine only."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    command += ["-m", "MicrocalcAI", "train", args.config]
    command += [
        flag for flag, on in (("--resume", args.resume), ("--quiet", args.quiet), ("--verbose", args.verbose)) if on
    ]
    code = subprocess.call(command)
    if code != 0:
        print(f"error: distributed training failed (torchrun exit status {code})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
