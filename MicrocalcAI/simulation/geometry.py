"""Calcification geometry: primitives with an analytic thickness (projected path length, mm).

Speck shapes are compositions of :class:`Ellipsoid`, :class:`Capsule`, :class:`Shell`,
:class:`Tube` and :class:`Meniscus`; each only needs a ``thickness(x, y)`` and a ``bounds()``,
so a new shape plugs in without touching the renderer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = [
    "Ellipsoid",
    "Capsule",
    "Shell",
    "Tube",
    "Meniscus",
    "Primitive",
    "Speck",
    "ClusterGeometry",
    "transform_speck",
]


@dataclass
class Ellipsoid:
    """Solid ellipsoid with in-plane semi-axes (a, b), rotated by ``angle``; depth semi-axis c."""

    cx: float
    cy: float
    a: float
    b: float
    c: float
    angle: float = 0.0

    def bounds(self) -> tuple[float, float, float, float]:
        r = max(self.a, self.b)
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u = ((x - self.cx) * ca + (y - self.cy) * sa) / self.a
        v = (-(x - self.cx) * sa + (y - self.cy) * ca) / self.b
        return 2.0 * self.c * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))


@dataclass
class Capsule:
    """Cylinder of radius r between two points with hemispherical ends: a fine-linear speck."""

    x0: float
    y0: float
    x1: float
    y1: float
    r: float

    def bounds(self) -> tuple[float, float, float, float]:
        return (
            min(self.x0, self.x1) - self.r,
            min(self.y0, self.y1) - self.r,
            max(self.x0, self.x1) + self.r,
            max(self.y0, self.y1) + self.r,
        )

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = dx * dx + dy * dy
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / max(length2, 1e-12), 0.0, 1.0)
        d2 = (x - self.x0 - t * dx) ** 2 + (y - self.y0 - t * dy) ** 2
        return 2.0 * np.sqrt(np.clip(self.r * self.r - d2, 0.0, None))


@dataclass
class Shell:
    """Spherical shell (rim / eggshell calcification): outer sphere minus inner sphere."""

    cx: float
    cy: float
    r_outer: float
    r_inner: float

    def bounds(self) -> tuple[float, float, float, float]:
        r = self.r_outer
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = (x - self.cx) ** 2 + (y - self.cy) ** 2
        outer = 2.0 * np.sqrt(np.clip(self.r_outer**2 - d2, 0.0, None))
        inner = 2.0 * np.sqrt(np.clip(self.r_inner**2 - d2, 0.0, None))
        return outer - inner


@dataclass
class Tube:
    """Capsule with a lucent core: a calcified duct cast or rod with a lucent centre (radii r > r_inner)."""

    x0: float
    y0: float
    x1: float
    y1: float
    r: float
    r_inner: float

    def bounds(self) -> tuple[float, float, float, float]:
        return Capsule(self.x0, self.y0, self.x1, self.y1, self.r).bounds()

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        outer = Capsule(self.x0, self.y0, self.x1, self.y1, self.r).thickness(x, y)
        inner = Capsule(self.x0, self.y0, self.x1, self.y1, self.r_inner).thickness(x, y)
        return outer - inner


@dataclass
class Meniscus:
    """Milk of calcium seen with a horizontal beam: the sediment filling the lowest ``fill``
    fraction (of the diameter) of a spherical cyst of radius r, gravity towards +y (image down).
    Its orientation does not rotate with the cluster: sediment always layers downwards."""

    cx: float
    cy: float
    r: float
    fill: float

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy + self.r - 2 * self.r * self.fill, self.cx + self.r, self.cy + self.r)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = (x - self.cx) ** 2 + (y - self.cy) ** 2
        chord = 2.0 * np.sqrt(np.clip(self.r**2 - d2, 0.0, None))
        return np.where(y >= self.cy + self.r - 2 * self.r * self.fill, chord, 0.0)


Primitive = Union[Ellipsoid, Capsule, Shell, Tube, Meniscus]


@dataclass
class Speck:
    """One calcification: the union of its primitives (thickness = max over primitives)."""

    primitives: list[Primitive]
    density: float = 1.0  # relative calcium density in (0, 1]

    def bounds(self) -> tuple[float, float, float, float]:
        b = np.array([p.bounds() for p in self.primitives])
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds()
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape)
        for p in self.primitives:
            np.maximum(out, p.thickness(x, y), out=out)
        return out


@dataclass
class ClusterGeometry:
    """A cluster's specks in mm relative to the cluster centre, plus its labels."""

    category: str
    morphology: str
    distribution: str
    specks: list[Speck]


def _translate(p: Primitive, dx: float, dy: float) -> Primitive:
    if isinstance(p, Tube):
        return Tube(p.x0 + dx, p.y0 + dy, p.x1 + dx, p.y1 + dy, p.r, p.r_inner)
    if isinstance(p, Meniscus):
        return Meniscus(p.cx + dx, p.cy + dy, p.r, p.fill)
    if isinstance(p, Capsule):
        return Capsule(p.x0 + dx, p.y0 + dy, p.x1 + dx, p.y1 + dy, p.r)
    if isinstance(p, Ellipsoid):
        return Ellipsoid(p.cx + dx, p.cy + dy, p.a, p.b, p.c, p.angle)
    return Shell(p.cx + dx, p.cy + dy, p.r_outer, p.r_inner)


def _rotate(p: Primitive, angle: float) -> Primitive:
    ca, sa = math.cos(angle), math.sin(angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        return (x * ca - y * sa, x * sa + y * ca)

    if isinstance(p, Tube):
        (a, b), (c, d) = rot(p.x0, p.y0), rot(p.x1, p.y1)
        return Tube(a, b, c, d, p.r, p.r_inner)
    if isinstance(p, Meniscus):
        cx, cy = rot(p.cx, p.cy)
        return Meniscus(cx, cy, p.r, p.fill)
    if isinstance(p, Capsule):
        (a, b), (c, d) = rot(p.x0, p.y0), rot(p.x1, p.y1)
        return Capsule(a, b, c, d, p.r)
    if isinstance(p, Ellipsoid):
        cx, cy = rot(p.cx, p.cy)
        return Ellipsoid(cx, cy, p.a, p.b, p.c, p.angle + angle)
    cx, cy = rot(p.cx, p.cy)
    return Shell(cx, cy, p.r_outer, p.r_inner)


def transform_speck(speck: Speck, angle: float, dx: float, dy: float) -> Speck:
    """Rotate a speck about the cluster origin, then move it: places a cluster in the image."""
    return Speck([_translate(_rotate(p, angle), dx, dy) for p in speck.primitives], speck.density)
