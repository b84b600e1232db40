"""The image's feature descriptor, captured during the detection pass itself.

A forward hook on the detector's ``backbone`` (backbone + FPN; torch, or the ONNX Runtime /
OpenVINO module :mod:`MicrocalcAI.core.detect.backends` puts in its place, which returns the
same feature levels) sees every tile's feature maps as the detector computes them. Each
level is averaged over the positions that lie inside the breast (the tile's share of the
canonical breast mask, area-pooled to the level's grid), weighted by breast area, and summed
over the tiles; the descriptor is the concatenation of the per-level means (levels x
channels, e.g. 5 x 128 = 640 numbers for mobilenet_v2). No second network pass.

The tiles are the ones :func:`MicrocalcAI.core.detect.run.detect` runs, in its order: the
collector derives them with the same :func:`~MicrocalcAI.core.detect.tiling.tile_origins`
call and consumes them batch by batch; if the count does not add up (someone changed the
detection loop) the descriptor is dropped with a warning rather than mis-assigned.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from MicrocalcAI.core.detect.tiling import extract_tile, tile_origins

__all__ = ["FeatureCollector", "capture_features"]

log = logging.getLogger(__name__)


class FeatureCollector:
    """Accumulates breast-weighted per-level feature means over the tiles of one image."""

    def __init__(self, mask: np.ndarray, tile: int, overlap: int) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self._maskf = self.mask.astype(np.float32)
        self.tile = int(tile)
        self.origins = tile_origins(self.mask.shape, self.mask, self.tile, int(overlap))
        self.next_tile = 0
        self.sums: Optional[list[torch.Tensor]] = None
        self.weight = 0.0
        self.broken = False
        self._thread = threading.get_ident()

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Forward hook of the backbone: ``output`` maps level names to (B, C, h, w) maps."""
        if threading.get_ident() != self._thread or self.broken:
            return  # another thread's image on a shared model, or already inconsistent
        levels = list(output.values()) if isinstance(output, dict) else list(output)
        batch = int(levels[0].shape[0])
        if self.next_tile + batch > len(self.origins):
            self.broken = True
            return
        origins = self.origins[self.next_tile : self.next_tile + batch]
        self.next_tile += batch
        masks = torch.from_numpy(np.stack([extract_tile(self._maskf, o, self.tile) for o in origins])).unsqueeze(1)
        with torch.no_grad():
            if self.sums is None:
                self.sums = [torch.zeros(int(level.shape[1]), dtype=torch.float64) for level in levels]
            for k, level in enumerate(levels):
                feats = level.detach().to("cpu", torch.float32)
                weights = F.adaptive_avg_pool2d(masks, feats.shape[-2:])  # breast share per position
                self.sums[k] += (feats * weights).sum(dim=(0, 2, 3)).double() * (1.0 / weights[0].numel())
            self.weight += float(masks.mean(dim=(1, 2, 3)).sum())

    def descriptor(self) -> Optional[np.ndarray]:
        """The image's descriptor, or None when nothing (consistent) was captured."""
        if self.broken or self.sums is None or self.weight <= 0 or self.next_tile != len(self.origins):
            if self.origins:
                log.warning(
                    "feature capture saw %d of %d tiles: no feature descriptor for this image",
                    self.next_tile,
                    len(self.origins),
                )
            return None
        return np.concatenate([(s / self.weight).numpy() for s in self.sums]).astype(np.float64)


@contextlib.contextmanager
def capture_features(model: nn.Module, mask: np.ndarray, tile: int, overlap: int) -> Iterator[FeatureCollector]:
    """Collect the descriptor of the image whose canonical breast ``mask`` is being detected
    inside the ``with`` block; the hook is removed on exit, also on errors."""
    collector = FeatureCollector(mask, tile, overlap)
    handle = model.backbone.register_forward_hook(collector.hook)  # type: ignore[union-attr]
    try:
        yield collector
    finally:
        handle.remove()
