"""What every sub-command shares: exit codes, logging that respects the progress bar, the bar
itself (the engine's ``progress(fraction, message)`` callback as tqdm), argument types."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from MicrocalcAI.core.progress import ProgressCallback

__all__ = [
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_ERROR",
    "ProgressBar",
    "fraction_arg",
    "positive_count_arg",
    "run_with_bar",
    "setup_logging",
    "spacing_arg",
]

log = logging.getLogger("MicrocalcAI")

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("MicrocalcAI")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class ProgressBar:
    """Adapts the engine's ``progress(fraction, message)`` callback to a tqdm bar."""

    def __init__(self, description: str, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=1000,
            desc=description,
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
        )
        self._last = 0

    def __call__(self, fraction: float, message: str) -> None:
        position = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if position > self._last:
            self._bar.update(position - self._last)
            self._last = position
        self._bar.set_postfix_str(message[:70], refresh=False)

    def close(self) -> None:
        self._bar.close()


def spacing_arg(text: str) -> float:
    """``--spacing MM``: one number, checked by the engine's spacing validator."""
    from MicrocalcAI.core.errors import SpacingError
    from MicrocalcAI.core.spacing import SPACING_RANGE_MM, check_spacing

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing must be a number in mm, got {text!r}") from None
    try:
        return check_spacing(value, plausible_mm=SPACING_RANGE_MM, what="--spacing")[0]
    except SpacingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def positive_count_arg(what: str) -> Callable[[str], int]:
    """An argparse ``type`` for a count of ``what`` (``--workers``, ``--nproc``): a whole number
    >= 1, named in the error so the user sees which option and unit was wrong."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what} (at least 1), got {text!r}")
        return value

    return parse


def run_with_bar(description: str, quiet: bool, job: Callable[[ProgressCallback], object]) -> object:
    bar = ProgressBar(description, enabled=not quiet and (sys.stderr.isatty() or _force_bar()))
    try:
        return job(bar)
    finally:
        bar.close()


def _force_bar() -> bool:
    return os.environ.get("MICROCALCAI_PROGRESS") == "1"
