"""Standardise a stored mammogram into the detector's canonical frame.

Scanners, film digitisers and DICOM encodings disagree on almost everything a detector is
sensitive to: which grey value means "dense" (MONOCHROME1/2, raw For-Processing data), the
grey-value range (8 to 16 bits, vendor LUTs), the pixel size (40 to 200 um), which side the
breast hangs from, and how much empty background surrounds it. A detector trained on one
scanner only generalises if every image is first brought into one frame. This module does
that, in this order:

1. :func:`monochrome2_intensity` - modality LUT, MONOCHROME1 inversion, -log of raw
   For-Processing data, so that bright always means dense.
2. :func:`breast_mask` - the breast, without background, burned-in labels or film edges.
3. :func:`normalise` - a linear grey-value mapping taken from the breast's own histogram.
4. :func:`standardise` - flip so the chest wall is at column 0, resample to an isotropic
   canonical spacing (anti-aliased when downsampling, Lanczos-windowed sinc when upsampling
   a coarse input, so its specks are not blurred further), crop to the breast, and record the exact
   :class:`~MicrocalcAI.core.records.CanonicalTransform` so that every canonical coordinate maps
   back to stored pixels.

Everything here is numpy / scipy / scikit-image (SimpleITK only for the ``nearest`` and
``bspline`` upsampling options); no torch, no GUI.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from MicrocalcAI.core.equalise import NoiseEqualisation, equalise_noise, noise_curve
from MicrocalcAI.core.errors import InputError, NotAMammogramError, SpacingError
from MicrocalcAI.core.records import CanonicalImage, CanonicalTransform, Mammogram
from MicrocalcAI.core.resample import SEPARABLE_INTERPOLATORS, resample_separable
from MicrocalcAI.core.spacing import check_spacing, spacing_when_unknown

#: Spacings standardisation will resample from (mm): wider than the reader's plausible range,
#: because a caller may pass any record; outside it the arithmetic itself is meaningless.
RESAMPLE_SPACING_RANGE_MM = (0.001, 5.0)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_UPSAMPLING",
    "MaskConfig",
    "NormaliseConfig",
    "monochrome2_intensity",
    "breast_grey_range",
    "breast_mask",
    "chest_wall_on_left",
    "coarse_block_mean",
    "normalise",
    "normalised_stored",
    "plan_transform",
    "rescale_square",
    "standardise",
    "UPSAMPLING_INTERPOLATORS",
]


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of :func:`breast_mask`, in millimetres so they hold at any pixel size."""

    #: Working resolution. 0.5 mm keeps the skin line within one stored millimetre while
    #: making the whole mask cost a few milliseconds.
    coarse_spacing_mm: float = 0.5
    #: Foreground threshold as a fraction of the way from the background level to Otsu's
    #: tissue/background split. Otsu alone cuts off the faint, thin periphery of a fatty
    #: breast; a small fraction of it keeps the skin line while staying above film noise.
    threshold_fraction: float = 0.04
    #: ... but at least this many background noise standard deviations above background.
    noise_factor: float = 6.0
    #: Opening radius: removes thin bridges (label to breast, noise) and strokes of text.
    opening_radius_mm: float = 1.5
    #: Film edges / scanner frames (with their glare) are bands along an image edge at most
    #: this deep; the breast at its chest wall is much deeper.
    edge_band_max_depth_mm: float = 25.0
    #: ... and at least this long (labels and markers touching an edge are shorter).
    edge_band_min_length_mm: float = 20.0
    #: Bands at most this deep are sharp film edges, cut also where they cross the breast.
    edge_band_thin_mm: float = 4.0
    #: Gap allowed between the image edge and the start of a film-edge band.
    edge_band_max_gap_mm: float = 3.0
    #: Thin bright film-edge lines are looked for this far in from an edge the breast touches...
    edge_line_max_mm: float = 1.5
    #: ... and cut where brighter than the tissue behind them by this fraction of the breast's
    #: 5-95 percentile grey-value spread.
    edge_line_contrast: float = 0.1
    #: Below this the largest component is noise, not a breast.
    min_breast_area_mm2: float = 400.0
    #: Pixels exactly at the image's lowest value that cover at least this fraction of the
    #: image are padding (or clipped air): the background level and its noise are taken from
    #: the other pixels, so that film air above zero (about 7/255 on 8-bit scans) is found as
    #: background instead of being swallowed into the breast.
    padding_min_fraction: float = 0.01


@dataclass(frozen=True)
class NormaliseConfig:
    """The grey-value mapping of :func:`normalise`.

    Inside the breast, intensity percentile ``low_percentile`` maps to 0 and
    ``high_percentile`` maps to ``high_value``; the mapping is linear and clipped to [0, 1].
    ``high_value`` < 1 leaves headroom above the densest tissue, so that calcifications (the
    brightest, rarest pixels, well above the 99.5th percentile) keep their contrast instead of
    saturating.
    """

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    high_value: float = 0.9
    #: Percentiles are taken on every ``sample_stride``-th row and column: identical to the
    #: full estimate within a grey level and four times cheaper at stride 2.
    sample_stride: int = 2


# ----------------------------------------------------------------------------------------
# 1. Intensity: bright = dense
# ----------------------------------------------------------------------------------------


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 2:
        raise NotAMammogramError(f"expected a 2-D grey-scale image, got an array of shape {pixels.shape}")
    if pixels.shape[0] < 16 or pixels.shape[1] < 16:
        raise NotAMammogramError(f"image of {pixels.shape[0]}x{pixels.shape[1]} pixels is too small to be a mammogram")
    if not (
        np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating) or pixels.dtype == bool
    ):
        raise NotAMammogramError(f"unsupported pixel type {pixels.dtype}")


def _stored_value_range(m: Mammogram) -> tuple[float, float]:
    """The range the stored values *could* take, which is what MONOCHROME1 inverts against.

    Inverting against the actual min/max would make the result depend on image content (a
    single bright label would shift every grey value); the stored bit depth does not.
    """
    px = m.pixels
    if np.issubdtype(px.dtype, np.integer):
        bits = m.bits_stored or px.dtype.itemsize * 8
        if np.issubdtype(px.dtype, np.signedinteger):
            return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        return 0.0, float(2**bits - 1)
    if m.bits_stored:
        return 0.0, float(2**m.bits_stored - 1)
    finite = px[np.isfinite(px)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _apply_modality_lut(m: Mammogram, values: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (float32), by table or by rescale slope/intercept."""
    if m.modality_lut is not None:
        first, table = m.modality_lut
        table = np.asarray(table, dtype=np.float32).ravel()
        if table.size == 0:
            raise InputError("the modality LUT table is empty")
        # DICOM: values below the first mapped value take the first entry, above the last the last.
        index = np.clip(np.asarray(values, dtype=np.int64) - int(first), 0, table.size - 1)
        return table[index]
    out = np.asarray(values, dtype=np.float32)
    if m.rescale_slope != 1.0 or m.rescale_intercept != 0.0:
        out = out * np.float32(m.rescale_slope) + np.float32(m.rescale_intercept)
    return out


def monochrome2_intensity(m: Mammogram) -> np.ndarray:
    """The stored frame as float32 where bright means dense, before any normalisation.

    Applies the modality LUT, then either

    * For-Processing data (raw detector signal, linear in exposure, so high = little
      attenuation whatever its photometric tag): ``-log(value)``, which is proportional to
      attenuation and so behaves like For-Presentation data; or
    * MONOCHROME1 (high = white = little attenuation): inverted against the range the stored
      bits allow, so the result does not depend on the image's own extremes.

    MONOCHROME2 For-Presentation data passes through unchanged (apart from the LUT).
    """
    _check_pixels(m.pixels)
    photometric = (m.photometric or "MONOCHROME2").upper().strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotAMammogramError(f"photometric interpretation {m.photometric!r} is not a grey-scale mammogram")
    values = _apply_modality_lut(m, m.pixels)
    intent = (m.presentation_intent or "").upper().strip()
    if intent == "FOR PROCESSING":
        positive = values[values > 0]
        if positive.size == 0:
            raise InputError("For-Processing image has no positive values; cannot take its logarithm")
        floor = np.float32(positive.min())
        out = -np.log(np.maximum(values, floor))
        log.debug("For-Processing data: -log transform (floor %g)", float(floor))
        return out.astype(np.float32, copy=False)
    if photometric == "MONOCHROME1":
        lo, hi = _stored_value_range(m)
        if m.modality_lut is not None:
            table = np.asarray(m.modality_lut[1], dtype=np.float32)
            lo, hi = float(table.min()), float(table.max())
        else:
            ends = _apply_modality_lut(m, np.array([lo, hi], dtype=np.float64))
            lo, hi = float(ends.min()), float(ends.max())
        return (np.float32(lo + hi) - values).astype(np.float32, copy=False)
    # Never hand back the caller's array: inputs are never modified, not even later.
    return values.astype(np.float32, copy=True) if values is m.pixels else values.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------
# 2. Breast mask
# ----------------------------------------------------------------------------------------


def coarse_block_mean(image: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """Average over non-overlapping blocks; the ragged last row/column block is kept.

    Coarse pixel (i, j) covers stored rows [i*fr, (i+1)*fr) and columns [j*fc, (j+1)*fc),
    which makes the way back (:func:`_upsample_blocks`) exact.
    """
    fr, fc = factors
    rows, cols = image.shape
    out_r, out_c = -(-rows // fr), -(-cols // fc)
    pad_r, pad_c = out_r * fr - rows, out_c * fc - cols
    if pad_r or pad_c:
        image = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge")
    return image.reshape(out_r, fr, out_c, fc).mean(axis=(1, 3), dtype=np.float32)


def _upsample_blocks(coarse: np.ndarray, factors: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`coarse_block_mean`'s tiling for a label image: each block gets its value."""
    out = np.repeat(np.repeat(coarse, factors[0], axis=0), factors[1], axis=1)
    return np.ascontiguousarray(out[: shape[0], : shape[1]])


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(round(radius_px)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + r  # "+ r" rounds the digital disc outward


def _air_above_padding(values: np.ndarray, min_fraction: float) -> bool:
    """Do the exact-lowest-value pixels of ``values`` pad a frame around film air?

    Scanned film is often delivered in a frame padded with exact zeros (or another constant):
    a large population at exactly the minimum. Left in, it makes the "background" level zero
    with zero noise, and the film's own air, a few grey levels above, lands above the
    threshold. It is padding when what remains has an air peak: a dense population at its
    dark end (the darkest tenth of the way to Otsu's split holds at least 5% of the pixels and
    four times more than the next tenth). Without such a peak (digital images whose air is
    clipped to exactly the minimum: what remains starts at the breast's faint periphery) the
    minimum is the background itself.
    """
    padding = values == values.min()
    rest = values[~padding]
    if padding.mean() < min_fraction or rest.size < 16 or float(rest.max()) <= float(rest.min()):
        return False
    floor = float(np.percentile(rest, 2.0))
    band = 0.1 * (float(threshold_otsu(rest)) - floor)
    first = float(np.mean(rest <= floor + band))
    second = float(np.mean((rest > floor + band) & (rest <= floor + 2 * band)))
    return first >= 0.05 and first >= 4.0 * second


def _without_padding(values: np.ndarray, min_fraction: float) -> np.ndarray:
    """``values`` without its exact-lowest-value pixels when they are padding around film air."""
    return values[values != values.min()] if _air_above_padding(values, min_fraction) else values


def _unpadded_frame(intensity: np.ndarray, min_fraction: float) -> Optional[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of the film inside exact-value padding along the image border.

    None when there is no such padding. Inside the padding lies the film's real edge: the
    film-edge, label and chest-wall rules of :func:`breast_mask` are about that edge, so they
    run on the unpadded frame.
    """
    lowest = intensity.min()
    inside = intensity != lowest
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    if box == (0, intensity.shape[0], 0, intensity.shape[1]) or min(box[1] - box[0], box[3] - box[2]) < 16:
        return None
    sample = intensity[:: max(1, intensity.shape[0] // 512), :: max(1, intensity.shape[1] // 512)]
    return box if _air_above_padding(np.asarray(sample, dtype=np.float64).ravel(), min_fraction) else None


def _foreground_threshold(
    coarse: np.ndarray, fraction: float, noise_factor: float, padding_min_fraction: float = 0.01
) -> float:
    """Threshold between background and breast, from the image's own histogram.

    The background level is the 2nd percentile (background is the darkest large region of
    every mammogram) of the pixels that are not padding (:func:`_without_padding`), and Otsu's
    split separates background from tissue. The breast's periphery fades almost to background
    over millimetres, so the threshold sits only a small ``fraction`` of the way up to Otsu,
    but at least ``noise_factor`` background standard deviations (robust, from the median
    absolute deviation) above the background level so that detector noise and film grain stay
    out.
    """
    finite = coarse[np.isfinite(coarse)]
    if finite.size == 0 or float(finite.max()) <= float(finite.min()):
        raise InputError("the image is uniform: no breast can be found")
    finite = _without_padding(finite, padding_min_fraction)
    background = float(np.percentile(finite, 2.0))
    if float(finite.max()) <= background:
        raise InputError("the image is uniform: no breast can be found")
    otsu = float(threshold_otsu(finite))
    step = fraction * (otsu - background)
    dark = finite[finite <= background + step]
    noise = 1.4826 * float(np.median(np.abs(dark - np.median(dark)))) if dark.size else 0.0
    return background + max(step, noise_factor * noise)


def _edge_band_depths(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """Per row: how deep the mask reaches in from column 0 (0 when it starts later than max_gap).

    A run counts from the first True pixel within ``max_gap`` of the edge to the first False
    after it: the film edge band, possibly with the breast attached behind it.
    """
    rows, cols = mask.shape
    depth = np.zeros(rows, dtype=np.int64)
    head = mask[:, : max_gap + 1]
    has_start = head.any(axis=1)
    start = np.argmax(head, axis=1)
    # First False at or after the start: argmax over (~mask) restricted to columns >= start.
    col_index = np.arange(cols)[None, :]
    after = (~mask) & (col_index >= start[:, None])
    has_end = after.any(axis=1)
    end = np.where(has_end, np.argmax(after, axis=1), cols)
    depth[has_start] = end[has_start]
    return depth


def _flat_runs(in_band: np.ndarray, depth: np.ndarray, typical: float) -> np.ndarray:
    """Keep only the runs along an edge whose depth stays level from one end to the other.

    Where a small breast's outline meets the chest-wall edge, its depth from that edge ramps
    from zero up to centimetres: shallow, and even enough in its quartiles to pass for a band,
    but a ramp. A film edge is level along its whole run. A run whose first and last quarters
    differ in median depth by more than half the typical depth is a ramp and is not a band.
    """
    labels, count = ndi.label(in_band)
    out = in_band.copy()
    for run in range(1, count + 1):
        positions = np.flatnonzero(labels == run)
        quarter = max(1, len(positions) // 4)
        first = float(np.median(depth[positions[:quarter]]))
        last = float(np.median(depth[positions[-quarter:]]))
        if abs(last - first) > 0.5 * typical + 2:
            out[positions] = False
    return out


def _remove_edge_bands(mask: np.ndarray, max_depth: int, max_gap: int, min_length: int, thin_band: int) -> np.ndarray:
    """Cut film edges and scanner frames: shallow bands of even depth along an image edge.

    Along each of the four edges we measure, for every position, how deep the mask reaches in
    from that edge. A film edge (or the scanner's glare along it) is shallow, a few to twenty
    millimetres, and about equally deep along a long stretch; a breast at its chest wall
    reaches centimetres deep, and where its outline meets the edge the depth changes steadily.
    So a band is: at least ``min_length`` positions no deeper than 1.3 times the typical
    shallow depth, with an even depth (interquartile range at most half the median). Its
    positions are cleared. Deep positions (the breast, seen through the band) are left alone,
    so no chest wall is lost, unless the band is thin (at most ``thin_band`` deep): then it is
    a sharp film edge and is cut along the whole edge.
    """
    out = mask.copy()
    views = {
        "left": lambda a: a,
        "right": lambda a: a[:, ::-1],
        "top": lambda a: a.T,
        "bottom": lambda a: a[::-1, :].T,
    }
    for name, view in views.items():
        band = view(out)  # a view into out: clearing it clears out
        depth = _edge_band_depths(band, max_gap)
        candidates = (depth > 0) & (depth <= max_depth)
        if candidates.sum() < min_length:
            continue
        typical = float(np.median(depth[candidates]))
        in_band = _flat_runs((depth > 0) & (depth <= 1.3 * typical + 2), depth, typical)
        if in_band.sum() < min_length:
            continue
        q1, q2, q3 = np.percentile(depth[in_band], [25, 50, 75])
        if q3 - q1 > 0.5 * q2 + 1:
            continue  # depth changes steadily: the outline of a breast meeting the edge
        cols = np.arange(band.shape[1])[None, :]
        cleared = (cols < depth[:, None]) & in_band[:, None]
        if cleared.sum() > 0.5 * band.sum():
            # A film edge is a strip, never most of the foreground: this "band" is a small
            # breast (or a crop of one) hanging from this edge.
            continue
        log.debug("film edge band along the %s edge: %d positions, ~%d px deep", name, int(in_band.sum()), int(q2))
        band[cleared] = False
        if q3 <= thin_band:
            # A thin, sharp film edge also runs in front of the breast or pectoral muscle,
            # where it would add a bright line; trimming that little tissue is the lesser harm.
            band[:, : int(math.ceil(q3)) + 1] = False
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _trim_bright_edge_lines(
    intensity: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float], config: MaskConfig
) -> np.ndarray:
    """Drop the sub-millimetre bright line a film edge leaves where the breast meets the edge.

    Too thin for the 0.5 mm mask to see, yet a bright line at the chest wall is exactly what a
    detector could mistake for a linear calcification. At full resolution, along each edge the
    breast touches over a long stretch, the median intensity at each depth from the edge is
    compared with the median 1.5-3 mm in; leading depths brighter by more than
    ``edge_line_contrast`` of the breast's grey-value spread are removed from the mask.
    """
    out = mask.copy()
    sample = intensity[::4, ::4][mask[::4, ::4]]
    if sample.size < 16:
        return out
    lo, hi = np.percentile(sample, [5, 95])
    excess_limit = config.edge_line_contrast * float(hi - lo)
    for axis_spacing, view in (
        (spacing_mm[1], lambda a: a),
        (spacing_mm[1], lambda a: a[:, ::-1]),
        (spacing_mm[0], lambda a: a.T),
        (spacing_mm[0], lambda a: a[::-1, :].T),
    ):
        band_mask, band_int = view(out), view(intensity)
        touching = band_mask[:, 0]
        if touching.sum() * (spacing_mm[0] + spacing_mm[1]) / 2 < config.edge_band_min_length_mm:
            continue
        depth = max(2, int(math.ceil(2 * config.edge_line_max_mm / axis_spacing)))
        profile = np.median(band_int[touching, :depth], axis=0)
        reference = float(np.median(profile[depth // 2 :]))
        bright = profile[: depth // 2] - reference > excess_limit
        cut = int(np.argmin(bright)) if not bright.all() else depth // 2
        if cut:
            band_mask[:, :cut] = False  # a view into out
    return out


def mask_warnings(mask: np.ndarray) -> list[str]:
    """Doubts about a breast mask worth reporting in the outputs.

    A breast hangs from one vertical edge; a large one also fills the top and bottom of the
    detector, so three covered edges are normal. A mask covering all four edges is either a
    field filled with tissue (spot or magnification view, a crop inside the breast) or an
    inverted image whose bright "breast" is the air; the two cannot be told apart from the
    mask, so this is a warning, not a refusal.
    """
    edges = (mask[:, 0], mask[:, -1], mask[0, :], mask[-1, :])
    if mask.size and all(float(edge.mean()) > 0.5 for edge in edges):
        return [
            "the breast region runs along all four image edges: fine for a spot or magnified view, "
            "otherwise the image may be inverted (check its photometric interpretation)"
        ]
    return []


def breast_mask(
    intensity: np.ndarray,
    spacing_mm: tuple[float, float],
    config: MaskConfig = MaskConfig(),
) -> np.ndarray:
    """The breast (bool, stored frame): no background, labels, markers or film edges.

    Works on a ~0.5 mm block-mean copy (noise averaged away, tens of times fewer pixels):
    threshold from the image's own histogram, cut shallow bands along the image edges (film
    edges, scanner frames), open to break thin bridges and text strokes, keep the largest
    component (labels and markers are separate blobs in the background), fill holes, and
    restore the skin line the opening rounded off. Exact-value padding around a scanned film
    (with film air inside it) is cut off first, so that all of this sees the film's own edges
    and its air as background (:func:`_air_above_padding`). The coarse mask is then expanded to the
    stored grid block by block, and a sub-millimetre bright film-edge line where the breast
    meets an image edge is trimmed at full resolution. See :func:`mask_warnings` for masks
    that fill the whole field. ``intensity`` must be bright = dense
    (:func:`monochrome2_intensity`). The pectoral muscle of an MLO view is included.
    """
    intensity = np.asarray(intensity)
    _check_pixels(intensity)
    sr, sc = check_spacing(spacing_mm, plausible_mm=RESAMPLE_SPACING_RANGE_MM)
    frame = _unpadded_frame(intensity, config.padding_min_fraction)
    if frame is not None:
        r0, r1, c0, c1 = frame
        mask = np.zeros(intensity.shape, dtype=bool)
        mask[r0:r1, c0:c1] = breast_mask(intensity[r0:r1, c0:c1], (sr, sc), config)
        return mask
    factors = (max(1, int(round(config.coarse_spacing_mm / sr))), max(1, int(round(config.coarse_spacing_mm / sc))))
    coarse = coarse_block_mean(intensity.astype(np.float32, copy=False), factors)
    coarse_mm = (sr * factors[0], sc * factors[1])
    mm_to_px = 1.0 / min(coarse_mm)

    fg = coarse > _foreground_threshold(
        coarse, config.threshold_fraction, config.noise_factor, config.padding_min_fraction
    )
    fg = _remove_edge_bands(
        fg,
        max_depth=int(math.ceil(config.edge_band_max_depth_mm * mm_to_px)),
        max_gap=int(math.ceil(config.edge_band_max_gap_mm * mm_to_px)),
        min_length=int(math.ceil(config.edge_band_min_length_mm * mm_to_px)),
        thin_band=int(round(config.edge_band_thin_mm * mm_to_px)),
    )
    disk = _disk(config.opening_radius_mm * mm_to_px)
    # Outside the image counts as foreground for the erosion, so the breast is not eaten away
    # where it leaves the image at the chest wall.
    opened = ndi.binary_dilation(ndi.binary_erosion(fg, disk, border_value=1), disk)
    core = _largest_component(opened)
    if core.sum() * coarse_mm[0] * coarse_mm[1] < config.min_breast_area_mm2:
        raise InputError(
            f"no breast found: the largest bright region is {core.sum() * coarse_mm[0] * coarse_mm[1]:.0f} mm^2 "
            f"(at least {config.min_breast_area_mm2:.0f} mm^2 expected); is this a mammogram with bright = dense?"
        )
    # Give back what the opening rounded off at the skin line, but only next to the breast.
    restored = core | (fg & ndi.binary_dilation(core, disk))
    restored = _largest_component(restored)
    filled = ndi.binary_fill_holes(restored)
    full = _upsample_blocks(filled, factors, intensity.shape)
    return _trim_bright_edge_lines(intensity, full, (sr, sc), config)


def chest_wall_on_left(mask: np.ndarray) -> bool:
    """True when the breast hangs from the left image edge (the chest wall is at column 0).

    Decided from the image, not the laterality tag (tags are missing or wrong often enough,
    and film scans may be mirrored): the breast is widest at the chest wall and tapers to the
    nipple, so the outer third of columns on the chest-wall side holds more breast than the
    outer third on the other side. Ties (a symmetric blob) fall back to the centroid.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise InputError("cannot tell the chest-wall side of an empty breast mask")
    cols = mask.sum(axis=0, dtype=np.int64)
    third = max(1, mask.shape[1] // 3)
    left, right = int(cols[:third].sum()), int(cols[-third:].sum())
    if left != right:
        return left > right
    centroid = float((cols * np.arange(cols.size)).sum() / cols.sum())
    return centroid < (mask.shape[1] - 1) / 2.0


# ----------------------------------------------------------------------------------------
# 3. Normalisation
# ----------------------------------------------------------------------------------------


def breast_grey_range(
    intensity: np.ndarray, mask: np.ndarray, config: NormaliseConfig = NormaliseConfig()
) -> tuple[float, float]:
    """The breast's ``(p_low, p_high)`` grey values, sampled as :func:`normalise` samples them.

    Public because "contrast as a fraction of the breast's grey range" is a measure the
    benchmarks and the simulator's calibration quote: taking it from here means such a figure is
    in the units the detector sees after normalisation (the range maps to [0, ``high_value``]).
    """
    intensity = np.asarray(intensity)
    mask = np.asarray(mask, dtype=bool)
    if intensity.shape != mask.shape:
        raise InputError(f"image {intensity.shape} and mask {mask.shape} differ in shape")
    step = max(1, int(config.sample_stride))
    sample = intensity[::step, ::step][mask[::step, ::step]]
    if sample.size < 16:
        sample = intensity[mask]
    if sample.size == 0:
        raise InputError("cannot normalise: the breast mask is empty")
    lo, hi = np.percentile(sample.astype(np.float64), [config.low_percentile, config.high_percentile])
    return float(lo), float(hi)


def normalise(
    intensity: np.ndarray,
    mask: np.ndarray,
    config: NormaliseConfig = NormaliseConfig(),
    *,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Map the breast's grey values to [0, 1] from its own histogram (float32, stored frame).

    Mapping: ``(I - p_low) / (p_high - p_low) * high_value``, clipped to [0, 1], with
    ``p_low``/``p_high`` the 0.5th/99.5th percentiles of the intensity inside the mask and
    ``high_value`` = 0.9 (see :class:`NormaliseConfig`). Percentiles of the breast itself, not
    fixed windows nor whole-image extremes, are what make a film scan, a For-Presentation and
    a -log For-Processing image of one breast land in the same range: each is (close to) an
    increasing affine function of attenuation, and a robust affine normalisation cancels that.
    Background outside the mask is 0. ``out`` (float32, the shape of ``intensity``, possibly
    ``intensity`` itself) receives the result instead of a new array.
    """
    intensity = np.asarray(intensity)
    if out is not None and (out.dtype != np.float32 or out.shape != intensity.shape):
        raise InputError(f"out must be a float32 array of shape {intensity.shape}, got {out.dtype} {out.shape}")
    mask = np.asarray(mask, dtype=bool)
    lo, hi = breast_grey_range(intensity, mask, config)
    if not hi > lo:
        log.warning(
            "breast has a flat histogram (p%.1f = p%.1f = %g)", config.low_percentile, config.high_percentile, lo
        )
        hi = lo + 1.0
    gain = np.float32(config.high_value / (hi - lo))
    if out is None:
        out = np.subtract(intensity.astype(np.float32, copy=False), np.float32(lo))
    else:
        np.subtract(intensity, np.float32(lo), out=out)
    # In place: a second full-size float32 temporary would add ~50 MB to the peak of a film.
    np.multiply(out, gain, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    out[~mask] = 0.0
    return out


def _input_spacing(m: Mammogram, assumed_input_spacing_mm: float) -> tuple[tuple[float, float], list[str]]:
    if m.spacing_mm is not None:
        return check_spacing(m.spacing_mm, plausible_mm=RESAMPLE_SPACING_RANGE_MM), []
    spacing, warning = spacing_when_unknown(m.shape, assumed_input_spacing_mm)
    return spacing, [warning]


def normalised_stored(m: Mammogram, *, assumed_input_spacing_mm: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1] float32, breast mask bool), both in the stored frame.

    The stored-frame counterpart of :func:`standardise`, for work that must happen at the
    input's full resolution and coordinates (speck segmentation, overlays).
    """
    spacing, _ = _input_spacing(m, assumed_input_spacing_mm)
    intensity = monochrome2_intensity(m)
    mask = breast_mask(intensity, spacing)
    # The intensity image is this function's own (never the caller's pixels): normalise it in
    # place, so a film's peak holds one full-size float32 image instead of three.
    own = intensity.dtype == np.float32 and not np.shares_memory(intensity, m.pixels)
    return normalise(intensity, mask, out=intensity if own else None), mask


# ----------------------------------------------------------------------------------------
# 4. Canonical frame
# ----------------------------------------------------------------------------------------


def plan_transform(
    mask: np.ndarray,
    stored_spacing_mm: tuple[float, float],
    spacing_mm: float,
    *,
    flipped: bool,
    margin_mm: float = 2.0,
) -> CanonicalTransform:
    """The canonical frame of a stored mask: flip, scale, and a crop to the breast plus margin.

    The crop is whole canonical pixels (integer offset), so canonical pixel k covers
    [k, k+1) of the scaled frame exactly, and it never extends past the scaled image. Where
    the breast reaches to within the margin of the image border (the chest wall), the crop
    starts at the first whole canonical pixel inside the breast instead.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("cannot crop to an empty breast mask")
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise SpacingError(f"canonical spacing must be positive, got {spacing_mm!r} mm")
    sr, sc = check_spacing(stored_spacing_mm, plausible_mm=RESAMPLE_SPACING_RANGE_MM)
    rows, cols = mask.shape
    scale = (sr / spacing_mm, sc / spacing_mm)
    row_any, col_any = np.asarray(mask.any(axis=1)), np.asarray(mask.any(axis=0))
    r0, r1 = int(np.argmax(row_any)), rows - int(np.argmax(row_any[::-1]))
    c0, c1 = int(np.argmax(col_any)), cols - int(np.argmax(col_any[::-1]))
    if flipped:  # x' = cols - x: the box [c0, c1) becomes [cols - c1, cols - c0)
        c0, c1 = cols - c1, cols - c0
    margin = max(0.0, float(margin_mm)) / spacing_mm
    full_r, full_c = int(math.ceil(rows * scale[0] - 1e-9)), int(math.ceil(cols * scale[1] - 1e-9))

    def span(lo: int, hi: int, size: int, s: float, full: int) -> tuple[int, int]:
        # Where the breast runs (almost) into the image border, as at the chest wall, the crop
        # starts just inside it: a margin there would only add a strip of cut-off border.
        start = int(math.ceil(lo * s - 1e-9)) if lo * s <= margin else int(math.floor(lo * s - margin))
        end = int(math.floor(hi * s + 1e-9)) if (size - hi) * s <= margin else int(math.ceil(hi * s + margin))
        start, end = max(0, start), min(full, end)
        return (start, end) if end > start else (max(0, int(math.floor(lo * s))), min(full, int(math.ceil(hi * s))))

    v0, v1 = span(r0, r1, rows, scale[0], full_r)
    u0, u1 = span(c0, c1, cols, scale[1], full_c)
    return CanonicalTransform(
        stored_shape=(rows, cols),
        flipped=bool(flipped),
        scale=scale,
        offset=(float(v0), float(u0)),
        canonical_shape=(v1 - v0, u1 - u0),
    )


def _stored_region(
    values: np.ndarray, transform: CanonicalTransform, pad: tuple[int, int]
) -> tuple[np.ndarray, int, int]:
    """The part of the stored image the canonical crop needs, flipped, plus ``pad`` pixels.

    Returns (region in the flipped frame, its first row, its first column in the flipped
    frame). Converting and smoothing only this saves most of the work: the breast rarely
    covers half of the film.
    """
    rows, cols = transform.stored_shape
    sr, sc = transform.scale
    out_r, out_c = transform.canonical_shape
    v0, u0 = transform.offset
    # Canonical rows v0 .. v0 + out_r cover y'' in that range, i.e. stored rows y''/sr.
    y0 = max(0, int(math.floor(v0 / sr)) - pad[0])
    y1 = min(rows, int(math.ceil((v0 + out_r) / sr)) + pad[0])
    x0 = max(0, int(math.floor(u0 / sc)) - pad[1])
    x1 = min(cols, int(math.ceil((u0 + out_c) / sc)) + pad[1])
    if transform.flipped:  # flipped-frame columns [x0, x1) are stored columns [cols-x1, cols-x0), reversed
        return values[y0:y1, cols - x1 : cols - x0][:, ::-1], y0, x0
    return values[y0:y1, x0:x1], y0, x0


#: Interpolators :func:`standardise` can upsample coarse inputs with (see ``upsampling``).
#: Measured on real film (docs/real-film.md; model 0.2.1, held-out CBIS films degraded to
#: 0.2 mm 8-bit with calibrated clusters inserted): sensitivity at 1 false mark per image
#: 0.29 linear, 0.42 nearest, 0.46 Lanczos, and the fewest false marks with Lanczos. Linear
#: interpolation is a low-pass filter that lowers a speck's peak; nearest keeps the peak but
#: makes 1.5x upsampling jagged; the windowed sinc keeps the peak and the shape.
DEFAULT_UPSAMPLING = "lanczos"
#: name -> SimpleITK interpolator (attribute of ``SimpleITK``). ``linear`` and ``lanczos`` run
#: in :mod:`MicrocalcAI.core.resample` (equal to SimpleITK's result to float32 rounding, several
#: times faster); the others through SimpleITK, imported only then.
UPSAMPLING_INTERPOLATORS = {
    "linear": "sitkLinear",
    "nearest": "sitkNearestNeighbor",
    "bspline": "sitkBSpline",
    "lanczos": "sitkLanczosWindowedSinc",
}


def _resample_sitk(
    region: np.ndarray,
    origin_px: tuple[int, int],
    transform: CanonicalTransform,
    interpolator: str,
) -> np.ndarray:
    """The reference implementation: SimpleITK's ``Resample`` of ``region`` on the canonical grid."""
    import SimpleITK as sitk

    sr, sc = transform.scale
    y0, x0 = origin_px
    image = sitk.GetImageFromArray(region)
    image.SetSpacing((sc, sr))
    image.SetOrigin(((x0 + 0.5) * sc, (y0 + 0.5) * sr))
    out_r, out_c = transform.canonical_shape
    v0, u0 = transform.offset
    reference = sitk.Image(int(out_c), int(out_r), sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0))
    reference.SetOrigin((u0 + 0.5, v0 + 0.5))
    kind = getattr(sitk, UPSAMPLING_INTERPOLATORS[interpolator])
    out = sitk.Resample(image, reference, sitk.Transform(), kind, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _resample_image(
    image01: np.ndarray, transform: CanonicalTransform, upsampling: str = DEFAULT_UPSAMPLING, *, reference: bool = False
) -> np.ndarray:
    """Sample the stored image on the canonical grid: anti-aliased when downsampling.

    Physical space is the flipped, scaled frame of :class:`CanonicalTransform` (x'', y'').
    As in SimpleITK, a pixel's *centre* is at its origin, so stored pixel i (covering [i, i+1))
    has its centre at (i + 0.5) * scale and canonical pixel k at offset + k + 0.5: exactly the
    transform's convention. Anti-aliasing when downsampling by a factor f = 1 / scale is a
    Gaussian of sigma (f - 1) / 2 stored pixels (the rule of scikit-image's ``rescale``): it
    removes what the coarser grid cannot represent while keeping calcification-sized detail;
    then linear interpolation. Upsampling (an input coarser than the canonical spacing) is not
    smoothed and uses the ``upsampling`` interpolator (:data:`UPSAMPLING_INTERPOLATORS`).
    ``reference`` resamples through SimpleITK whatever the interpolator (tests compare).
    """
    sr, sc = transform.scale
    sigma = (max(0.0, (1.0 / sr - 1.0) / 2.0), max(0.0, (1.0 / sc - 1.0) / 2.0))
    pad = (int(math.ceil(3 * sigma[0])) + 2, int(math.ceil(3 * sigma[1])) + 2)
    region, y0, x0 = _stored_region(image01, transform, pad)
    region = np.ascontiguousarray(region, dtype=np.float32)
    if sigma[0] > 0 or sigma[1] > 0:
        # scipy's separable filter is twice as fast as SimpleITK's DiscreteGaussian here.
        region = ndi.gaussian_filter(region, sigma=sigma, mode="nearest", truncate=3.0)
    upsample = min(sr, sc) > 1.0 + 1e-9
    interpolator = upsampling if upsample else "linear"
    if reference or interpolator not in SEPARABLE_INTERPOLATORS:
        return _resample_sitk(region, (y0, x0), transform, interpolator)
    # Canonical centre offset + k + 0.5 is at continuous region index (offset + k + 0.5) / scale
    # - (first stored pixel + 0.5), as SimpleITK computes it from the two grids' origins.
    v0, u0 = transform.offset
    first = (((v0 + 0.5) - (y0 + 0.5) * sr) / sr, ((u0 + 0.5) - (x0 + 0.5) * sc) / sc)
    return resample_separable(region, transform.canonical_shape, first, (1.0 / sr, 1.0 / sc), interpolator)


def rescale_square(window: np.ndarray, size: int, upsampling: str = DEFAULT_UPSAMPLING) -> np.ndarray:
    """A square ``window`` resampled to ``size`` x ``size`` pixels over the same extent by
    :func:`_resample_image` itself (anti-aliased linear when shrinking, ``upsampling`` when
    enlarging): training's scale jitter must resample exactly as standardisation does, or it
    would teach the detector an interpolation it never meets at inference."""
    n = int(window.shape[0])
    if window.ndim != 2 or window.shape[1] != n:
        raise ValueError(f"rescale_square needs a square 2-D window, got shape {window.shape}")
    if n == size:
        return np.ascontiguousarray(window, dtype=np.float32)
    scale = size / n
    transform = CanonicalTransform(
        stored_shape=(n, n), flipped=False, scale=(scale, scale), offset=(0.0, 0.0), canonical_shape=(size, size)
    )
    return _resample_image(window, transform, upsampling)


def _resample_mask(mask: np.ndarray, transform: CanonicalTransform) -> np.ndarray:
    """Nearest-neighbour sample of the stored mask at the canonical pixel centres.

    The stored mask is piecewise constant over ~0.5 mm blocks (see :func:`breast_mask`), so
    nearest sampling at <= 0.5 mm loses nothing, and by index arithmetic it costs nothing:
    canonical centre k + 0.5 maps to stored x = (k + 0.5 + offset) / scale.
    """
    rows, cols = transform.stored_shape
    out_r, out_c = transform.canonical_shape
    v0, u0 = transform.offset
    sr, sc = transform.scale
    y = np.floor((np.arange(out_r) + 0.5 + v0) / sr).astype(np.int64)
    x = np.floor((np.arange(out_c) + 0.5 + u0) / sc).astype(np.int64)
    valid_y, valid_x = (y >= 0) & (y < rows), (x >= 0) & (x < cols)
    if transform.flipped:
        x = cols - 1 - x
    out = mask[np.ix_(np.clip(y, 0, rows - 1), np.clip(x, 0, cols - 1))]
    return out & valid_y[:, None] & valid_x[None, :]


def standardise(
    m: Mammogram,
    spacing_mm: float = 0.1,
    *,
    assumed_input_spacing_mm: float = 0.05,
    margin_mm: float = 2.0,
    stored: Optional[tuple[np.ndarray, np.ndarray]] = None,
    upsampling: str = DEFAULT_UPSAMPLING,
    noise_equalisation: Optional[NoiseEqualisation] = None,
) -> CanonicalImage:
    """The mammogram in the detector's frame, with the exact way back to stored pixels.

    Steps: bright = dense, breast mask, breast-histogram normalisation (or ``stored``, a
    precomputed :func:`normalised_stored` result), chest wall to column 0 (decided from the
    mask), resampling to isotropic ``spacing_mm`` (Gaussian anti-aliasing and linear
    interpolation when downsampling; ``upsampling`` - by default a Lanczos-windowed sinc -
    when the input is coarser; the mask by nearest neighbour), and a crop to the breast plus
    ``margin_mm``. Outside the canonical mask the image is 0. With ``noise_equalisation`` (a
    model setting from its manifest entry), the canonical image is then noise-equalised with
    the noise measured on the native pixels (:mod:`MicrocalcAI.core.equalise`). Training
    standardises through this same function, so a model sees coarse inputs exactly as it was
    trained on them.
    """
    spacing, warnings = _input_spacing(m, assumed_input_spacing_mm)
    if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
        raise SpacingError(f"canonical spacing must be a positive number of mm, got {spacing_mm!r}")
    if stored is None:
        image01, mask = normalised_stored(m, assumed_input_spacing_mm=assumed_input_spacing_mm)
    else:
        image01, mask = stored
        if image01.shape != m.shape or mask.shape != m.shape:
            raise InputError(
                f"precomputed stored image/mask {image01.shape}/{mask.shape} do not match the mammogram {m.shape}"
            )
    warnings = warnings + mask_warnings(mask)
    flipped = not chest_wall_on_left(mask)
    transform = plan_transform(mask, spacing, float(spacing_mm), flipped=flipped, margin_mm=margin_mm)
    if upsampling not in UPSAMPLING_INTERPOLATORS:
        raise InputError(f"upsampling must be one of {sorted(UPSAMPLING_INTERPOLATORS)}, got {upsampling!r}")
    image = _resample_image(image01, transform, upsampling)
    mask_c = _resample_mask(np.asarray(mask, dtype=bool), transform)
    np.clip(image, 0.0, 1.0, out=image)
    image[~mask_c] = 0.0
    if noise_equalisation is not None:
        curve = noise_curve(image01, mask, noise_equalisation)
        if curve is None:
            warnings = warnings + [
                "noise equalisation skipped: the breast holds no window large enough to measure noise in; "
                "the model was trained on equalised images"
            ]
        equalise_noise(image, mask_c, float(spacing_mm), curve, noise_equalisation)
    for w in warnings:
        log.warning("%s: %s", m.source or "image", w)
    log.debug(
        "standardised %s: %s -> %s, flipped=%s, scale=%s",
        m.source or "image",
        m.shape,
        image.shape,
        flipped,
        transform.scale,
    )
    return CanonicalImage(
        image=image, mask=mask_c, spacing_mm=float(spacing_mm), transform=transform, warnings=warnings
    )
