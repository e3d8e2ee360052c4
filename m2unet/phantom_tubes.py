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
    """Paints tubes into slabs of one grid; tubes are indexed by their z range once."""

    def __init__(self, tubes: Tubes, grid: Grid):
        self.grid = grid
        self.tubes = tubes
        sx, sy, sz = grid.spacing
        self.h = float(min(sx, sy))
        if len(tubes):
            lo = np.minimum(tubes.p0, tubes.p1) - tubes.radius[:, None] - self.h
            hi = np.maximum(tubes.p0, tubes.p1) + tubes.radius[:, None] + self.h
            origin = np.asarray(grid.origin)
            spacing = np.asarray(grid.spacing)
            size = np.asarray(grid.shape[::-1])
            self.lo = np.clip(np.floor((lo - origin) / spacing).astype(int), 0, size)
            self.hi = np.clip(np.ceil((hi - origin) / spacing).astype(int) + 1, 0, size)
            keep = np.all(self.hi > self.lo, axis=1)
            self.index = np.flatnonzero(keep)
        else:
            self.index = np.zeros(0, dtype=int)

    def _boxes(self, k0: int, k1: int):
        """Yield (tube index, z slice in slab, y slice, x slice, occupancy) for the slab k0:k1."""
        if not len(self.index):
            return
        lo, hi = self.lo[self.index], self.hi[self.index]
        hit = self.index[(lo[:, 2] < k1) & (hi[:, 2] > k0)]
        g = self.grid
        ox, oy, oz = g.origin
        sx, sy, sz = g.spacing
        for i in hit:
            x0, y0, z0 = self.lo[i]
            x1, y1, z1 = self.hi[i]
            z0, z1 = max(z0, k0), min(z1, k1)
            p0 = self.tubes.p0[i]
            e = self.tubes.p1[i] - p0
            r = float(self.tubes.radius[i])
            X = (ox + sx * np.arange(x0, x1, dtype=np.float32) - p0[0]).reshape(1, 1, -1)
            Y = (oy + sy * np.arange(y0, y1, dtype=np.float32) - p0[1]).reshape(1, -1, 1)
            Z = (oz + sz * np.arange(z0, z1, dtype=np.float32) - p0[2]).reshape(-1, 1, 1)
            ll = float(e @ e)
            if ll > 1e-9:
                dot = (X * np.float32(e[0])) + (Y * np.float32(e[1])) + (Z * np.float32(e[2]))
                s = np.clip(dot * np.float32(1.0 / ll), 0.0, 1.0)
                d2 = (X * X + Y * Y) + Z * Z - s * (2 * dot - s * np.float32(ll))
            else:
                d2 = (X * X + Y * Y) + Z * Z
            d = np.sqrt(np.maximum(d2, 0, out=d2), out=d2)
            occ = np.clip((r - d) / self.h + 0.5, 0.0, 1.0)
            occ *= min(1.0, 2.0 * r / self.h)
            yield i, slice(z0 - k0, z1 - k0), slice(y0, y1), slice(x0, x1), occ

    def blend(self, hu: np.ndarray, k0: int) -> None:
        """Blend each tube's value into the slab ``hu`` (float32, slices k0..) by occupancy."""
        k1 = k0 + hu.shape[0]
        for i, zs, ys, xs, occ in self._boxes(k0, k1):
            box = hu[zs, ys, xs]
            box += occ * (np.float32(self.tubes.value[i]) - box)

    def mask(self, shape: tuple[int, int, int], k0: int) -> np.ndarray:
        """Voxels of the slab (slices k0..) more than half inside some tube."""
        out = np.zeros(shape, dtype=bool)
        k1 = k0 + shape[0]
        for _i, zs, ys, xs, occ in self._boxes(k0, k1):
            out[zs, ys, xs] |= occ > 0.5
        return out
