"""Pixel-scale noise of a mammogram, measured in windows inside the breast.

One rule for "how noisy is this image, and at which grey levels", shared by the
out-of-distribution statistics (:mod:`MicrocalcAI.core.ood.statistics`: is the input like the
training data) and noise equalisation (:mod:`MicrocalcAI.core.equalise`: make a speck's value
its contrast-to-noise ratio). Both must call the same image equally noisy, so both measure it
here: a 4-neighbour residual (removes tissue, keeps the pixel-scale noise) in square windows
wholly inside the breast (skin line and air never enter), robustly per window, and the median
or a grey-level curve over windows.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAD_TO_SIGMA",
    "MAX_WINDOWS",
    "WINDOW",
    "breast_windows",
    "laplacian_residual",
    "mean_abs_deviation",
    "window_noise",
]

#: Side of the square windows the noise and sharpness are measured in, stored pixels.
WINDOW = 64
#: At most this many windows (evenly spread over the breast) are measured: enough for a
#: stable median, a few milliseconds of work whatever the image size.
MAX_WINDOWS = 48
#: Normal-distribution consistency constant of the mean absolute deviation: sqrt(pi / 2).
MAD_TO_SIGMA = float(np.sqrt(np.pi / 2))


def breast_windows(mask: np.ndarray, size: int = WINDOW, max_count: int = MAX_WINDOWS) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` x ``size`` windows lying wholly inside the breast, evenly
    spread (a deterministic subset of the grid), so that skin line and air never enter."""
    rows, cols = mask.shape
    if rows < size or cols < size:
        return []
    # The windows tile a fixed grid, so "all pixels are breast" is one reduction over a view of
    # the mask (no summed-area table: that would be an int64 copy of a film, ~100 MB).
    n_r, n_c = rows // size, cols // size
    blocks = np.asarray(mask[: n_r * size, : n_c * size], dtype=bool).reshape(n_r, size, n_c, size)
    inside = blocks.all(axis=(1, 3))
    rr, cc = np.nonzero(inside)
    corners = list(zip((rr * size).tolist(), (cc * size).tolist()))
    if len(corners) > max_count:
        pick = np.linspace(0, len(corners) - 1, max_count).round().astype(int)
        corners = [corners[i] for i in pick]
    return corners


def laplacian_residual(window: np.ndarray) -> np.ndarray:
    """Pixel minus the mean of its 4 neighbours (interior pixels): flat for smooth tissue,
    the noise (times sqrt(1.25) for white noise) plus the finest detail otherwise."""
    w = window.astype(np.float64, copy=False)
    return w[1:-1, 1:-1] - 0.25 * (w[:-2, 1:-1] + w[2:, 1:-1] + w[1:-1, :-2] + w[1:-1, 2:])


def mean_abs_deviation(values: np.ndarray) -> float:
    """Mean absolute deviation from the median. Not the *median* absolute deviation: on
    integer images with little noise most 4-neighbour residuals are exactly 0, and the median
    of their absolute values would call a grainy film noise-free. Windows, not pixels, are
    where robustness comes from (the median over windows)."""
    return float(np.mean(np.abs(values - np.median(values))))


def window_noise(window: np.ndarray) -> float:
    """Noise standard deviation of one window: the residual's mean absolute deviation as a
    standard deviation, divided by sqrt(1.25) (the residual's gain for white noise), so white
    Gaussian noise of standard deviation s measures s."""
    return MAD_TO_SIGMA * mean_abs_deviation(laplacian_residual(window)) / float(np.sqrt(1.25))
