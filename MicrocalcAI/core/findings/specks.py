"""Calcification specks: the individual bright spots inside a detected lesion box.

The detector says *where* a suspicious cluster is; a reader also wants to see *which* pixels
are calcium (the "highlighted lesion region") and how many specks of what size there are,
since count, size and spread of specks are what radiologists describe (BI-RADS morphology).

Method, all in physical units so that it behaves the same at any pixel spacing:

1. take the integer pixel window covering the box, plus a margin so that the filters see real
   neighbours rather than padding;
2. denoise lightly (Gaussian, ``denoise_sigma_mm``) so single-pixel noise does not dominate;
3. white top-hat with an elliptical structuring element ``tophat_diameter_mm`` wide (an
   ellipse in pixels when the spacing is anisotropic): it keeps bright structures smaller
   than the element (specks) and removes the smoother background, including gradients and
   broad dense tissue;
4. threshold at ``median + k * MAD`` of the top-hat inside the breast part of the window
   (robust to the few speck pixels themselves), and at least ``min_contrast``;
5. outline each detected speck at ``size_level`` (half) of its own peak contrast, so sizes
   do not depend on how bright a speck is;
6. keep connected components whose equivalent diameter lies within
   [``min_diameter_mm``, ``max_diameter_mm``] and that have at least ``min_area_px`` pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.records import Speck
from MicrocalcAI.core.spacing import check_spacing

__all__ = [
    "SpeckConfig",
    "box_window",
    "refine_to_peak_fraction",
    "robust_threshold",
    "segment_specks",
    "speck_tophat",
]


log = logging.getLogger(__name__)

#: Scale factor turning a median absolute deviation into a Gaussian standard deviation.
_MAD_TO_SIGMA = 1.4826


@dataclass
class SpeckConfig:
    """Parameters of speck segmentation, in millimetres where they are lengths.

    Defaults suit full-field digital mammograms at 0.05-0.1 mm and images normalised to
    [0, 1] with bright = dense (the engine's ``stored01``).
    """

    #: Width of the top-hat structuring element. Specks narrower than this survive the
    #: top-hat, wider bright structures (vessels seen broadside, dense tissue) do not; it
    #: must exceed ``max_diameter_mm`` or the largest kept specks lose their centres.
    tophat_diameter_mm: float = 1.2
    #: Gaussian smoothing before the top-hat; 0 disables it.
    denoise_sigma_mm: float = 0.04
    #: Threshold = median + k * (1.4826 * MAD) of the top-hat in the window.
    k_mad: float = 5.0
    #: Absolute floor on the threshold, in stored01 units: a speck must be at least this much
    #: brighter than its surroundings even where the window is almost noise-free.
    min_contrast: float = 0.03
    #: Equivalent-circle diameter limits of a kept speck. Microcalcifications are typically
    #: 0.1-1 mm; below ~0.15 mm components are mostly noise blobs on 0.05 mm detectors (on
    #: synthetic white noise, 0.1 mm let through ~1 false speck per 25 cm^2, 0.15 mm none),
    #: larger than 1 mm they are not microcalcifications.
    min_diameter_mm: float = 0.15
    max_diameter_mm: float = 1.0
    #: A component of fewer pixels cannot be told from noise, whatever the spacing.
    min_area_px: int = 2
    #: Each speck's outline is drawn where its contrast falls to this fraction of its own
    #: peak (0.5 = full width at half maximum), so measured sizes do not grow with contrast
    #: or blur; 0 keeps every pixel above the detection threshold.
    size_level: float = 0.5

    def validate(self) -> None:
        """Reject settings that would silently produce nonsense."""
        if not (self.tophat_diameter_mm > 0 and math.isfinite(self.tophat_diameter_mm)):
            raise InputError(f"tophat_diameter_mm must be positive, got {self.tophat_diameter_mm}")
        if not (self.denoise_sigma_mm >= 0 and math.isfinite(self.denoise_sigma_mm)):
            raise InputError(f"denoise_sigma_mm must be >= 0, got {self.denoise_sigma_mm}")
        if not (self.k_mad >= 0 and self.min_contrast >= 0):
            raise InputError("k_mad and min_contrast must be >= 0")
        if not (0 <= self.min_diameter_mm <= self.max_diameter_mm):
            raise InputError(
                f"need 0 <= min_diameter_mm <= max_diameter_mm, got {self.min_diameter_mm}, {self.max_diameter_mm}"
            )
        if not 0 <= self.size_level < 1:
            raise InputError(f"size_level must be in [0, 1), got {self.size_level}")
        if self.min_area_px < 1:
            raise InputError(f"min_area_px must be >= 1, got {self.min_area_px}")


def box_window(box_px: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel window (row0, col0, row1, col1) covering a stored ``[x0, y0, x1, y1]`` box.

    Pixels partly covered by the box are included (floor of the start, ceil of the end), and
    the window is clipped to the image, so it may be empty for a box outside the image.
    """
    if len(box_px) != 4:
        raise InputError(f"a box has 4 numbers [x0, y0, x1, y1], got {len(box_px)}")
    x0, y0, x1, y1 = (float(v) for v in box_px)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError(f"box {list(box_px)} has non-finite coordinates")
    if x1 < x0 or y1 < y0:
        raise InputError(f"box {list(box_px)} has x1 < x0 or y1 < y0")
    rows, cols = shape
    r0 = min(max(math.floor(y0), 0), rows)
    c0 = min(max(math.floor(x0), 0), cols)
    r1 = min(max(math.ceil(y1), r0), rows)
    c1 = min(max(math.ceil(x1), c0), cols)
    return r0, c0, r1, c1


def _tophat_footprint(diameter_mm: float, spacing: tuple[float, float]) -> tuple[object, tuple[int, int]]:
    """Elliptical element ``diameter_mm`` wide in physical space (fast decomposition, half-axes)."""
    half_rows = max(1, int(round(diameter_mm / 2.0 / spacing[0])))
    half_cols = max(1, int(round(diameter_mm / 2.0 / spacing[1])))
    # skimage's ellipse(width, height) takes the column and row half-axes; the "crosses"
    # decomposition is exact and ~5x faster than the full element on 0.05 mm images.
    return morphology.ellipse(half_cols, half_rows, decomposition="crosses"), (half_rows, half_cols)


def speck_tophat(image: np.ndarray, spacing_mm: tuple[float, float], config: SpeckConfig) -> np.ndarray:
    """Background-free speck contrast of an image patch (denoised white top-hat).

    The patch is first extended by edge replication, twice the element's size: the opening
    would otherwise pad its own intermediate (eroded) image and turn a gradient running into
    the border into a false bright line along it.
    """
    footprint, (half_r, half_c) = _tophat_footprint(config.tophat_diameter_mm, spacing_mm)
    pad_r, pad_c = 2 * half_r + 1, 2 * half_c + 1
    work = np.pad(np.asarray(image, dtype=np.float32), ((pad_r, pad_r), (pad_c, pad_c)), mode="edge")
    if config.denoise_sigma_mm > 0:
        sigma = (config.denoise_sigma_mm / spacing_mm[0], config.denoise_sigma_mm / spacing_mm[1])
        if max(sigma) >= 0.25:  # below a quarter pixel the blur does nothing useful
            work = ndi.gaussian_filter(work, sigma=sigma, mode="nearest")
    tophat = morphology.white_tophat(work, footprint, mode="nearest")
    return tophat[pad_r : pad_r + image.shape[0], pad_c : pad_c + image.shape[1]]


def robust_threshold(values: np.ndarray, config: SpeckConfig) -> float:
    """``median + k * sigma`` with sigma from the MAD, floored at ``min_contrast``.

    Median and MAD ignore the few bright speck pixels, so the threshold follows the local
    noise and texture of each lesion instead of a fixed global value.
    """
    if values.size == 0:
        return math.inf
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return max(med + config.k_mad * _MAD_TO_SIGMA * mad, config.min_contrast)


def refine_to_peak_fraction(contrast: np.ndarray, detected: np.ndarray, level: float) -> np.ndarray:
    """Shrink each detected component to the pixels above ``level`` times its own peak.

    The detection threshold follows the noise, so a bright speck blurred by the detector's
    point spread would look larger than a faint one of the same size; cutting every speck at
    the same fraction of its own peak (FWHM for 0.5) makes the size a property of the speck.
    """
    if level <= 0 or not detected.any():
        return detected
    labels, n = ndi.label(detected, structure=np.ones((3, 3), dtype=bool))
    peaks = np.zeros(n + 1, dtype=np.float64)
    peaks[1:] = ndi.maximum(contrast, labels, index=np.arange(1, n + 1))
    return detected & (contrast >= level * peaks[labels])


def _components_to_specks(
    mask: np.ndarray,
    origin: tuple[int, int],
    spacing_mm: tuple[float, float],
    config: SpeckConfig,
) -> tuple[np.ndarray, list[Speck]]:
    """Filter connected components by size and describe the kept ones as :class:`Speck`."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros(mask.shape, dtype=bool), []
    flat = labels.ravel()
    rr, cc = np.indices(mask.shape)
    area = np.bincount(flat, minlength=n + 1)
    sum_r = np.bincount(flat, weights=rr.ravel(), minlength=n + 1)
    sum_c = np.bincount(flat, weights=cc.ravel(), minlength=n + 1)
    pixel_mm2 = spacing_mm[0] * spacing_mm[1]
    keep = np.zeros(n + 1, dtype=bool)
    specks: list[Speck] = []
    for lab in range(1, n + 1):
        area_px = int(area[lab])
        area_mm2 = area_px * pixel_mm2
        diameter = 2.0 * math.sqrt(area_mm2 / math.pi)
        if area_px < config.min_area_px or not (config.min_diameter_mm <= diameter <= config.max_diameter_mm):
            continue
        keep[lab] = True
        # Pixel (r, c) has its centre at stored (x, y) = (c + 0.5, r + 0.5).
        x = origin[1] + sum_c[lab] / area_px + 0.5
        y = origin[0] + sum_r[lab] / area_px + 0.5
        specks.append(
            Speck(
                centroid_px=(float(x), float(y)), area_px=area_px, area_mm2=float(area_mm2), diameter_mm=float(diameter)
            )
        )
    return keep[labels], specks


def segment_specks(
    stored01: np.ndarray,
    box_px: Sequence[float],
    spacing_mm: tuple[float, float],
    *,
    breast_mask: Optional[np.ndarray] = None,
    config: Optional[SpeckConfig] = None,
) -> tuple[np.ndarray, tuple[int, int], list[Speck]]:
    """Segment the calcification specks inside one lesion box.

    Returns ``(mask, origin, specks)``: ``mask`` is bool over the integer pixel window that
    covers the box (clipped to the image), ``origin`` its top-left (row, col) in stored
    pixels, and one :class:`Speck` per kept connected component (8-connectivity), in the
    order of their labels (top to bottom). Pixels outside ``breast_mask`` are never specks.
    """
    config = config or SpeckConfig()
    config.validate()
    image = np.asarray(stored01)
    if image.ndim != 2:
        raise InputError(f"stored01 must be a 2-D image, got shape {image.shape}")
    if breast_mask is not None and np.shape(breast_mask) != image.shape:
        raise InputError(f"breast mask shape {np.shape(breast_mask)} differs from image shape {image.shape}")
    spacing = check_spacing(spacing_mm)
    r0, c0, r1, c1 = box_window(box_px, (int(image.shape[0]), int(image.shape[1])))
    origin = (r0, c0)
    empty = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    if empty.size == 0:
        return empty, origin, []

    # Filter a margin larger than the element around the window so the window's own border
    # pixels see their true neighbours.
    _, (half_r, half_c) = _tophat_footprint(config.tophat_diameter_mm, spacing)
    blur_r = int(math.ceil(4 * config.denoise_sigma_mm / spacing[0]))
    blur_c = int(math.ceil(4 * config.denoise_sigma_mm / spacing[1]))
    mr, mc = 2 * half_r + blur_r + 1, 2 * half_c + blur_c + 1
    pr0, pc0 = max(r0 - mr, 0), max(c0 - mc, 0)
    pr1, pc1 = min(r1 + mr, image.shape[0]), min(c1 + mc, image.shape[1])
    tophat = speck_tophat(image[pr0:pr1, pc0:pc1], spacing, config)
    tophat = tophat[r0 - pr0 : r1 - pr0, c0 - pc0 : c1 - pc0]

    inside = np.ones(tophat.shape, dtype=bool)
    if breast_mask is not None:
        inside = np.asarray(breast_mask[r0:r1, c0:c1], dtype=bool)
    threshold = robust_threshold(tophat[inside], config)
    if not math.isfinite(threshold):
        return empty, origin, []
    detected = refine_to_peak_fraction(tophat, (tophat >= threshold) & inside, config.size_level)
    mask, specks = _components_to_specks(detected, origin, spacing, config)
    log.debug("box %s: threshold %.4f, %d specks", list(box_px), threshold, len(specks))
    return mask, origin, specks
