"""Input statistics the detector depends on, measured at the input's own pixel scale.

The model learnt calcifications at a certain pixel spacing, noise level, sharpness and grey
depth; an input outside those ranges (a 0.4 mm scan, a 4-bit export, a blurred film) is not
something its scores mean anything for, whatever the network says. These numbers are cheap
(a few windows inside the breast, not the whole image) and are compared with the ranges seen
in training by :mod:`MicrocalcAI.core.ood.reference`.

All intensities are in the units of the normalised stored image (``stored01`` from
:func:`MicrocalcAI.core.standardise.normalised_stored`, [0, 1] from the breast's own
histogram), so the noise level does not depend on the scanner's raw grey scale.
"""

from __future__ import annotations

import numpy as np

from MicrocalcAI.core.noise import WINDOW, breast_windows, laplacian_residual, mean_abs_deviation, window_noise

__all__ = ["STATISTICS", "WINDOW", "bits_used", "breast_windows", "input_statistics", "noise_and_sharpness"]

#: The statistics :func:`input_statistics` returns, in order, with what they mean.
STATISTICS = {
    "spacing_mm": "pixel spacing used (mean of rows and columns), mm",
    "noise": "noise level: standard deviation of the pixel-scale residual, normalised grey units",
    "noise_grey_slope": "how the noise changes from the darker to the brighter half of the breast (ratio)",
    "sharpness": "finest-detail energy against detail at twice the pixel size (2 = white noise, 0.25 = smooth)",
    "bits_used": "log2 of the number of distinct stored values inside the breast",
    "breast_area_cm2": "breast area, cm^2",
}


def noise_and_sharpness(image: np.ndarray, corners: list[tuple[int, int]], size: int = WINDOW) -> dict[str, float]:
    """Noise level, its dependence on grey level, and sharpness, from windows of ``image``.

    Noise: per window, the standard deviation (from the mean absolute deviation) of the 4-neighbour residual
    divided by sqrt(1.25) (the residual's gain for white noise), so white Gaussian noise of
    standard deviation s measures s; the median over windows. Noise against grey level: the
    median noise of the brighter half of the windows over that of the darker half (film grain
    and quantum noise both depend on density). Sharpness: residual MAD at the pixel scale over
    the residual MAD of the 2 x 2-binned window; white noise gives 2, a smooth ramp 0.25, and
    blur moves it towards 0.25 because it removes the finest scale first.
    """
    if not corners:
        return {"noise": float("nan"), "noise_grey_slope": float("nan"), "sharpness": float("nan")}
    noise, grey, fine, coarse = [], [], [], []
    half = size // 2
    for r, c in corners:
        w = np.asarray(image[r : r + size, c : c + size], dtype=np.float64)
        noise.append(window_noise(w))
        grey.append(float(np.median(w)))
        binned = w[: 2 * half, : 2 * half].reshape(half, 2, half, 2).mean(axis=(1, 3))
        fine.append(mean_abs_deviation(laplacian_residual(w)))
        coarse.append(mean_abs_deviation(laplacian_residual(binned)))
    noise_arr = np.asarray(noise)
    order = np.argsort(grey)
    dark, bright = noise_arr[order[: len(order) // 2]], noise_arr[order[len(order) // 2 :]]
    slope = float(np.median(bright) / max(np.median(dark), 1e-9)) if len(dark) and len(bright) else 1.0
    sharpness = float(np.median(fine) / max(np.median(coarse), 1e-12))
    return {"noise": float(np.median(noise_arr)), "noise_grey_slope": slope, "sharpness": sharpness}


def bits_used(pixels: np.ndarray, mask: np.ndarray) -> float:
    """log2 of the number of distinct stored values inside the breast.

    A 16-bit container holding a 6-bit export shows 6 here, whatever BitsStored says. Integer
    images are counted with a histogram (linear time); float images with ``np.unique``.
    """
    values = np.asarray(pixels)[mask]
    if values.size == 0:
        return 0.0
    if np.issubdtype(values.dtype, np.integer):
        shifted = values.astype(np.int64) - int(values.min())
        distinct = int(np.count_nonzero(np.bincount(shifted.ravel())))
    else:
        distinct = int(np.unique(values).size)
    return float(np.log2(max(distinct, 1)))


def input_statistics(
    pixels: np.ndarray, stored01: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float]
) -> dict[str, float]:
    """The :data:`STATISTICS` of one image: ``pixels`` as stored, ``stored01`` the normalised
    stored image and ``mask`` its breast mask (both stored frame), ``spacing_mm`` (row, col)."""
    mask = np.asarray(mask, dtype=bool)
    stats = {
        "spacing_mm": float(0.5 * (spacing_mm[0] + spacing_mm[1])),
        **noise_and_sharpness(stored01, breast_windows(mask)),
        "bits_used": bits_used(pixels, mask),
        "breast_area_cm2": float(mask.sum()) * float(spacing_mm[0]) * float(spacing_mm[1]) / 100.0,
    }
    return stats
