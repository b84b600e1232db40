"""Where the canonical image is cut into tiles: overlapping windows that touch the breast.

A canonical mammogram (about 2000 x 1000 pixels at 0.1 mm) is far larger than the model's
input, and downscaling it would erase specks a few pixels wide, so the image is cut into
overlapping ``tile_size`` tiles at full resolution. Only tiles that touch the breast mask are
run (the rest is air).

Tiles are spaced evenly with at least ``tile_overlap`` pixels in common, so a lesion smaller
than the overlap is always seen whole by some tile. Tiles never extend past the image unless
the image is smaller than a tile; then the tile is padded with 0 (the canonical background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from MicrocalcAI.core.errors import InputError

__all__ = ["extract_tile", "tile_origins", "tile_rects"]


def _axis_origins(length: int, tile: int, stride: int) -> list[int]:
    """Fewest evenly spaced starts with gaps <= stride covering [0, length)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


def tile_origins(shape: tuple[int, int], mask: np.ndarray, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) starts of overlapping ``tile`` x ``tile`` tiles that touch the breast.

    Every mask pixel lies in at least one returned tile; tiles over air only are skipped
    because running the network there costs time and can only add false positives.
    """
    rows, cols = int(shape[0]), int(shape[1])
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InputError(f"invalid tiling: tile {tile}, overlap {overlap} (need 0 <= overlap < tile)")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (rows, cols):
        raise InputError(f"mask shape {mask.shape} differs from image shape {(rows, cols)}")
    stride = tile - overlap
    # Summed-area table: "does this tile hold any breast pixel" in O(1) per tile.
    sat = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    origins = []
    for r in _axis_origins(rows, tile, stride):
        r1 = min(r + tile, rows)
        for c in _axis_origins(cols, tile, stride):
            c1 = min(c + tile, cols)
            if sat[r1, c1] - sat[r, c1] - sat[r1, c] + sat[r, c] > 0:
                origins.append((r, c))
    return origins


def extract_tile(image: np.ndarray, origin: tuple[int, int], tile: int) -> np.ndarray:
    """The ``tile`` x ``tile`` window at ``origin`` (row, col), zero-padded past the image."""
    r, c = origin
    window = image[r : r + tile, c : c + tile]
    if window.shape == (tile, tile):
        return np.ascontiguousarray(window, dtype=np.float32)
    out = np.zeros((tile, tile), dtype=np.float32)
    out[: window.shape[0], : window.shape[1]] = window
    return out


def tile_rects(origins: Sequence[tuple[int, int]], tile: int, image_shape: tuple[int, int]) -> np.ndarray:
    """(T, 4) ``[x0, y0, x1, y1]`` of each tile's image content in canonical coordinates."""
    rows, cols = image_shape
    rects = [(c, r, min(c + tile, cols), min(r + tile, rows)) for r, c in origins]
    return np.asarray(rects, dtype=np.float64).reshape(-1, 4)
