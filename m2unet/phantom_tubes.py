"""Tubes (vessels, airways, aorta) as capsules along line segments, painted one z-slab at a time.

A tube is a segment p0 -> p1 in patient coordinates (mm) with a radius. Painting computes, in the
segment's bounding box only, each voxel's distance to the segment and an occupancy with a soft
edge one voxel wide (partial volume), so thin vessels fade instead of vanishing on coarse grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2unet.phantom_geometry import Grid


@dataclass(frozen=True)
class Tubes:
    """``p0``, ``p1`` (N, 3) x-y-z mm; ``radius`` (N,) mm; ``value`` (N,) what a full voxel gets."""

    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray
    value: np.ndarray

    @staticmethod
    def empty() -> "Tubes":
        z = np.zeros((0, 3))
        return Tubes(z, z, np.zeros(0), np.zeros(0))

    def __len__(self) -> int:
        return len(self.radius)

    def concat(self, other: "Tubes") -> "Tubes":
        return Tubes(
            np.concatenate([self.p0, other.p0]),
            np.concatenate([self.p1, other.p1]),
            np.concatenate([self.radius, other.radius]),
            np.concatenate([self.value, other.value]),
        )

    def split(self, max_length_mm: float) -> "Tubes":
        """Cut long segments into pieces no longer than ``max_length_mm`` (tighter boxes)."""
        if not len(self):
            return self
        length = np.linalg.norm(self.p1 - self.p0, axis=1)
        pieces = np.maximum(1, np.ceil(length / max_length_mm)).astype(int)
        idx = np.repeat(np.arange(len(self)), pieces)
        part = np.concatenate([np.arange(n) for n in pieces])
        frac0 = (part / pieces[idx])[:, None]
        frac1 = ((part + 1) / pieces[idx])[:, None]
        d = (self.p1 - self.p0)[idx]
        return Tubes(
            self.p0[idx] + frac0 * d,
            self.p0[idx] + frac1 * d,
            self.radius[idx],
            self.value[idx],
        )


def polyline(points, radius, value) -> Tubes:
    """Tubes along consecutive points; ``radius`` a scalar or one value per point."""
    pts = np.asarray(points, dtype=float)
    r = np.broadcast_to(np.asarray(radius, dtype=float), (len(pts),))
    n = len(pts) - 1
    return Tubes(
        pts[:-1].copy(),
        pts[1:].copy(),
        (r[:-1] + r[1:]) / 2,
        np.full(n, float(value)),
    )


class TubePainter:
    """Paints tubes into axial planes of one grid (any z); tubes are indexed once."""

    def __init__(self, tubes: Tubes, grid: Grid):
        self.grid = grid
        self.tubes = tubes
        sx, sy, sz = grid.spacing
        self.h = float(min(sx, sy))
        if len(tubes):
            margin = tubes.radius[:, None] + self.h
            lo = np.minimum(tubes.p0, tubes.p1) - margin
            hi = np.maximum(tubes.p0, tubes.p1) + margin
            origin = np.asarray(grid.origin[:2])
            spacing = np.asarray(grid.spacing[:2])
            size = np.asarray(grid.shape[:0:-1])
            self.lo = np.clip(np.floor((lo[:, :2] - origin) / spacing).astype(int), 0, size)
            self.hi = np.clip(np.ceil((hi[:, :2] - origin) / spacing).astype(int) + 1, 0, size)
            self.z_lo, self.z_hi = lo[:, 2], hi[:, 2]
            self.index = np.flatnonzero(np.all(self.hi > self.lo, axis=1))
            self.ll = np.einsum("ij,ij->i", tubes.p1 - tubes.p0, tubes.p1 - tubes.p0)
        else:
            self.index = np.zeros(0, dtype=int)
        self.xs = grid.axis("x").astype(np.float32)
        self.ys = grid.axis("y").astype(np.float32)

    def _boxes(self, z: np.ndarray):
        """Yield (tube index, plane slice, y slice, x slice, occupancy) for planes at sorted ``z``."""
        if not len(self.index) or not len(z):
            return
        hit = self.index[(self.z_lo[self.index] <= z[-1]) & (self.z_hi[self.index] >= z[0])]
        inv_h = np.float32(1.0 / self.h)
        for i in hit:
            j0 = int(np.searchsorted(z, self.z_lo[i], side="left"))
            j1 = int(np.searchsorted(z, self.z_hi[i], side="right"))
            if j1 <= j0:
                continue
            x0, y0 = self.lo[i]
            x1, y1 = self.hi[i]
            p0 = self.tubes.p0[i]
            e = (self.tubes.p1[i] - p0).astype(np.float32)
            r = float(self.tubes.radius[i])
            X = (self.xs[x0:x1] - np.float32(p0[0]))[None, None, :]
            Y = (self.ys[y0:y1] - np.float32(p0[1]))[None, :, None]
            Z = (z[j0:j1] - p0[2]).astype(np.float32)[:, None, None]
            ll = float(self.ll[i])
            d2 = (X * X + Y * Y) + Z * Z
            if ll > 1e-9:
                dot = (X * e[0] + Y * e[1]) + Z * e[2]
                s = dot * np.float32(1.0 / ll)
                np.maximum(s, 0, out=s)
                np.minimum(s, 1, out=s)
                dot *= 2
                dot -= s * np.float32(ll)
                dot *= s
                d2 -= dot  # |p|^2 - s (2 p.e - s |e|^2): squared distance to the segment
            np.maximum(d2, 0, out=d2)
            occ = np.sqrt(d2, out=d2)
            occ -= np.float32(r)
            occ *= -inv_h
            occ += np.float32(0.5)
            np.maximum(occ, 0, out=occ)
            np.minimum(occ, 1, out=occ)
            if r < self.h / 2:
                occ *= np.float32(2.0 * r / self.h)
            yield i, slice(j0, j1), slice(y0, y1), slice(x0, x1), occ

    def blend(self, hu: np.ndarray, z: np.ndarray) -> None:
        """Blend each tube's value into ``hu`` (float32, planes at sorted ``z`` mm) by occupancy."""
        for i, zs, ys, xs, occ in self._boxes(np.asarray(z, dtype=np.float64)):
            box = hu[zs, ys, xs]
            box += occ * (np.float32(self.tubes.value[i]) - box)

    def mask(self, shape: tuple[int, int, int], z: np.ndarray) -> np.ndarray:
        """Voxels of the planes at sorted ``z`` (mm) more than half inside some tube."""
        out = np.zeros(shape, dtype=bool)
        for _i, zs, ys, xs, occ in self._boxes(np.asarray(z, dtype=np.float64)):
            out[zs, ys, xs] |= occ > 0.5
        return out
