"""The film imaging chain (``SimulationConfig(imaging_chain="film")``): calcifications as screen-film
mammography and a film digitiser show them.

Why: the default model 0.2.1, trained on the detector chain, learned "sharp, bright speck". On
held-out real film the clusters' peak contrast was 0.45x what the detector chain inserts (0.108
vs 0.242 of the breast's grey range) and real specks were blurred with sigma ~0.07-0.15 mm
where it used 0.03-0.06 mm (issue 10's diagnosis). This chain draws both from physics instead:

* **Calcium contrast.** A calcification of thickness t adds ``(mu_HA(E) * rho_rel - mu_tissue(E)) * t``
  nats of primary attenuation. Calcium hydroxyapatite Ca10(PO4)6(OH)2 (density 3.06-3.16 g/cm^3)
  has mu/rho ~ 7 cm^2/g at 20 keV by the mixture rule on the NIST XCOM elemental cross sections
  (Berger et al., NIST XCOM; Ca ~ 13.7, P ~ 5.7, O ~ 0.84 cm^2/g), i.e. mu ~ 2.2/mm
  (:data:`MU_HYDROXYAPATITE_20KEV`). Both calcium and tissue attenuation fall roughly as E^-3 in
  the photoelectric-dominated mammographic range, so over the effective energies of Mo/Mo,
  Mo/Rh and W/Rh spectra at 25-32 kVp, 17-22 keV (Johns & Yaffe, Phys. Med. Biol. 32:675,
  1987, for tissue; Haus & Yaffe, RadioGraphics 20:1135, 2000, for spectra), mu_HA spans ~1.6-3.3/mm.
  ``rho_rel`` is the speck's relative calcium density from the morphology table.
* **Scatter.** Contrast is divided by 1 + SPR, the scatter-to-primary ratio, drawn over
  0.15-0.8: Boone et al., Med. Phys. 27:1818 (2000) give 0.3-1.0 without a grid for 2-8 cm
  breasts; a grid removes most of it (lower bound), thick breasts and poor grids keep more
  (upper bound, judgement).
* **Film gradient.** Film turns log exposure into optical density through its characteristic
  (H&D) curve; the gradient, hence the contrast, is highest mid-curve and falls in the toe, where
  dense tissue lies (Haus & Yaffe 2000). With a logistic curve between Dmin 0.2 and Dmax 4.0
  (mammography film; ACR QC: base + fog <= 0.2, Dmax ~4) the relative gradient is
  ``4 (D - Dmin)(Dmax - D) / (Dmax - Dmin)^2`` (:func:`film_gradient`). Fatty breast tissue is
  exposed to OD 1.6-2.4 (ACR phantom background OD >= 1.4, typical 1.6-2.0), the densest tissue
  to OD 0.45-1.0 (judgement), so a calcification in dense tissue keeps about 0.25-0.7 of its contrast.
  Together with energy and scatter, the effective attenuation ranges about 0.3-3/mm, from about
  0.2x to 1.3x the detector chain's 1.2-2.6/mm, and is independent of the lesion's class.
* **Blur and sampling.** Specks are rendered at a fine spacing (the output spacing divided by a
  whole number, 0.025-0.05 mm), blurred by one Gaussian of sigma 0.03-0.15 mm standing for the
  focal spot, screen and digitiser optics together, then area-averaged onto the output pixels,
  which is what a digitiser's aperture does (DDSM digitisers: Lumisys LS85 50 um, Howtek 960
  43.5 um, DBA M2100 42 um apertures, 12-16 bit; Heath et al., IWDM 2000). The sigma range is
  the blur measured on real film (0.07-0.15 mm, issue 10) widened down to 0.03 mm for sharp
  digital detectors; an aperture of side a alone has the variance of sigma = a / sqrt(12).
  Part of the blur is sometimes applied to the whole image, background included (blur
  augmentation of real films whose own blur is unknown).
* **Grain and quantisation.** Screen-film noise is quantum mottle plus film grain (Nishikawa &
  Yaffe, Med. Phys. 12:32, 1985); mottle is correlated over the screen blur, so averaged to
  coarser pixels it falls more slowly than white noise: here as the square root of the
  aperture side (judgement between white grain and fully correlated mottle), 0.015-0.04 nats
  at 0.05 mm. Calibrated on the 8 CBIS films: their high-frequency noise at 0.1 mm (robust
  sigma of the 3x3 median-filter residual) is 0.006-0.011 of the breast's grey range.
  A random display LUT (gamma 0.75-1.33, judgement) stands for the spread of film and digitiser
  response curves, then the image is quantised to 8-16 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from MicrocalcAI.simulation.config import MU_GLAND, SimulationConfig
from MicrocalcAI.simulation.delivery import block_mean
from MicrocalcAI.simulation.geometry import Speck
from MicrocalcAI.simulation.rendering import render_speck, speck_mask_from_coverage

__all__ = [
    "MU_HYDROXYAPATITE_20KEV",
    "FilmChain",
    "apply_lut",
    "calcification_mu_per_mm",
    "draw_film_chain",
    "film_gradient",
    "render_specks_film",
]

#: Linear attenuation of calcium hydroxyapatite at 20 keV, per mm (NIST XCOM mixture rule,
#: density 3.06 g/cm^3; see the module docstring).
MU_HYDROXYAPATITE_20KEV = 2.2
#: Characteristic-curve limits of mammography film (optical density).
FILM_DMIN, FILM_DMAX = 0.2, 4.0


def calcification_mu_per_mm(energy_kev: float, scatter_to_primary: float) -> float:
    """Effective attenuation (per mm of calcium) of a calcification against glandular tissue:
    photoelectric E^-3 scaling from 20 keV, divided by 1 + SPR."""
    scale = (20.0 / energy_kev) ** 3
    return (MU_HYDROXYAPATITE_20KEV - MU_GLAND) * scale / (1.0 + scatter_to_primary)


def film_gradient(od: np.ndarray) -> np.ndarray:
    """Gradient of a logistic characteristic curve at optical density ``od``, relative to its
    mid-curve maximum: low in the toe (dense tissue) and the shoulder."""
    span = FILM_DMAX - FILM_DMIN
    od = np.clip(od, FILM_DMIN, FILM_DMAX)
    return np.clip(4.0 * (od - FILM_DMIN) * (FILM_DMAX - od) / (span * span), 0.05, 1.0)


@dataclass
class FilmChain:
    """One image's draw of the film chain (every value in physical units)."""

    spacing_mm: float
    #: Specks are rendered at ``spacing_mm / fine_factor``.
    fine_factor: int
    energy_kev: float
    scatter_to_primary: float
    #: Effective calcium attenuation (per mm) at the film's maximum gradient.
    mu_per_mm: float
    #: Total blur sigma of calcifications (mm) and the part applied to the whole image.
    sigma_total_mm: float
    sigma_background_mm: float
    #: Relative film gradient on the output grid (1 = mid-curve, lower in dense tissue).
    gradient: np.ndarray
    grain_sigma: float
    lut_gamma: float

    @property
    def fine_mm(self) -> float:
        return self.spacing_mm / self.fine_factor

    @property
    def sigma_speck_mm(self) -> float:
        """Blur applied to calcifications before the whole-image part: totals ``sigma_total_mm``."""
        return math.sqrt(max(self.sigma_total_mm**2 - self.sigma_background_mm**2, 0.0))

    def gradient_at(self, x_mm: float, y_mm: float) -> float:
        r = int(np.clip(y_mm / self.spacing_mm, 0, self.gradient.shape[0] - 1))
        c = int(np.clip(x_mm / self.spacing_mm, 0, self.gradient.shape[1] - 1))
        return float(self.gradient[r, c])


def draw_film_chain(
    rng: np.random.Generator, config: SimulationConfig, spacing_mm: float, atten: np.ndarray, mask: np.ndarray
) -> FilmChain:
    """Draw one image's film chain; the film gradient map follows the background's density.

    The breast's smoothed attenuation (2 mm) is mapped linearly from its 2nd percentile (fatty,
    OD ``film_od_fat``) to its 98th (dense, OD ``film_od_dense``)."""
    fine_factor = max(1, int(math.ceil(spacing_mm / config.fine_render_mm - 1e-9)))
    energy = rng.uniform(*config.photon_energy_kev)
    spr = rng.uniform(*config.scatter_to_primary)
    sigma_total = rng.uniform(*config.film_blur_sigma_mm)
    sigma_bg = 0.0
    if rng.random() < config.background_blur_probability:
        sigma_bg = sigma_total * math.sqrt(rng.uniform(*config.background_blur_share))
    od_fat, od_dense = rng.uniform(*config.film_od_fat), rng.uniform(*config.film_od_dense)
    smooth = ndimage.gaussian_filter(atten, 2.0 / spacing_mm)
    inside = smooth[mask] if mask.any() else smooth.ravel()
    lo, hi = np.percentile(inside, [2, 98])
    u = np.clip((smooth - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    gradient = film_gradient(od_fat + u * (od_dense - od_fat)) / float(film_gradient(np.array(od_fat)))
    return FilmChain(
        spacing_mm=spacing_mm,
        fine_factor=fine_factor,
        energy_kev=energy,
        scatter_to_primary=spr,
        mu_per_mm=calcification_mu_per_mm(energy, spr),
        sigma_total_mm=sigma_total,
        sigma_background_mm=sigma_bg,
        gradient=np.clip(gradient, 0.05, 1.0).astype(np.float32),
        grain_sigma=rng.uniform(*config.film_grain_sigma) * min(1.0, math.sqrt(0.05 / spacing_mm)),
        lut_gamma=math.exp(rng.uniform(math.log(config.lut_gamma[0]), math.log(config.lut_gamma[1]))),
    )


def render_specks_film(
    specks: list[Speck],
    scales: list[float],
    chain: FilmChain,
    shape: tuple[int, int],
    window: Optional[tuple[int, int, int, int]] = None,
) -> tuple[np.ndarray, tuple[int, int], list[tuple[np.ndarray, tuple[int, int]]]]:
    """Specks rendered at the fine spacing, blurred by the chain's calcification blur and
    area-averaged onto the output pixels.

    ``scales`` are attenuations per mm of thickness, one per speck. Returns ``(delta, (row0,
    col0), masks)``: the added attenuation over an output-pixel window, its origin, and each
    speck's mask (at least a quarter of a pixel covered, as the detector chain counts them)
    with its own origin."""
    k = chain.fine_factor
    fine = chain.fine_mm
    pad = int(math.ceil(4.0 * chain.sigma_speck_mm / chain.spacing_mm)) + 1
    if window is None:
        b = np.array([s.bounds() for s in specks])
        window = (
            int(math.floor(b[:, 1].min() / chain.spacing_mm)),
            int(math.floor(b[:, 0].min() / chain.spacing_mm)),
            int(math.ceil(b[:, 3].max() / chain.spacing_mm)),
            int(math.ceil(b[:, 2].max() / chain.spacing_mm)),
        )
    r0 = max(window[0] - pad, 0)
    c0 = max(window[1] - pad, 0)
    r1 = min(window[2] + pad, shape[0])
    c1 = min(window[3] + pad, shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.zeros((0, 0)), (r0, c0), []
    canvas = np.zeros(((r1 - r0) * k, (c1 - c0) * k))
    masks: list[tuple[np.ndarray, tuple[int, int]]] = []
    for speck, scale in zip(specks, scales):
        thick, cover, (fr0, fc0) = render_speck(speck, fine)
        # Align the speck's fine window to whole output pixels so that its coverage averages
        # onto the output grid exactly.
        ar0, ac0 = (fr0 // k) * k, (fc0 // k) * k
        hh = int(math.ceil((fr0 + thick.shape[0] - ar0) / k)) * k
        ww = int(math.ceil((fc0 + thick.shape[1] - ac0) / k)) * k
        t_al = np.zeros((hh, ww))
        c_al = np.zeros((hh, ww))
        t_al[fr0 - ar0 : fr0 - ar0 + thick.shape[0], fc0 - ac0 : fc0 - ac0 + thick.shape[1]] = thick
        c_al[fr0 - ar0 : fr0 - ar0 + cover.shape[0], fc0 - ac0 : fc0 - ac0 + cover.shape[1]] = cover
        out_r0, out_c0 = ar0 // k, ac0 // k
        masks.append((speck_mask_from_coverage(block_mean(c_al, k)), (out_r0, out_c0)))
        # Paste into the canvas, clipped to it.
        cr0, cc0 = ar0 - r0 * k, ac0 - c0 * k
        sr0, sc0 = max(0, -cr0), max(0, -cc0)
        er, ec = min(hh, canvas.shape[0] - cr0), min(ww, canvas.shape[1] - cc0)
        if er > sr0 and ec > sc0:
            canvas[cr0 + sr0 : cr0 + er, cc0 + sc0 : cc0 + ec] += scale * t_al[sr0:er, sc0:ec]
    sigma_fine = chain.sigma_speck_mm / fine
    if sigma_fine > 0.05:
        canvas = ndimage.gaussian_filter(canvas, sigma_fine, mode="constant")
    return block_mean(canvas, k), (r0, c0), masks


def apply_lut(atten: np.ndarray, full_scale: float, gamma: float) -> np.ndarray:
    """A gamma display LUT over the stored range (monotone; 1 leaves the image unchanged)."""
    return full_scale * np.clip(atten / full_scale, 0.0, 1.0) ** gamma
