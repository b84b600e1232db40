"""Helpers for test_simulate.py: small simulated datasets and image measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from MicrocalcAI.simulate import RealBackgroundLibrary, SimulationConfig, read_display_image, simulate_dataset


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
