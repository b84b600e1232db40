"""The imaging chain: calcification thickness on the pixel grid, detector noise and quantisation."""

from __future__ import annotations

import math

import numpy as np

from MicrocalcAI.simulation.geometry import Speck

__all__ = [
    "render_speck",
    "speck_mask_from_coverage",
    "add_quantum_noise",
    "quantise",
]


#: Sub-pixel size used to render calcification thickness before area-averaging (mm).
_SUBPIXEL_MM = 0.02


def render_speck(speck: Speck, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Area-averaged thickness (mm) and pixel coverage of one speck on the detector grid.

    Returns ``(thickness, coverage, (row0, col0))`` over the smallest pixel window holding the
    speck. Rendering on a sub-pixel grid of ~0.02 mm keeps 0.1 mm specks' volume correct at any
    spacing: that is what makes the contrast of a speck independent of the render spacing.
    """
    x0, y0, x1, y1 = speck.bounds()
    c0, r0 = int(math.floor(x0 / spacing_mm)), int(math.floor(y0 / spacing_mm))
    c1, r1 = int(math.ceil(x1 / spacing_mm)), int(math.ceil(y1 / spacing_mm))
    k = max(1, int(math.ceil(spacing_mm / _SUBPIXEL_MM)))
    nr, nc = max(r1 - r0, 1), max(c1 - c0, 1)
    sub = spacing_mm / k
    ys = (r0 * k + np.arange(nr * k) + 0.5) * sub
    xs = (c0 * k + np.arange(nc * k) + 0.5) * sub
    t = speck.thickness(xs[None, :], ys[:, None]) * speck.density
    thick = t.reshape(nr, k, nc, k).mean(axis=(1, 3))
    cover = (t > 0).reshape(nr, k, nc, k).mean(axis=(1, 3))
    return thick, cover, (r0, c0)


def speck_mask_from_coverage(cover: np.ndarray, min_coverage: float = 0.25) -> np.ndarray:
    """Pixels counted as calcification: at least a quarter covered, and always the best pixel.

    The second rule keeps 0.1 mm specks that straddle four 0.1 mm pixels in the mask.
    """
    mask = cover >= min_coverage
    if cover.size and not mask.any():
        mask.flat[int(np.argmax(cover))] = True
    return mask


def _pixel_box(
    box_mm: tuple[float, float, float, float], spacing_mm: float, shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    x0 = max(0, math.floor(box_mm[0] / spacing_mm))
    y0 = max(0, math.floor(box_mm[1] / spacing_mm))
    x1 = min(shape[1], math.ceil(box_mm[2] / spacing_mm))
    y1 = min(shape[0], math.ceil(box_mm[3] / spacing_mm))
    return (float(x0), float(y0), float(x1), float(y1))


def add_quantum_noise(rng: np.random.Generator, atten: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian approximation of quantum noise in the log domain: sigma grows as exp(A/2)."""
    ref = float(np.median(atten[mask])) if mask.any() else float(atten.mean())
    scale = np.clip(np.exp((atten - ref) / 2.0), 0.3, 3.0)
    return atten + rng.standard_normal(atten.shape) * sigma * scale


def quantise(atten: np.ndarray, full_scale: float, bits: int, photometric: str) -> np.ndarray:
    """Map attenuation to stored integers; MONOCHROME1 stores max - value (bright = low)."""
    maxval = (1 << bits) - 1
    q = np.round(np.clip(atten / full_scale, 0.0, 1.0) * maxval).astype(np.uint16)
    if photometric == "MONOCHROME1":
        q = (maxval - q).astype(np.uint16)
    return q
