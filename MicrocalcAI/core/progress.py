"""Progress reporting: one callback type, a silent default, and a sub-range helper.

Every long-running function takes ``progress(fraction, message)``: the CLI turns it into a
progress bar, Slicer into a progress dialog. A callback may raise
:class:`MicrocalcAI.core.errors.CancelledError` to stop the job. A stage reports its own
[0, 1]; :func:`sub_progress` maps that onto the slice of the caller's job the stage takes.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback", "no_progress", "sub_progress"]

#: ``progress(fraction, message)``: fraction in [0, 1] of the current job, a short stage text.
ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: report nothing."""


def sub_progress(progress: ProgressCallback, start: float, end: float, prefix: str = "") -> ProgressCallback:
    """A callback that maps a stage's own [0, 1] (clamped) onto [start, end] of the caller's
    job, prefixing the stage's messages with ``prefix``."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(float(fraction), 0.0), 1.0), f"{prefix}{message}")

    return report
