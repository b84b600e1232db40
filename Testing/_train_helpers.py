"""Helpers for test_dataset.py, test_train.py, test_train_ddp.py and test_evaluate.py: tiny
simulated datasets, a tiny training configuration and synthetic training samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from MicrocalcAI.core.records import CanonicalTransform
from MicrocalcAI.training.data import CanonicalSample


def tiny_train_config(coco: Path, out: Path, **overrides: object) -> dict[str, object]:
    """A training configuration (as JSON-ready dict) that trains 4 iterations on ``coco`` in seconds."""
    config: dict[str, object] = dict(
        train_coco=str(coco),
        val_coco=str(coco),
        output_dir=str(out),
        cache_dir=str(out.parent / "cache"),
        pretrained_backbone=False,
        patch={"patch_size": 160, "background_fraction": 0.25},
        batch_size=2,
        iterations=4,
        warmup_iterations=2,
        checkpoint_every=2,
        val_every=4,
        log_every=1,
        lr=0.005,
        device="cpu",
        num_threads=2,
        seed=3,
    )
    config.update(overrides)
    return config


def simulate_tiny(out_dir: Path, n_images: int = 4, seed: int = 11) -> Path:
    """A few small procedural mammograms, each with 1-2 clusters: fast to standardise and detect."""
    from MicrocalcAI.simulation.config import SimulationConfig
    from MicrocalcAI.simulation.simulate import simulate_dataset

    config = SimulationConfig(
        n_images=n_images,
        seed=seed,
        real_fraction=0.0,
        clusters_per_image=(1, 2),
        procedural_height_mm=(70.0, 75.0),
        procedural_width_mm=(50.0, 55.0),
    )
    return simulate_dataset(out_dir, config)


def synthetic_sample(
    shape: tuple[int, int] = (400, 300),
    boxes: Sequence[Sequence[int]] = ((40, 60, 90, 80), (180, 250, 200, 330)),
    labels: Sequence[int] = (1, 2),
    mask: Optional[np.ndarray] = None,
) -> CanonicalSample:
    """A dark canonical image whose only bright pixels are exactly the (integer) lesion boxes.

    Boxes are asymmetric (not square, not centred) so any flip or rotation that moved the
    pixels without moving the boxes, or the reverse, puts dark pixels inside a box.
    """
    image = np.zeros(shape, dtype=np.float16)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 1.0
    return CanonicalSample(
        image_id=1,
        path=Path("synthetic"),
        image=image,
        mask=np.ones(shape, dtype=bool) if mask is None else mask,
        transform=CanonicalTransform(
            stored_shape=shape, flipped=False, scale=(1.0, 1.0), offset=(0.0, 0.0), canonical_shape=shape
        ),
        spacing_mm=0.1,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def box_pixels_are_lesion(image: np.ndarray, boxes: np.ndarray) -> tuple[bool, bool]:
    """(every pixel inside a box is bright, every pixel outside all boxes is dark)."""
    inside = np.zeros(image.shape, dtype=bool)
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        inside[y0:y1, x0:x1] = True
    bright = image > 0.5
    return bool(np.all(bright[inside])), bool(not np.any(bright[~inside]))
