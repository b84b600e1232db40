"""The pectoral muscle of an MLO view, as a straight-edged triangle in the upper chest-wall corner.

Why: on an MLO view the pectoral muscle is the brightest large structure next to the chest
wall, and issue 10's diagnosis of real film found about one false mark in ten on the pectoral
muscle and chest wall. The breast mask (:func:`MicrocalcAI.core.standardise.breast_mask`)
deliberately keeps the muscle: breast tissue overlaps it in the projection, and
calcifications there are real findings. So this estimate is used to *say where* a mark lies
(benchmarks, overlays), not to hide marks.

The method is the classic first stage of pectoral segmentation: the muscle's edge is close to
a straight line running from the top of the image down to the chest wall, and it is the
strongest intensity step in that corner (Kwok et al., "Automatic pectoral muscle segmentation
on mediolateral oblique view mammograms", IEEE TMI 23(9), 2004: a straight-line estimate,
then a curve refinement not done here; Ferrari et al., IEEE TMI 23(2), 2004, find the same
line with a Hough transform). Here every line from a point on the breast's top edge to a point
on the chest wall is scored, on a ~2 mm block-mean copy, by the mean grey step across it
(a band inside minus a band outside), and the best one is kept only when the step, the
triangle's brightness against the rest of the breast and its size are those of a muscle. A
CC view (no muscle) then gives ``None``.

The image must be oriented as film archives and DICOM store MLO views: the axilla, and so
the muscle, at the top, with the breast leaving the image there (the film's edge cuts it
through the axilla); the search runs along the breast's top row, so a breast whose top is
rounded inside the image gets a narrow search or none. The chest-wall side is decided from the
mask (:func:`MicrocalcAI.core.standardise.chest_wall_on_left`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.spacing import check_spacing
from MicrocalcAI.core.standardise import chest_wall_on_left, coarse_block_mean

__all__ = ["PectoralConfig", "PectoralLine", "estimate_pectoral_line", "muscle_region", "pectoral_muscle"]


@dataclass(frozen=True)
class PectoralConfig:
    """Search grid and acceptance rules of :func:`estimate_pectoral_line` (mm and breast grey units)."""

    #: Block size of the working copy: the edge is a few mm wide (fascia, partial volume).
    coarse_spacing_mm: float = 2.0
    #: Width of the bands compared either side of a candidate line.
    band_mm: float = 6.0
    #: Where the line may meet the top edge, from the chest wall: at least this far ...
    min_top_mm: float = 15.0
    #: ... and at most this fraction of the breast's width along its top row.
    max_top_fraction: float = 0.85
    #: Where the line may meet the chest wall, from the breast's top row: at least this far ...
    min_side_mm: float = 25.0
    #: ... and at most this fraction of the breast's height.
    max_side_fraction: float = 0.85
    #: The mean step across the line, in units of the breast's normalised grey range.
    min_step: float = 0.06
    #: The triangle's mean grey minus the rest of the breast's (the muscle is brighter).
    min_brightness: float = 0.05
    #: Share of the breast mask the triangle may cover.
    min_area_fraction: float = 0.02
    max_area_fraction: float = 0.35

    def __post_init__(self) -> None:
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) for v in values.values()):
            raise InputError(f"pectoral search: every setting must be a finite number, got {self}")
        positive = ("coarse_spacing_mm", "band_mm", "min_top_mm", "min_side_mm")
        if not all(values[k] > 0 for k in positive):
            raise InputError(f"pectoral search: {', '.join(positive)} must be positive, got {self}")
        fractions = ("max_top_fraction", "max_side_fraction")
        if not all(0 < values[k] <= 1 for k in fractions):
            raise InputError(f"pectoral search: {', '.join(fractions)} must lie in (0, 1], got {self}")
        if not 0 <= self.min_area_fraction <= self.max_area_fraction <= 1:
            raise InputError(f"pectoral search: need 0 <= min_area_fraction <= max_area_fraction <= 1, got {self}")


@dataclass(frozen=True)
class PectoralLine:
    """The muscle's edge: ``x / top_px + y / side_px < 1`` is muscle, with x from the breast's
    chest-wall edge (``wall_col`` pixels in from the image's border on that side: padding or
    a crop) and y from the breast's top row, in stored pixels of the frame it was found in."""

    top_px: float
    side_px: float
    top_row: int
    wall_col: int
    chest_wall_on_left: bool
    step: float  # mean grey step across the line (breast grey range units)
    brightness: float  # the triangle's mean grey minus the rest of the breast's
    area_fraction: float  # share of the breast (on the ~2 mm working copy) inside the triangle


def _signed_distance(xs: np.ndarray, ys: np.ndarray, top: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Distance (px) of points from the lines x/top + y/side = 1, negative on the muscle's side."""
    norm = np.sqrt(1.0 / top**2 + 1.0 / side**2)
    return (xs[None, :] / top[:, None] + ys[None, :] / side[:, None] - 1.0) / norm[:, None]


def estimate_pectoral_line(
    image01: np.ndarray,
    mask: np.ndarray,
    spacing_mm: tuple[float, float] | float,
    config: PectoralConfig = PectoralConfig(),
) -> Optional[PectoralLine]:
    """The pectoral muscle's edge on an MLO view, or ``None`` where no muscle-like corner is found.

    ``image01``: the breast-normalised image (bright = dense, the breast's grey range in [0, 1],
    as :func:`MicrocalcAI.core.standardise.normalised_stored` gives it); ``mask``: its breast
    mask; both in the same (stored) frame.
    """
    image01, mask = np.asarray(image01), np.asarray(mask, dtype=bool)
    if image01.shape != mask.shape or image01.ndim != 2:
        raise InputError(f"image and mask must be 2-D and of one shape, got {image01.shape} and {mask.shape}")
    sr, sc = check_spacing(spacing_mm)
    if not mask.any():
        return None
    left = chest_wall_on_left(mask)
    if not left:
        image01, mask = image01[:, ::-1], mask[:, ::-1]
    f = max(1, int(round(config.coarse_spacing_mm / min(sr, sc))))
    fill = coarse_block_mean(mask.astype(np.float32), (f, f))  # share of each block on the breast
    cmask = fill > 0.5
    if not cmask.any():
        return None
    values = coarse_block_mean(np.where(mask, image01, 0).astype(np.float32), (f, f))
    values = np.divide(values, fill, out=np.zeros_like(values), where=fill > 0)
    step_mm = (sr * f, sc * f)  # (row, column) mm per coarse pixel

    rows_with = np.flatnonzero(cmask.any(axis=1))
    top_row, bottom_row = int(rows_with[0]), int(rows_with[-1])
    wall_col = int(np.flatnonzero(cmask.any(axis=0))[0])
    height_px = bottom_row - top_row + 1
    top_width_px = int(cmask[top_row].sum())
    a_lo, a_hi = config.min_top_mm / step_mm[1], config.max_top_fraction * top_width_px
    b_lo, b_hi = config.min_side_mm / step_mm[0], config.max_side_fraction * height_px
    if a_hi < a_lo or b_hi < b_lo:
        return None
    tops = np.arange(a_lo, a_hi + 1e-9, 1.0)
    sides = np.arange(b_lo, b_hi + 1e-9, 1.0)
    cand_a, cand_b = (g.ravel() for g in np.meshgrid(tops, sides, indexing="ij"))

    band = config.band_mm / min(step_mm)
    rows_in, cols_in = np.nonzero(cmask)
    v_all = values[rows_in, cols_in].astype(np.float64)
    ys_all = (rows_in - top_row).astype(np.float64) + 0.5  # coarse pixel centres, from the top row
    xs_all = (cols_in - wall_col).astype(np.float64) + 0.5  # ... and from the chest-wall edge
    near = (xs_all < a_hi + 2 * band) & (ys_all < b_hi + 2 * band)
    xs, ys, v = xs_all[near], ys_all[near], v_all[near]

    best_step, a, b = -math.inf, 0.0, 0.0
    chunk = max(1, 4_000_000 // max(1, xs.size))
    for start in range(0, cand_a.size, chunk):
        tops_c, sides_c = cand_a[start : start + chunk], cand_b[start : start + chunk]
        d = _signed_distance(xs, ys, tops_c, sides_c)
        inside_band = (d < 0) & (d >= -band)
        outside_band = (d >= 0) & (d < band)
        n_in, n_out = inside_band.sum(1), outside_band.sum(1)
        ok = (n_in > 0) & (n_out > 0)
        steps = np.full(tops_c.size, -np.inf)
        steps[ok] = (inside_band @ v)[ok] / n_in[ok] - (outside_band @ v)[ok] / n_out[ok]
        i = int(np.argmax(steps))
        if steps[i] > best_step:
            best_step, a, b = float(steps[i]), float(tops_c[i]), float(sides_c[i])
    if not math.isfinite(best_step):
        return None
    inside = _signed_distance(xs_all, ys_all, np.array([a]), np.array([b]))[0] < 0
    n_inside = int(inside.sum())
    if n_inside == 0 or n_inside == v_all.size:
        return None
    brightness = float(v_all[inside].mean()) - float(v_all[~inside].mean())
    area_fraction = n_inside / v_all.size
    if (
        best_step < config.min_step
        or brightness < config.min_brightness
        or not config.min_area_fraction <= area_fraction <= config.max_area_fraction
    ):
        return None
    return PectoralLine(
        top_px=a * f,
        side_px=b * f,
        top_row=top_row * f,
        wall_col=wall_col * f,
        chest_wall_on_left=left,
        step=best_step,
        brightness=brightness,
        area_fraction=area_fraction,
    )


def pectoral_muscle(
    image01: np.ndarray,
    mask: np.ndarray,
    spacing_mm: tuple[float, float] | float,
    config: PectoralConfig = PectoralConfig(),
) -> Optional[np.ndarray]:
    """The pectoral muscle (bool, the input's frame, inside ``mask``), or ``None`` where no
    muscle-like corner is found (a CC view, or an MLO view whose muscle is not shown)."""
    line = estimate_pectoral_line(image01, mask, spacing_mm, config)
    if line is None:
        return None
    return muscle_region(line, mask)


def muscle_region(line: PectoralLine, mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` on the muscle's side of ``line`` (same frame as the line)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise InputError(f"the mask must be 2-D, got shape {mask.shape}")
    rows, cols = mask.shape
    y = np.arange(rows, dtype=np.float64)[:, None] + 0.5 - line.top_row
    x = np.arange(cols, dtype=np.float64)[None, :] + 0.5 - line.wall_col
    if not line.chest_wall_on_left:
        x = x[:, ::-1]
    return (x / line.top_px + y / line.side_px < 1.0) & mask
