"""Calcification morphologies and their distributions: the speck shape samplers, the speck
position samplers, the basic benign/malignant cluster types and the BI-RADS 5th-ed. table.

Sources. Morphology definitions, size thresholds and distributions: ACR BI-RADS Atlas, 5th ed.
(Sickles, D'Orsi, Bassett et al., 2013), mammography "calcifications" section. Positive
predictive values that justify the benign / suspicious split: Bent et al., AJR 194:1378 (2010)
(amorphous 20%, coarse heterogeneous 13%, fine pleomorphic 29%, fine linear(-branching) 70%)
and Burnside et al., Radiology 242:388 (2007). Typically-benign morphologies are labelled
"benign"; the four suspicious ones "malignant" (the detector has only these two classes).
Where the atlas gives no number (lengths, upper sizes, counts per lesion, relative calcium
density), the value is a JUDGEMENT CALL and the table says so."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from MicrocalcAI.simulation.config import SimulationError
from MicrocalcAI.simulation.geometry import (
    Capsule,
    ClusterGeometry,
    Ellipsoid,
    Meniscus,
    Primitive,
    Shell,
    Speck,
    Tube,
    transform_speck,
)

__all__ = [
    "speck_round",
    "speck_coarse",
    "speck_popcorn",
    "speck_rim",
    "speck_pleomorphic",
    "speck_fine_linear",
    "SpeckSampler",
    "SPECK_SHAPES",
    "positions_grouped",
    "positions_linear",
    "positions_segmental",
    "positions_scattered",
    "cluster_malignant",
    "cluster_benign",
    "ClusterSampler",
    "CLUSTER_TYPES",
    "MorphologySpec",
    "MORPHOLOGIES",
    "BIOPSIED_CLUSTER_MORPHOLOGIES",
    "BIOPSIED_DISTRIBUTIONS",
    "morphology_selection",
    "DISTRIBUTION_EXTENT_MM",
    "speck_irregular",
    "speck_fine_pleomorphic",
    "speck_popcorn_lobed",
    "speck_eggshell",
    "speck_dystrophic",
    "speck_rod",
    "speck_milk_of_calcium",
    "build_morphology_cluster",
    "cluster_birads",
]


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


#: Morphologies of the calcification clusters that get biopsied, hence of the clusters behind
#: real-film figures such as issue 10's (peak contrast 0.108 of the breast's grey range,
#: measured on 25 biopsy-graded clusters): the four suspicious ones (BI-RADS 4/5; Bent et al.
#: 2010) plus punctate, the typically benign morphology that is biopsied when new, increasing
#: or clustered (BI-RADS 5th ed.). Large benign calcifications (popcorn, rim, rod-like,
#: dystrophic, vascular, milk of calcium) are left out: they are diagnosed on sight and, being
#: millimetres of calcium, are far brighter than a biopsied cluster's specks.
BIOPSIED_CLUSTER_MORPHOLOGIES: tuple[str, ...] = (
    "punctate",
    "amorphous",
    "coarse_heterogeneous",
    "fine_pleomorphic",
    "fine_linear_branching",
)


#: Distributions of the calcification clusters that get biopsied: grouped, linear and segmental,
#: the distributions BI-RADS (5th ed.) lists as raising suspicion, where regional and diffuse
#: spreads (most of the simulator's punctate clusters) are read as benign, punctate and
#: amorphous ones especially, and are not biopsied. Issue 10's held-out clusters are biopsied.
BIOPSIED_DISTRIBUTIONS: tuple[str, ...] = ("grouped", "linear", "segmental")


def morphology_selection(names: Sequence[str]) -> tuple[str, ...]:
    """The ``birads_morphologies`` a command-line list stands for: ``["all"]`` (or nothing) is
    every morphology, spelled ``()`` as the simulator's config has it; anything else must be
    known. One spelling for every tool that takes such a list, so that "all" means the same."""
    if isinstance(names, str):
        raise ValueError(f"morphologies must be a list of names, got the string {names!r}")
    chosen = tuple(names)
    if chosen in ((), ("all",)):
        return ()
    unknown = sorted(set(chosen) - set(MORPHOLOGIES))
    if unknown:
        raise ValueError(f"unknown morphologies {unknown}; known: {sorted(MORPHOLOGIES)} or 'all'")
    return chosen


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
    rng: np.random.Generator,
    morphology: str,
    *,
    distribution: Optional[str] = None,
    view: str = "CC",
    allowed_distributions: Sequence[str] = (),
) -> ClusterGeometry:
    """A lesion of one BI-RADS morphology (see :data:`MORPHOLOGIES`) in one of its distributions
    (drawn by their weights; among ``allowed_distributions`` only, when the morphology has any
    of them)."""
    spec = MORPHOLOGIES[morphology]
    if distribution is None:
        choices = [(d, p) for d, p in spec.distributions if d in allowed_distributions] or list(spec.distributions)
        names = [d for d, _ in choices]
        w = np.array([p for _, p in choices], float)
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
    rng: np.random.Generator,
    category: str,
    *,
    view: str = "CC",
    allowed: Sequence[str] = (),
    allowed_distributions: Sequence[str] = (),
) -> ClusterGeometry:
    """A BI-RADS lesion of ``category`` (benign = typically benign morphology, malignant =
    suspicious). When ``allowed`` holds no morphology of that category, the category follows
    the morphology drawn from ``allowed``; ``allowed_distributions`` as in
    :func:`build_morphology_cluster`."""
    names = [m for m, sp in MORPHOLOGIES.items() if sp.category == category and (not allowed or m in allowed)]
    if not names:
        names = [m for m in MORPHOLOGIES if not allowed or m in allowed]
    w = np.array([MORPHOLOGIES[m].weight for m in names], float)
    morphology = names[int(rng.choice(len(names), p=w / w.sum()))]
    return build_morphology_cluster(rng, morphology, view=view, allowed_distributions=allowed_distributions)
