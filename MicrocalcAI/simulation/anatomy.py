"""Procedural breast anatomy: outline, thickness, skin, pectoral muscle, power-law parenchyma and
the curvilinear structures (ducts, vessels, Cooper's ligaments)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
from scipy import ndimage

from MicrocalcAI.simulation.config import MU_FAT, MU_GLAND, MU_MUSCLE, MU_SKIN, SimulationConfig

__all__ = [
    "power_law_noise",
    "procedural_breast",
    "MU_VESSEL_EXCESS",
    "curvilinear_structures",
]


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
