"""Hard negatives: bright look-alikes of calcifications that are never annotated as lesions.

Each look-alike is a :class:`HardNegativeType` in the :data:`HARD_NEGATIVES` registry, as the
morphologies are in :mod:`MicrocalcAI.simulation.calcifications`: where it may sit (breast
interior, skin band, skin edge), how far it keeps from lesions, and a sampler that draws its
geometry and contrast at a given spot. A new look-alike is one sampler and one registry entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from MicrocalcAI.simulation.anatomy import MU_VESSEL_EXCESS
from MicrocalcAI.simulation.calcifications import speck_round
from MicrocalcAI.simulation.config import SimulatedLesion, SimulationConfig
from MicrocalcAI.simulation.geometry import Capsule, Ellipsoid, Shell, Speck, transform_speck
from MicrocalcAI.simulation.rendering import _pixel_box, render_speck

__all__ = [
    "HARD_NEGATIVES",
    "HARD_NEGATIVE_TYPES",
    "HardNegativeDraw",
    "HardNegativeSite",
    "HardNegativeType",
    "insert_hard_negatives",
]


@dataclass
class HardNegativeSite:
    """Where a look-alike is being drawn: its centre (mm) and what a sampler may need to know."""

    cx: float
    cy: float
    spacing_mm: float
    config: SimulationConfig
    #: Breast interior (at least the edge clearance from the skin), True = allowed.
    interior: np.ndarray
    #: The image's effective calcium attenuation (per mm) under the film chain; None under the
    #: detector chain, where look-alikes keep their own contrast ranges.
    calc_mu_per_mm: Optional[float] = None

    def calcium_mu(self, rng: np.random.Generator) -> float:
        """Attenuation per mm of a calcification-like look-alike: the film chain's, else the
        detector chain's benign range."""
        if self.calc_mu_per_mm is not None:
            spread = self.config.lookalike_contrast_spread
            if spread is None:  # look-alikes share the clusters' spread
                spread = self.config.lesion_contrast_spread
            return self.calc_mu_per_mm * rng.uniform(*spread)
        return rng.uniform(*self.config.mu_calc_benign)


@dataclass
class HardNegativeDraw:
    """One drawn look-alike: geometry, stage of the imaging chain and contrast."""

    specks: list[Speck]
    #: Added after the detector blur (film defects, impulse noise) instead of before it.
    after_blur: bool
    #: Attenuation per mm of thickness (or per unit coverage when ``flat``).
    scale: float
    #: Use pixel coverage instead of thickness (flat objects: discs, impulses).
    flat: bool = False
    extra: dict = field(default_factory=dict)
    #: The look-alike's own box (mm); None = the specks' bounds plus 0.3 mm.
    box_mm: Optional[tuple[float, float, float, float]] = None


HardNegativeSampler = Callable[[np.random.Generator, HardNegativeSite], Optional[HardNegativeDraw]]


@dataclass(frozen=True)
class HardNegativeType:
    """A kind of look-alike: where it sits, its isolation from lesions, its sampler and source."""

    site: str  # "interior", "skin" (within 2.5 mm of the skin) or "edge" (on the skin line)
    sample: HardNegativeSampler  # returns None when the draw does not fit (another spot is tried)
    source: str
    #: Only on film backgrounds (defects of the film itself).
    film_only: bool = False
    #: Gap kept from lesion and other look-alike boxes (mm).
    isolation_mm: float = 2.0


def _isolated_speck(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    sp = speck_round(rng, rng.uniform(0.2, 0.8))
    return HardNegativeDraw(
        [transform_speck(sp, 0.0, site.cx, site.cy)], False, rng.uniform(*site.config.mu_calc_benign)
    )


def _skin_pore(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    d = rng.uniform(0.4, 1.2)
    specks = [Speck([Shell(site.cx, site.cy, d / 2, d / 2 * rng.uniform(0.4, 0.7))])]
    return HardNegativeDraw(specks, False, site.calcium_mu(rng) * rng.uniform(0.6, 1.0))


def _skin_marker(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    cx, cy = site.cx, site.cy
    if rng.random() < 0.6:
        d = rng.uniform(1.5, 3.0)
        return HardNegativeDraw(
            [Speck([Ellipsoid(cx, cy, d / 2, d / 2, d / 2)])], False, rng.uniform(4.0, 6.0) / d, extra={"subtype": "bb"}
        )
    d = rng.uniform(3.0, 6.0)
    return HardNegativeDraw(
        [Speck([Ellipsoid(cx, cy, d / 2, d / 2, 0.05)])], False, rng.uniform(4.0, 6.0), True, {"subtype": "disc"}
    )


def _vessel_crossing(rng: np.random.Generator, site: HardNegativeSite) -> Optional[HardNegativeDraw]:
    cx, cy, sp = site.cx, site.cy, site.spacing_mm
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
    # The look-alike is the crossing itself, not the whole vessels, but both vessels must lie
    # inside the breast.
    shape = site.interior.shape
    h_mm, w_mm = shape[0] * sp, shape[1] * sp
    b = np.array([s.bounds() for s in specks])
    if not all(
        0 <= v[0] < w_mm
        and 0 <= v[1] < h_mm
        and site.interior[min(int(v[1] / sp), shape[0] - 1), min(int(v[0] / sp), shape[1] - 1)]
        for v in b[:, :2].tolist() + b[:, 2:].tolist()
    ):
        return None
    rmax = max(p.r for s in specks for p in s.primitives)  # type: ignore[union-attr]
    box = (cx - 2 * rmax, cy - 2 * rmax, cx + 2 * rmax, cy + 2 * rmax)
    return HardNegativeDraw(specks, False, MU_VESSEL_EXCESS, box_mm=box)


def _film_scratch(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    cx, cy = site.cx, site.cy
    a, length, wdt = rng.uniform(0, math.pi), rng.uniform(5.0, 40.0), rng.uniform(0.03, 0.12)
    specks = [Speck([Capsule(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), wdt / 2)])]
    return HardNegativeDraw(specks, True, rng.uniform(0.15, 0.5) / wdt)


def _noise_spike(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    sp = site.spacing_mm
    px = int(rng.integers(1, 3)) * sp
    x0, y0 = math.floor(site.cx / sp) * sp, math.floor(site.cy / sp) * sp
    specks = [Speck([Capsule(x0 + px / 2, y0 + px / 2, x0 + px / 2, y0 + px / 2, px / 2)])]
    return HardNegativeDraw(specks, True, rng.uniform(0.1, 0.4), True)


# --- real-film clutter (film preset). Artefact kinds from Hogge et al., "Quality assurance in
# mammography: artifact analysis", RadioGraphics 19:503 (1999): dust and lint on screens (white
# specks that mimic calcifications), emulsion defects, processor marks; and from issue 10's
# diagnosis: 68% of false marks on real film sat on isolated 1-3 pixel bright dots as bright as
# calcifications. Their contrast is that of calcium of 0.05-0.4 mm under the same film chain
# (calcification-like by construction); sizes are judgement calls. Film defects come after
# all blur of the imaging chain: they are on the film the digitiser reads.


def _film_calcium_equivalent(
    rng: np.random.Generator, site: HardNegativeSite, thickness_mm: tuple[float, float]
) -> float:
    return site.calcium_mu(rng) * rng.uniform(*thickness_mm)


def _dust(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    """Dust or lint on the screen: a sharp, flat, roughly round speck of 0.05-0.3 mm."""
    d = max(rng.uniform(0.05, 0.3), site.spacing_mm * 0.5)
    e = Ellipsoid(site.cx, site.cy, d / 2, d / 2 * rng.uniform(0.6, 1.0), 0.05, rng.uniform(0, math.pi))
    return HardNegativeDraw([Speck([e])], True, _film_calcium_equivalent(rng, site, (0.1, 0.4)), True)


def _emulsion_spot(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    """An emulsion defect (pick-off, pressure mark): 2-3 overlapping flat lobes within 0.1-0.5 mm."""
    r = rng.uniform(0.05, 0.25)
    lobes: list = []
    for _ in range(int(rng.integers(2, 4))):
        off = rng.normal(0.0, 0.4 * r, 2)
        a = r * rng.uniform(0.5, 0.9)
        lobes.append(
            Ellipsoid(
                site.cx + float(off[0]),
                site.cy + float(off[1]),
                a,
                a * rng.uniform(0.5, 1.0),
                0.05,
                rng.uniform(0, math.pi),
            )
        )
    return HardNegativeDraw([Speck(lobes)], True, _film_calcium_equivalent(rng, site, (0.08, 0.3)), True)


def _pixel_outlier(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    """An isolated bright dot of 1-3 connected output pixels (grain clump, dust on the
    digitiser glass), as bright as a calcification and sharp."""
    sp = site.spacing_mm
    c0, r0 = math.floor(site.cx / sp), math.floor(site.cy / sp)
    cells = [(r0, c0)]
    for _ in range(int(rng.integers(0, 3))):
        dr, dc = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1))[int(rng.integers(5))]
        cells.append((cells[-1][0] + dr, cells[-1][1] + dc))
    specks = [Speck([Ellipsoid((c + 0.5) * sp, (r + 0.5) * sp, sp * 0.5, sp * 0.5, 0.05)]) for r, c in cells]
    amplitude = _film_calcium_equivalent(rng, site, (0.05, 0.3))
    return HardNegativeDraw(specks, True, amplitude / (math.pi / 4), True, {"subtype": f"{len(cells)}px"})


def _processing_spot(rng: np.random.Generator, site: HardNegativeSite) -> HardNegativeDraw:
    """A processor artefact: a drying / chemical spot with a brighter rim, 0.4-2 mm."""
    d = rng.uniform(0.4, 2.0)
    ring = Shell(site.cx, site.cy, d / 2, d / 2 * rng.uniform(0.7, 0.9))
    return HardNegativeDraw([Speck([ring])], True, _film_calcium_equivalent(rng, site, (0.05, 0.2)) / (0.25 * d))


#: Structures that look like calcifications but are not lesions, by name (see
#: :func:`insert_hard_negatives`). Sizes without a source are judgement calls and say so.
HARD_NEGATIVES: dict[str, HardNegativeType] = {
    "isolated_speck": HardNegativeType(
        "interior",
        _isolated_speck,
        "one round calcification 0.2-0.8 mm (judgement), benign contrast; >= 10 mm from lesions: BI-RADS "
        "needs several calcifications within 1 cm for a group, so one speck that far away is isolated",
        isolation_mm=10.0,
    ),
    "skin_pore": HardNegativeType(
        "skin",
        _skin_pore,
        "lucent-centred (ring) dermal calcification 0.4-1.2 mm (judgement; BI-RADS 5th describes skin "
        "calcifications as lucent-centred and polygonal) within 2.5 mm of the skin",
    ),
    "skin_marker": HardNegativeType(
        "edge",
        _skin_marker,
        "metal on the skin line, a BB of 1.5-3 mm diameter or a flat disc of 3-6 mm (commercial mole / "
        "nipple markers; sizes judgement); metal saturates (4-6 nats added)",
    ),
    "vessel_crossing": HardNegativeType(
        "interior",
        _vessel_crossing,
        "two non-calcified vessels (radius 0.4-1.2 mm, blood excess 0.034/mm, Johns & Yaffe 1987) crossing "
        "at 25-90 degrees; the doubled path length makes a small bright spot",
    ),
    "film_scratch": HardNegativeType(
        "interior",
        _film_scratch,
        "a 0.03-0.12 mm wide, 5-40 mm line of missing emulsion, +0.15-0.5 nats, not blurred by the "
        "detector (judgement)",
        film_only=True,
    ),
    "noise_spike": HardNegativeType(
        "interior",
        _noise_spike,
        "a 1-2 pixel impulse (dust, detector defect) of +0.1-0.4 nats, unblurred (judgement)",
    ),
    "dust": HardNegativeType(
        "interior",
        _dust,
        "dust or lint on the screen (Hogge et al., RadioGraphics 19:503, 1999): a sharp flat speck "
        "0.05-0.3 mm at the contrast of 0.1-0.4 mm of calcium under the same chain",
    ),
    "emulsion_spot": HardNegativeType(
        "interior",
        _emulsion_spot,
        "emulsion defect (Hogge et al. 1999): 2-3 flat lobes within 0.1-0.5 mm at the contrast of "
        "0.08-0.3 mm of calcium",
    ),
    "pixel_outlier": HardNegativeType(
        "interior",
        _pixel_outlier,
        "1-3 connected bright output pixels as bright as 0.05-0.3 mm of calcium, unblurred: 68% of "
        "false marks on real film (issue 10)",
    ),
    "processing_spot": HardNegativeType(
        "interior",
        _processing_spot,
        "processor drying / chemical spot (Hogge et al. 1999): a 0.4-2 mm ring, faint",
        film_only=True,
    ),
}

#: The registry's names, in registry order.
HARD_NEGATIVE_TYPES = tuple(HARD_NEGATIVES)


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
    calc_mu_per_mm: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Bright look-alikes that are NOT lesions: ``(pre_psf, post_psf, records)``.

    Types are drawn uniformly from ``config.hard_negative_types`` (a name listed twice is
    drawn twice as often); film-only types are skipped when ``film`` is false. Records are
    ``{"type", "box_px"[, "subtype"]}`` in stored pixels; each box keeps its type's
    ``isolation_mm`` from every lesion box and earlier look-alike. See :data:`HARD_NEGATIVES`
    for each type and its source. ``calc_mu_per_mm`` (film chain) sets the contrast of the
    calcification-like ones.
    """
    pre = np.zeros(shape)
    post = np.zeros(shape)
    records: list[dict] = []
    h_mm, w_mm = shape[0] * spacing_mm, shape[1] * spacing_mm
    taken: list[tuple[float, float, float, float]] = [
        (les.box_px[0] * spacing_mm, les.box_px[1] * spacing_mm, les.box_px[2] * spacing_mm, les.box_px[3] * spacing_mm)
        for les in lesions
    ]
    clearance = max(1, int(round(config.edge_clearance_mm / spacing_mm)))
    interior = ndimage.binary_erosion(breast_mask, iterations=clearance, border_value=0)
    border = max(1, int(round(5.0 / spacing_mm)))
    inner_band = ndimage.binary_erosion(breast_mask, iterations=max(1, int(round(2.5 / spacing_mm))), border_value=1)
    skin_band = breast_mask & ~inner_band
    skin_band[:border], skin_band[-border:], skin_band[:, :border], skin_band[:, -border:] = False, False, False, False
    edge = breast_mask & ~ndimage.binary_erosion(breast_mask, iterations=1, border_value=1)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = False, False, False, False
    sites = {"interior": np.argwhere(interior), "skin": np.argwhere(skin_band), "edge": np.argwhere(edge)}
    types = [t for t in config.hard_negative_types if film or not HARD_NEGATIVES[t].film_only]
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
        spec = HARD_NEGATIVES[kind]
        cand = sites[spec.site]
        if len(cand) == 0:
            continue
        for _attempt in range(30):
            r, c = cand[int(rng.integers(len(cand)))]
            cx, cy = (c + rng.uniform()) * spacing_mm, (r + rng.uniform()) * spacing_mm
            draw = spec.sample(rng, HardNegativeSite(cx, cy, spacing_mm, config, interior, calc_mu_per_mm))
            if draw is None:
                continue
            box = draw.box_mm
            if box is None:
                b = np.array([s.bounds() for s in draw.specks])
                m = 0.3
                box = (
                    float(b[:, 0].min() - m),
                    float(b[:, 1].min() - m),
                    float(b[:, 2].max() + m),
                    float(b[:, 3].max() + m),
                )
            if box[0] < 0 or box[1] < 0 or box[2] > w_mm or box[3] > h_mm:
                continue
            if _overlaps(box, taken, spec.isolation_mm):
                continue
            for s in draw.specks:
                add(post if draw.after_blur else pre, s, draw.scale, flat=draw.flat)
            taken.append(box)
            records.append({"type": kind, "box_px": list(_pixel_box(box, spacing_mm, shape)), **draw.extra})
            break
    return pre, post, records
