"""Boxes as DICOM spatial coordinates, and back: the one place that converts them.

SR SCOORD and presentation-state GraphicData in PIXEL units use the same frame as our
findings (PS3.3 C.18.6.1.1 and C.10.5.1.1): (column, row) of the stored image with the
origin at the top-left *corner* of the top-left pixel, pixel centres at +0.5. So a box
``[x0, y0, x1, y1]`` needs no shift, only a shape: SR has no rectangle, so it is a closed
5-point POLYLINE (first point repeated last), clockwise from the top-left corner.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["box_centre", "box_polyline", "polyline_box"]


def box_polyline(box: Sequence[float]) -> np.ndarray:
    """(5, 2) float32 (column, row) points of the closed outline of ``[x0, y0, x1, y1]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def box_centre(box: Sequence[float]) -> np.ndarray:
    """(1, 2) float32 (column, row) centre of ``[x0, y0, x1, y1]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[(x0 + x1) / 2.0, (y0 + y1) / 2.0]], dtype=np.float32)


def polyline_box(points: Sequence[float]) -> tuple[float, float, float, float]:
    """The ``[x0, y0, x1, y1]`` box that a flat (column, row, column, row, ...) outline spans."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if xy.shape[0] < 2:
        raise ValueError(f"an outline needs at least 2 points, got {xy.shape[0]}")
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)
