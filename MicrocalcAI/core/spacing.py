"""Pixel spacing: the one validator every stage uses, and what counts as plausible.

A wrong spacing makes every size in mm wrong and resamples the image to the wrong scale, so
each stage that takes a spacing checks it here, with the same parsing and the same errors:
the reader for what a user states, standardisation for what it resamples from, speck
measurement for what it converts to mm, and the CLI's ``--spacing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from MicrocalcAI.core.errors import SpacingError

__all__ = ["SPACING_RANGE_MM", "check_spacing", "is_plausible"]

#: Plausible pixel spacing of a mammogram in mm (detectors 0.025-0.2, film scans up to ~0.5).
SPACING_RANGE_MM = (0.02, 1.0)


def is_plausible(pair: tuple[float, float], range_mm: tuple[float, float] = SPACING_RANGE_MM) -> bool:
    """Whether both values are finite and within ``range_mm`` (inclusive)."""
    lo, hi = range_mm
    return all(math.isfinite(v) and lo <= v <= hi for v in pair)


def check_spacing(
    value: Union[float, Sequence[float]],
    *,
    plausible_mm: Optional[tuple[float, float]] = None,
    what: str = "pixel spacing",
) -> tuple[float, float]:
    """``value`` (one number, or a (row, column) pair in mm) as a checked (row, column) pair.

    Raises :class:`SpacingError` when it is not a number or a pair, not positive and finite,
    or, with ``plausible_mm``, outside that range. ``what`` starts each message (e.g. the
    file name) so the user knows which spacing was wrong.
    """
    try:
        if isinstance(value, (int, float, np.integer, np.floating)):
            pair = (float(value), float(value))
        else:
            seq = [float(v) for v in value]
            if len(seq) != 2:
                raise ValueError(f"expected 2 values, got {len(seq)}")
            pair = (seq[0], seq[1])
    except (TypeError, ValueError) as exc:
        raise SpacingError(f"{what}: {value!r} is not a number or a (row, column) pair in mm: {exc}") from None
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise SpacingError(f"{what}: pixel spacing must be positive and finite, got {value!r} mm")
    if plausible_mm is not None and not is_plausible(pair, plausible_mm):
        lo, hi = plausible_mm
        raise SpacingError(
            f"{what}: pixel spacing {pair[0]:g} x {pair[1]:g} mm is implausible for a mammogram (expected {lo}-{hi} mm)"
        )
    return pair
