"""Geometry between the engine's stored-pixel coordinates, the volume's IJK grid and RAS.

Three coordinate systems meet here:

* **stored pixels** (the engine, every output file): x = column, y = row of the image *as
  stored in its file*, origin at the top-left **corner** of the top-left pixel, so pixel
  (row r, column c) covers ``[c, c+1) x [r, r+1)``. Boxes are ``[x0, y0, x1, y1]`` there.
* **IJK** (the volume node): integer indices are pixel **centres**; the numpy array of a
  volume is indexed ``[k, j, i]``; a single-frame mammogram has one slice, k = 0. For the
  same grid, corner coordinate ``x`` is IJK ``i = x - 0.5``.
* **RAS** (the scene): ``RAS = IJKToRAS @ (i, j, k, 1)``, plus the volume's parent transform.
  Spacing, origin and axis directions (including the LPS-flipped directions that Slicer's
  DICOM loader gives mammograms, and oblique ones) are all in that matrix: nothing here
  assumes positive or axis-aligned directions.

The stored image and the volume's in-plane grid are normally the same array (Slicer keeps the
pixel order of the file). :class:`PixelMapping` also covers loaders that flip or transpose the
pixel grid: it is one of the 8 flips/transposes of the plane, found by
:func:`MicrocalcAIModuleLib.volumes.match_pixel_mapping` when the source file is known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AXIS_TOLERANCE",
    "HALF",
    "PixelMapping",
    "RoiGeometry",
    "box_center_ras",
    "ijk_to_ras_matrix",
    "ijk_to_ras_points",
    "is_axis_aligned",
    "roi_geometry_for_box",
    "roi_geometry_for_ijk_bounds",
    "view_field_of_view",
    "vtk_matrix_to_numpy",
]


#: Half a pixel: corner coordinate -> IJK index offset.
HALF = 0.5
#: Off-axis direction components below this fraction count as zero (axis-aligned volume).
AXIS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PixelMapping:
    """How the stored image's pixel grid lies on the volume's in-plane (j, i) grid.

    The volume plane equals the stored image after, in this order: an optional transpose,
    an optional up-down flip (``flip_rows``), an optional left-right flip (``flip_cols``).
    The identity (all False) is what Slicer's loaders produce for 2-D images.
    """

    stored_shape: tuple[int, int]  # (rows, columns) of the stored image
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def identity(cls, stored_shape: Sequence[int]) -> PixelMapping:
        """The mapping of a volume whose plane is the stored image itself."""
        return cls((int(stored_shape[0]), int(stored_shape[1])))

    @classmethod
    def all_mappings(cls, stored_shape: Sequence[int]) -> list[PixelMapping]:
        """The 8 flips/transposes of a grid of this shape, identity first."""
        shape = (int(stored_shape[0]), int(stored_shape[1]))
        return [
            cls(shape, transpose=t, flip_rows=fr, flip_cols=fc)
            for t in (False, True)
            for fr in (False, True)
            for fc in (False, True)
        ]

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(J, I): rows and columns of the volume plane."""
        rows, cols = self.stored_shape
        return (cols, rows) if self.transpose else (rows, cols)

    # ------------------------------------------------------------------ arrays
    def stored_to_plane(self, image: np.ndarray) -> np.ndarray:
        """Re-arrange a stored-frame 2-D array (image or mask) onto the volume plane."""
        out = np.asarray(image)
        if self.transpose:
            out = out.T
        if self.flip_rows:
            out = out[::-1, :]
        if self.flip_cols:
            out = out[:, ::-1]
        return out

    def plane_to_stored(self, plane: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`stored_to_plane`: a volume-plane array in stored order."""
        out = np.asarray(plane)
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1, :]
        if self.transpose:
            out = out.T
        return out

    # ------------------------------------------------------------------ points and boxes
    def stored_to_plane_corners(self, xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) stored corner coordinates (x, y) to plane corner coordinates (x', y')."""
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        x, y = pts[:, 0].copy(), pts[:, 1].copy()
        if self.transpose:
            x, y = y, x
        rows, cols = self.plane_shape
        if self.flip_rows:
            y = rows - y
        if self.flip_cols:
            x = cols - x
        return np.stack([x, y], axis=1)

    def plane_corners_to_stored(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`stored_to_plane_corners`."""
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        x, y = pts[:, 0].copy(), pts[:, 1].copy()
        rows, cols = self.plane_shape
        if self.flip_cols:
            x = cols - x
        if self.flip_rows:
            y = rows - y
        if self.transpose:
            x, y = y, x
        return np.stack([x, y], axis=1)

    def stored_to_ijk(self, xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) stored corner coordinates to continuous IJK (i, j) index coordinates."""
        return self.stored_to_plane_corners(xy) - HALF

    def ijk_to_stored(self, ij: np.ndarray) -> np.ndarray:
        """Map (N, 2) continuous IJK (i, j) to stored corner coordinates (x, y)."""
        return self.plane_corners_to_stored(np.asarray(ij, dtype=np.float64).reshape(-1, 2) + HALF)

    def box_to_ijk_bounds(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A stored ``[x0, y0, x1, y1]`` box as continuous IJK bounds ``(i0, j0, i1, j1)``.

        The bounds run from pixel edge to pixel edge (a box covering exactly pixel 0 gives
        ``i0 = -0.5, i1 = 0.5``), with ``i0 <= i1`` and ``j0 <= j1`` whatever the flips.
        """
        b = np.asarray(box, dtype=np.float64).reshape(4)
        corners = self.stored_to_ijk(np.array([[b[0], b[1]], [b[2], b[3]]]))
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def mask_to_plane(self, mask: np.ndarray, origin: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
        """A stored-frame mask window (origin = (row, col) of its top-left pixel) on the plane.

        Returns the re-arranged mask and the (j, i) index of its top-left plane pixel.
        """
        m = np.asarray(mask)
        r0, c0 = int(origin[0]), int(origin[1])
        h, w = m.shape
        corners = self.stored_to_plane_corners(np.array([[c0, r0], [c0 + w, r0 + h]], dtype=np.float64))
        lo = corners.min(axis=0)
        return self.stored_to_plane(m), (int(round(lo[1])), int(round(lo[0])))

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        """Compact JSON, stored with the results so threshold changes need no re-analysis."""
        return json.dumps(
            {
                "stored_shape": list(self.stored_shape),
                "transpose": self.transpose,
                "flip_rows": self.flip_rows,
                "flip_cols": self.flip_cols,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PixelMapping:
        data: dict[str, Any] = json.loads(text)
        return cls(
            (int(data["stored_shape"][0]), int(data["stored_shape"][1])),
            transpose=bool(data.get("transpose", False)),
            flip_rows=bool(data.get("flip_rows", False)),
            flip_cols=bool(data.get("flip_cols", False)),
        )


# ---------------------------------------------------------------------------------- IJK -> RAS


def vtk_matrix_to_numpy(matrix: Any) -> np.ndarray:
    """A vtkMatrix4x4 as a (4, 4) float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def ijk_to_ras_matrix(volume_node: Any) -> np.ndarray:
    """The volume's IJK-to-RAS matrix (node coordinates, before any parent transform)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return vtk_matrix_to_numpy(m)


def ijk_to_ras_points(ijk_to_ras: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map (N, 3) continuous IJK points to RAS with a (4, 4) matrix."""
    pts = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    return (np.asarray(ijk_to_ras, dtype=np.float64) @ homog.T).T[:, :3]


def is_axis_aligned(directions: np.ndarray, tolerance: float = AXIS_TOLERANCE) -> bool:
    """True when each IJK axis runs along one RAS axis (signs and permutations allowed)."""
    d = np.asarray(directions, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(d, axis=0)
    if np.any(norms == 0):
        return False
    mags = np.abs(d) / norms
    dominant = mags.argmax(axis=0)
    if len(set(dominant.tolist())) != 3:
        return False
    off = mags.copy()
    off[dominant, np.arange(3)] = 0.0
    return bool(np.all(off <= tolerance))


@dataclass(frozen=True)
class RoiGeometry:
    """A box in RAS: centre, edge lengths along its own axes, and those axes (columns)."""

    center: np.ndarray  # (3,) RAS
    size: np.ndarray  # (3,) mm along axes[:, 0..2]
    axes: np.ndarray  # (3, 3) orthonormal, right-handed; identity for axis-aligned volumes

    @property
    def corners(self) -> np.ndarray:
        """(8, 3) RAS corners, for checks and bounding boxes."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return self.center + (signs * (self.size / 2.0)) @ self.axes.T

    def object_to_node(self) -> np.ndarray:
        """The (4, 4) ROI object-to-node matrix (rotation = axes, translation = centre)."""
        m = np.eye(4)
        m[:3, :3] = self.axes
        m[:3, 3] = self.center
        return m


def _orthonormal_axes(directions: np.ndarray) -> np.ndarray:
    """Right-handed orthonormal axes from the volume's i and j directions (Gram-Schmidt)."""
    d = np.asarray(directions, dtype=np.float64)[:3, :3]
    a0 = d[:, 0] / np.linalg.norm(d[:, 0])
    a1 = d[:, 1] - a0 * float(a0 @ d[:, 1])
    a1 = a1 / np.linalg.norm(a1)
    a2 = np.cross(a0, a1)
    return np.stack([a0, a1, a2], axis=1)


def roi_geometry_for_ijk_bounds(
    ijk_to_ras: np.ndarray,
    bounds: Sequence[float],
    k_range: tuple[float, float] = (-HALF, HALF),
) -> RoiGeometry:
    """The RAS box covering IJK bounds ``(i0, j0, i1, j1)`` and slice ``k_range``.

    For axis-aligned volumes (any signs or permutation of axes, which covers the LPS
    directions of DICOM mammograms) the ROI is axis-aligned in RAS and its size is the RAS
    extent of the mapped box. For oblique volumes the ROI is rotated with the volume's axes
    (a RAS-aligned box would be larger than the lesion) and its size is measured along them.
    The k range defaults to the slice's own thickness so that the ROI encloses the image.
    """
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    i0, j0, i1, j1 = (float(v) for v in bounds)
    k0, k1 = float(k_range[0]), float(k_range[1])
    center_ijk = np.array([[(i0 + i1) / 2.0, (j0 + j1) / 2.0, (k0 + k1) / 2.0]])
    center = ijk_to_ras_points(m, center_ijk)[0]
    extent = np.array([i1 - i0, j1 - j0, k1 - k0], dtype=np.float64)
    d = m[:3, :3]
    if is_axis_aligned(d):
        return RoiGeometry(center=center, size=np.abs(d) @ extent, axes=np.eye(3))
    return RoiGeometry(center=center, size=np.linalg.norm(d, axis=0) * extent, axes=_orthonormal_axes(d))


def roi_geometry_for_box(
    ijk_to_ras: np.ndarray, mapping: PixelMapping, box_px: Sequence[float], k_index: float = 0.0
) -> RoiGeometry:
    """The RAS box of a lesion's stored-pixel box on slice ``k_index`` of the volume."""
    return roi_geometry_for_ijk_bounds(ijk_to_ras, mapping.box_to_ijk_bounds(box_px), (k_index - HALF, k_index + HALF))


def box_center_ras(
    ijk_to_ras: np.ndarray, mapping: PixelMapping, box_px: Sequence[float], k_index: float = 0.0
) -> np.ndarray:
    """RAS position of a stored-pixel box's centre (node coordinates)."""
    i0, j0, i1, j1 = mapping.box_to_ijk_bounds(box_px)
    return ijk_to_ras_points(ijk_to_ras, np.array([[(i0 + i1) / 2.0, (j0 + j1) / 2.0, k_index]]))[0]


def view_field_of_view(geometry: RoiGeometry, margin: float = 4.0, minimum_mm: float = 15.0) -> float:
    """Field of view (mm) that shows a lesion with context when the views jump to it."""
    in_plane = float(np.max(np.sort(geometry.size)[1:]))  # two largest: the image plane
    return max(in_plane * margin, minimum_mm)
