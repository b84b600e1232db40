"""The ``microcalcai`` command line: one module per sub-command.

Exit status: 0 when everything worked, 1 when some inputs failed (the rest are still
processed and written), 2 for usage errors and problems that stop everything (no model,
bad weights, bad configuration).

A sub-command module has ``register(subparsers)`` (adds its parser, sets ``func=run``) and
``run(args) -> int``; heavy imports (torch) happen inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from MicrocalcAI import __version__
from MicrocalcAI.cli import convert, detect, evaluate, export, mine, models, ood, render, report, simulate, train
from MicrocalcAI.cli.common import EXIT_ERROR, setup_logging
from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (detect, report, render, simulate, train, mine, export, convert, evaluate, models, ood)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microcalcai",
        description="Detect breast microcalcification lesions on mammograms and estimate cancer risk "
        "(research software, not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"MicrocalcAI {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.func(args))
    except CancelledError:
        print("cancelled", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MicrocalcAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
