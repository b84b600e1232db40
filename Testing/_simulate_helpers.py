"""Helpers for test_simulate.py: small simulated datasets and image measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from MicrocalcAI.simulation.backgrounds import RealBackgroundLibrary
from MicrocalcAI.simulation.config import SimulationConfig
from MicrocalcAI.simulation.simulate import simulate_dataset
from MicrocalcAI.simulation.writers import read_display_image


def small_config(**overrides) -> SimulationConfig:
    """A fast config: small images, every image with at least one cluster, both photometrics."""
    base = dict(
        n_images=8,
        seed=7,
        real_fraction=0.5,
        clusters_per_image=(1, 3),
        monochrome1_fraction=0.5,
        procedural_height_mm=(70.0, 80.0),
        procedural_width_mm=(55.0, 65.0),
        real_crop_height_mm=(70.0, 80.0),
        real_crop_width_mm=(55.0, 65.0),
    )
    base.update(overrides)
    return SimulationConfig(**base)


def make_dataset(out_dir: Path, library: RealBackgroundLibrary, **overrides) -> Path:
    return simulate_dataset(out_dir, small_config(**overrides), backgrounds=library)


def tophat(image: np.ndarray, spacing_mm: float, size_mm: float = 2.0) -> np.ndarray:
    """White top-hat: what is brighter than its surroundings over ~``size_mm`` (i.e. specks)."""
    size = max(3, int(round(size_mm / spacing_mm)) | 1)
    return ndimage.white_tophat(image, size=size)


def robust_sigma(values: np.ndarray) -> float:
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def display(path: Path) -> np.ndarray:
    return read_display_image(path)


def speck_extent_mm(speck, spacing_mm: float) -> float:
    """Largest dimension (mm) of one speck as rendered: max distance between the centres of its
    mask pixels plus one pixel (the pixel-limited Feret diameter)."""
    from MicrocalcAI.simulation.rendering import render_speck, speck_mask_from_coverage

    _, cover, _ = render_speck(speck, spacing_mm)
    rc = np.argwhere(speck_mask_from_coverage(cover)).astype(float)
    if len(rc) > 400:  # long rods: the convex extremes are enough
        rc = rc[
            np.unique(
                np.concatenate(
                    [
                        np.argmin(rc, 0),
                        np.argmax(rc, 0),
                        np.argmin(rc.sum(1))[None],
                        np.argmax(rc.sum(1))[None],
                        np.argmin(rc[:, 0] - rc[:, 1])[None],
                        np.argmax(rc[:, 0] - rc[:, 1])[None],
                    ]
                )
            )
        ]
    d = np.sqrt(((rc[:, None, :] - rc[None, :, :]) ** 2).sum(-1)).max() if len(rc) > 1 else 0.0
    return float((d + 1.0) * spacing_mm)


def realistic_small(**overrides) -> SimulationConfig:
    """The realistic preset on small images (fast tests)."""
    base = dict(
        n_images=3,
        seed=11,
        clusters_per_image=(1, 2),
        procedural_height_mm=(60.0, 70.0),
        procedural_width_mm=(50.0, 60.0),
        real_crop_height_mm=(60.0, 70.0),
        real_crop_width_mm=(50.0, 60.0),
        spacing_mm=(0.1, 0.2),
    )
    base.update(overrides)
    return SimulationConfig.realistic(**base)
