"""Simulator configuration (:class:`SimulationConfig` and its presets), the records a rendered
image produces, and the physical constants every stage shares."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.errors import MicrocalcAIError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "PathLike",
    "CBIS_SPACING_MM",
    "MU_FAT",
    "MU_GLAND",
    "MU_SKIN",
    "MU_MUSCLE",
    "SimulationError",
    "SimulationConfig",
    "FILM_HARD_NEGATIVE_MIX",
    "SimulatedLesion",
    "SimulatedImageMeta",
]


#: Spacing assumed for the CBIS-DDSM film scans, which carry none.
CBIS_SPACING_MM = 0.05


#: Tissue linear attenuation at ~20 keV (Johns & Yaffe 1987), per mm.
MU_FAT = 0.046


MU_GLAND = 0.080


MU_SKIN = 0.080


MU_MUSCLE = 0.084  # skeletal muscle, NIST XCOM/ICRU-44 at 20 keV


#: Hard-negative mix of the film preset: a name listed more often is drawn more often. Single
#: bright pixels and dust dominate because they made 68% of the false marks on real film.
FILM_HARD_NEGATIVE_MIX = (
    "isolated_speck",
    "skin_pore",
    "skin_marker",
    "vessel_crossing",
    "film_scratch",
    "dust",
    "dust",
    "emulsion_spot",
    "pixel_outlier",
    "pixel_outlier",
    "pixel_outlier",
    "pixel_outlier",
    "processing_spot",
)


class SimulationError(MicrocalcAIError):
    """The simulation was configured inconsistently or cannot write its output."""


@dataclass
class SimulationConfig:
    """Every knob of the simulator; the seed plus this config fully determine the output."""

    n_images: int = 100
    seed: int = 0
    #: Render spacing range in mm (uniform); equal bounds give one fixed spacing.
    spacing_mm: tuple[float, float] = (0.1, 0.1)
    #: Fraction of images built on real CBIS-DDSM crops (the rest are procedural breasts).
    real_fraction: float = 0.5
    #: Inclusive range of clusters per image; 0 gives lesion-free images.
    clusters_per_image: tuple[int, int] = (0, 3)
    malignant_fraction: float = 0.5
    #: Bits stored, chosen uniformly per image from this tuple (12 and/or 16).
    bits_choices: tuple[int, ...] = (12, 16)
    monochrome1_fraction: float = 0.2
    #: Procedural image size in mm, (rows, columns) ranges.
    procedural_height_mm: tuple[float, float] = (80.0, 120.0)
    procedural_width_mm: tuple[float, float] = (60.0, 90.0)
    #: Real crop size in mm, (rows, columns) ranges.
    real_crop_height_mm: tuple[float, float] = (80.0, 120.0)
    real_crop_width_mm: tuple[float, float] = (60.0, 90.0)
    #: Procedural compressed breast thickness (mm).
    compressed_thickness_mm: tuple[float, float] = (40.0, 65.0)
    #: Skin thickness (mm).
    skin_mm: tuple[float, float] = (1.0, 2.0)
    #: Power-law exponent of the parenchymal texture.
    texture_beta: tuple[float, float] = (2.8, 3.2)
    #: Mean fibroglandular fraction of procedural breasts.
    gland_fraction: tuple[float, float] = (0.15, 0.6)
    #: Effective calcification attenuation (per mm) for each class.
    mu_calc_malignant: tuple[float, float] = (1.2, 2.2)
    mu_calc_benign: tuple[float, float] = (1.4, 2.6)
    #: Detector PSF Gaussian sigma (mm).
    psf_sigma_mm: tuple[float, float] = (0.03, 0.06)
    #: Quantum noise sigma (nats) at the breast's median attenuation.
    noise_sigma: tuple[float, float] = (0.006, 0.015)
    #: Extra noise on real crops relative to ``noise_sigma`` (film already has grain).
    real_noise_factor: float = 0.5
    #: Attenuation (nats) that CBIS stored full scale (65535) represents: DDSM digitisers are
    #: linear in optical density over ~0-4 OD and film gamma is ~3, so 4 OD ~ 4 ln(10) / 3 nats.
    real_attenuation_scale: float = 3.1
    #: Attenuation (nats) mapped to the top of the stored range.
    display_full_scale: float = 5.5
    #: Margin added around the specks' extent for the lesion box (mm).
    box_margin_mm: float = 0.5
    #: Minimum distance of every speck from the breast edge (mm).
    edge_clearance_mm: float = 2.0
    #: Minimum gap between lesion boxes (mm).
    box_gap_mm: float = 2.0
    #: Placement attempts per cluster before it is dropped (logged).
    placement_attempts: int = 60
    patient_prefix: str = "SIM_"
    # --- realistic-simulator extensions. Every default below reproduces the basic simulator
    # byte for byte (same random draws, same files); :meth:`realistic` turns them on. ---
    #: "basic": the original benign/malignant samplers; "birads": every BI-RADS 5th-ed.
    #: morphology of :data:`MORPHOLOGIES` with its own distributions, sizes and counts.
    morphology_set: str = "basic"
    #: With ``morphology_set="birads"``: restrict to these morphology names (empty = all).
    birads_morphologies: tuple[str, ...] = ()
    #: Inclusive range of hard negatives per image (never annotated as lesions; recorded in
    #: the COCO image entry as ``hard_negatives``).
    hard_negatives_per_image: tuple[int, int] = (0, 0)
    #: Hard-negative types to draw from (see :data:`HARD_NEGATIVE_TYPES`).
    hard_negative_types: tuple[str, ...] = (
        "isolated_speck",
        "skin_pore",
        "skin_marker",
        "vessel_crossing",
        "film_scratch",
        "noise_spike",
    )
    #: Vessels, ducts and Cooper's ligaments as curvilinear structures in procedural breasts.
    curvilinear: bool = False
    # --- the film imaging chain (:meth:`film`). "detector" keeps the chain above byte for byte;
    # "film" renders specks finely, blurs them through the film/screen/digitiser chain and
    # area-averages them onto the output grid, with calcium contrast from physics (see
    # :mod:`MicrocalcAI.simulation.rendering` for every range and its source). ---
    #: "detector" (the original chain) or "film".
    imaging_chain: str = "detector"
    #: Largest spacing (mm) specks are rendered at before blur and area averaging; the render
    #: spacing is the output spacing divided by a whole number, so it lies in [half this, this].
    fine_render_mm: float = 0.05
    #: Effective photon energy (keV) of the mammographic beam.
    photon_energy_kev: tuple[float, float] = (17.0, 22.0)
    #: Scatter-to-primary ratio behind the grid (contrast is divided by 1 + SPR).
    scatter_to_primary: tuple[float, float] = (0.15, 0.8)
    #: Total Gaussian blur sigma (mm) of the focal spot, screen-film and digitiser optics.
    film_blur_sigma_mm: tuple[float, float] = (0.03, 0.15)
    #: Probability that part of that blur is applied to the whole image (background blur
    #: augmentation), and the range of that part's share of the variance.
    background_blur_probability: float = 0.5
    background_blur_share: tuple[float, float] = (0.1, 0.6)
    #: Optical density of fatty and of the densest breast tissue on the film: they set the
    #: film gradient (contrast) at each spot through the characteristic curve.
    film_od_fat: tuple[float, float] = (1.6, 2.4)
    film_od_dense: tuple[float, float] = (0.45, 1.0)
    #: Film grain and quantum mottle (nats, standard deviation) at a 0.05 mm aperture; it falls
    #: as the square root of the aperture side at coarser output spacings.
    film_grain_sigma: tuple[float, float] = (0.015, 0.04)
    #: Gamma of a random display LUT applied before quantisation (digitiser / film LUT spread).
    lut_gamma: tuple[float, float] = (0.75, 1.33)
    #: Per-lesion spread of the effective calcium attenuation (relative, uniform).
    lesion_contrast_spread: tuple[float, float] = (0.8, 1.2)
    #: The same factor for the film chain's calcium-scaled look-alikes (dust, emulsion spots,
    #: pixel outliers, skin pores, processing spots; not ``isolated_speck``, which keeps
    #: ``mu_calc_benign``); None = ``lesion_contrast_spread``. A set of faint clusters can keep
    #: its look-alikes at full contrast, so that faintness alone never means "not a lesion".
    lookalike_contrast_spread: Optional[tuple[float, float]] = None

    @classmethod
    def realistic(cls, **overrides) -> SimulationConfig:
        """The realistic preset: BI-RADS morphologies, hard negatives, curvilinear anatomy,
        spacings 0.05-0.2 mm and 8/12/14/16-bit output (both photometric interpretations).

        ``SimulationConfig.realistic(n_images=20, seed=3)``; any field can be overridden.
        """
        base: dict[str, Any] = dict(
            morphology_set="birads",
            hard_negatives_per_image=(1, 4),
            curvilinear=True,
            spacing_mm=(0.05, 0.2),
            bits_choices=(8, 12, 14, 16),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def film(cls, **overrides) -> SimulationConfig:
        """The film preset: the realistic preset seen through the film imaging chain, with
        real-film clutter as recorded hard negatives, mostly 8-bit output and real backgrounds
        from the training views only (see :data:`~MicrocalcAI.simulation.backgrounds.HELD_OUT_VIEWS`).

        Contrast and blur are drawn per image and per lesion independently of the class, so
        both benign and malignant clusters appear sharp and blurred, faint and bright.
        """
        base: dict[str, Any] = dict(
            morphology_set="birads",
            curvilinear=True,
            spacing_mm=(0.05, 0.2),
            bits_choices=(8, 8, 12, 16),
            imaging_chain="film",
            hard_negatives_per_image=(4, 14),
            hard_negative_types=FILM_HARD_NEGATIVE_MIX,
            # Real films carry their own grain: add a quarter of the procedural breasts' grain.
            real_noise_factor=0.25,
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        """Reject configurations that would silently produce nonsense."""
        # The tables live with their samplers; imported here so config stays a leaf module.
        from MicrocalcAI.simulation.calcifications import MORPHOLOGIES
        from MicrocalcAI.simulation.hard_negatives import HARD_NEGATIVE_TYPES

        if self.n_images < 1:
            raise SimulationError(f"n_images must be >= 1, got {self.n_images}")
        lo, hi = self.spacing_mm
        if not (0.01 <= lo <= hi <= 0.5):
            raise SimulationError(f"spacing_mm range {self.spacing_mm} must lie in [0.01, 0.5] mm")
        if not (0.0 <= self.real_fraction <= 1.0 and 0.0 <= self.malignant_fraction <= 1.0):
            raise SimulationError("real_fraction and malignant_fraction must be in [0, 1]")
        if not (0.0 <= self.monochrome1_fraction <= 1.0):
            raise SimulationError("monochrome1_fraction must be in [0, 1]")
        c0, c1 = self.clusters_per_image
        if not (0 <= c0 <= c1):
            raise SimulationError(f"clusters_per_image {self.clusters_per_image} must be 0 <= min <= max")
        if not self.bits_choices or any(b not in (8, 12, 14, 16) for b in self.bits_choices):
            raise SimulationError(
                f"bits_choices must be a non-empty subset of (8, 12, 14, 16), got {self.bits_choices}"
            )
        if self.morphology_set not in ("basic", "birads"):
            raise SimulationError(f"morphology_set must be 'basic' or 'birads', got {self.morphology_set!r}")
        unknown = [m for m in self.birads_morphologies if m not in MORPHOLOGIES]
        if unknown:
            raise SimulationError(f"unknown BI-RADS morphologies {unknown}; known: {sorted(MORPHOLOGIES)}")
        h0, h1 = self.hard_negatives_per_image
        if not (0 <= h0 <= h1):
            raise SimulationError(f"hard_negatives_per_image {self.hard_negatives_per_image} must be 0 <= min <= max")
        bad = [t for t in self.hard_negative_types if t not in HARD_NEGATIVE_TYPES]
        if bad or (h1 > 0 and not self.hard_negative_types):
            raise SimulationError(
                f"hard_negative_types must be a non-empty subset of {HARD_NEGATIVE_TYPES}, got {self.hard_negative_types}"
            )
        if self.imaging_chain not in ("detector", "film"):
            raise SimulationError(f"imaging_chain must be 'detector' or 'film', got {self.imaging_chain!r}")
        if not (0.01 <= self.fine_render_mm <= 0.1):
            raise SimulationError(f"fine_render_mm must be in [0.01, 0.1] mm, got {self.fine_render_mm}")
        for name in (
            "photon_energy_kev",
            "scatter_to_primary",
            "film_blur_sigma_mm",
            "background_blur_share",
            "film_od_fat",
            "film_od_dense",
            "film_grain_sigma",
            "lut_gamma",
            "lesion_contrast_spread",
        ):
            a, b = getattr(self, name)
            if not (0.0 <= a <= b):
                raise SimulationError(f"{name} {getattr(self, name)} must be 0 <= min <= max")
        if self.lookalike_contrast_spread is not None:
            a, b = self.lookalike_contrast_spread
            if not (0.0 < a <= b):
                raise SimulationError(
                    f"lookalike_contrast_spread {self.lookalike_contrast_spread} must be 0 < min <= max: a "
                    "look-alike with no contrast would be recorded as a hard negative but be invisible"
                )
        if self.lesion_contrast_spread[0] <= 0.0:
            raise SimulationError(
                f"lesion_contrast_spread {self.lesion_contrast_spread} must start above 0: a cluster "
                "with no contrast would be labelled but invisible"
            )
        if not (0.0 <= self.background_blur_probability <= 1.0):
            raise SimulationError("background_blur_probability must be in [0, 1]")
        for name in ("procedural_height_mm", "procedural_width_mm", "real_crop_height_mm", "real_crop_width_mm"):
            a, b = getattr(self, name)
            if not (20.0 <= a <= b):
                raise SimulationError(f"{name} {getattr(self, name)} must be >= 20 mm and ordered")


@dataclass
class SimulatedLesion:
    """Ground truth of one inserted cluster, in stored-pixel coordinates of the rendered image."""

    category: str  # "benign" or "malignant"
    box_px: tuple[float, float, float, float]  # [x0, y0, x1, y1], pixel-corner coordinates
    n_specks: int
    morphology: str
    distribution: str
    mu_calc_per_mm: float
    #: Boolean speck mask over the pixel window starting at ``mask_origin`` (row, col).
    speck_mask: np.ndarray
    mask_origin: tuple[int, int]
    #: Speck centres in mm (x, y) in the image frame, for size checks.
    speck_centres_mm: list[tuple[float, float]] = field(default_factory=list)

    @property
    def extent_mm(self) -> float:
        """Largest distance between speck centres: the cluster's physical size."""
        if len(self.speck_centres_mm) < 2:
            return 0.0
        pts = np.asarray(self.speck_centres_mm)
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        return float(d.max())


@dataclass
class SimulatedImageMeta:
    """What a writer needs to know about one rendered image besides its pixels."""

    spacing_mm: float
    laterality: str  # "L" or "R": chest wall at the left (L) or right (R) image edge
    view: str  # "CC" or "MLO"
    background: str  # "procedural" or "real:<folder>/<file>" (a crop of that mammogram)
    breast_mask: np.ndarray  # bool, True = breast tissue
    bits_stored: int = 16
    photometric: str = "MONOCHROME2"
    #: Hard negatives rendered into the image: dicts with "type" and "box_px" [x0, y0, x1, y1].
    hard_negatives: list = field(default_factory=list)
