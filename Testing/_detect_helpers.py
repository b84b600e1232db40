"""Shared builders for the model / weights / detect tests (small sizes, real torch)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from MicrocalcAI.core.detect.manifest import ModelSpec
from MicrocalcAI.core.detect.network import DetectorConfig, build_detector
from MicrocalcAI.core.detect.weights import save_weights
from MicrocalcAI.core.records import CanonicalImage, CanonicalTransform

#: The bundled model 0.2.1: no calibration, no OOD reference, trained on the basic and realistic
#: simulators' sharp clusters. For tests that need a plain entry or those images' clusters found.
PLAIN_MODEL = "microcalcai-sim-mobilenet_v2"

SMALL_TILE = 256
SMALL_OVERLAP = 64


@cache
def _cached_detector(backbone: str, pretrained: bool, tile: int) -> tuple[torch.nn.Module, DetectorConfig]:
    torch.manual_seed(0)
    return build_detector(backbone, tile_size=tile, pretrained_backbone=pretrained)


def small_detector(
    backbone: str = "mobilenet_v2", *, pretrained: bool = False, tile: int = SMALL_TILE
) -> torch.nn.Module:
    """A deterministic detector in eval mode; cached per arguments (tests must not mutate it)."""
    model = _cached_detector(backbone, pretrained, tile)[0]
    model.eval()
    return model


def small_detector_config(backbone: str = "mobilenet_v2", *, tile: int = SMALL_TILE) -> DetectorConfig:
    """The build configuration of :func:`small_detector` (what its saved weights record)."""
    return _cached_detector(backbone, False, tile)[1]


def small_spec(tmp_dir: Path, model: torch.nn.Module, backbone: str = "mobilenet_v2", **overrides) -> ModelSpec:
    """Save ``model`` (a mobilenet_v2 :func:`small_detector`) into ``tmp_dir`` and return a
    manifest entry that points at it; ``backbone`` is what the entry claims."""
    path = Path(tmp_dir) / "detector.safetensors"
    digest = save_weights(model, path, small_detector_config())
    fields = dict(
        name="test-model",
        version="0",
        file=path.name,
        sha256=digest,
        backbone=backbone,
        tile_size=SMALL_TILE,
        tile_overlap=SMALL_OVERLAP,
        folder=str(tmp_dir),
    )
    fields.update(overrides)
    return ModelSpec(**fields)


def tiling_spec(**overrides) -> ModelSpec:
    """A manifest entry for tiling only (no weights file is read by ``detect``)."""
    fields = dict(
        name="tiling",
        version="0",
        file="unused.safetensors",
        sha256="0" * 64,
        backbone="mobilenet_v2",
        tile_size=SMALL_TILE,
        tile_overlap=SMALL_OVERLAP,
    )
    fields.update(overrides)
    return ModelSpec(**fields)


def canonical_image(image: np.ndarray, mask: np.ndarray) -> CanonicalImage:
    """Wrap an image and mask as a CanonicalImage with an identity stored<->canonical mapping."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    transform = CanonicalTransform(
        stored_shape=shape, flipped=False, scale=(1.0, 1.0), offset=(0.0, 0.0), canonical_shape=shape
    )
    return CanonicalImage(image=image.astype(np.float32), mask=mask.astype(bool), spacing_mm=0.1, transform=transform)


def breast_like(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A half-ellipse 'breast' at the left (chest wall) with texture and a few bright specks."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    mask = ((rr - rows / 2) / (rows / 2)) ** 2 + (cc / (0.9 * cols)) ** 2 <= 1.0
    image = np.where(mask, 0.45 + 0.1 * rng.standard_normal(shape), 0.0)
    for _ in range(12):
        r, c = rng.integers(0, rows), rng.integers(0, cols // 2)
        image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1.0
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask
