"""Pulmonary vessel trees that branch from the hila and fill each lobe.

Each tree grows over points drawn inside one lobe: a branch heads from its start towards the
centroid of its points, stops part of the way, splits the points in two across a random direction
near their widest spread, and each half grows on. Radii follow Murray's law (r^3 is shared between
children in proportion to the points they serve), so the trees taper from about 5 mm at the hilum
to the resolution limit. Arteries and veins are two trees per lobe rooted at different points of
the hilum; each tree serves one lobe, so branches stay (nearly) clear of the fissures.
"""

from __future__ import annotations

import numpy as np

from m2unet.phantom_tubes import Tubes


def grow_tree(
    rng: np.random.Generator,
    points: np.ndarray,
    root: np.ndarray,
    root_radius: float,
    min_radius: float,
    value: float,
) -> Tubes:
    """A branching tree (as tubes) from ``root`` serving ``points`` (N, 3) mm."""
    p0, p1, radii = [], [], []
    stack = [(points, np.asarray(root, dtype=float), float(root_radius))]
    while stack:
        pts, start, radius = stack.pop()
        centroid = pts.mean(axis=0)
        if len(pts) < 4 or radius < min_radius * 1.25:
            p0.append(start)
            p1.append(centroid)
            radii.append(radius)
            continue
        end = start + rng.uniform(0.35, 0.6) * (centroid - start)
        p0.append(start)
        p1.append(end)
        radii.append(radius)
        centred = pts - centroid
        spread = centred.var(axis=0)
        direction = spread * rng.uniform(0.5, 1.5, size=3) + 1e-6
        direction = np.sqrt(direction) * rng.choice([-1.0, 1.0], size=3)
        proj = centred @ direction
        order = np.argsort(proj)
        cut = len(pts) // 2 + int(rng.integers(-len(pts) // 8, len(pts) // 8 + 1))
        cut = min(max(cut, 1), len(pts) - 1)
        for part in (pts[order[:cut]], pts[order[cut:]]):
            share = len(part) / len(pts)
            stack.append((part, end, radius * share ** (1 / 3)))
    n = len(radii)
    return Tubes(
        np.asarray(p0, dtype=float).reshape(n, 3),
        np.asarray(p1, dtype=float).reshape(n, 3),
        np.asarray(radii, dtype=float),
        np.full(n, float(value)),
    )


def lobe_trees(
    rng: np.random.Generator,
    lobe_points: dict[int, np.ndarray],
    hila: dict[int, tuple[np.ndarray, np.ndarray]],
    total_points: int,
    hilum_radius: float,
    min_radius: float,
    value: float,
) -> Tubes:
    """Artery and vein trees for every lobe; ``hila[label]`` = (artery root, vein root)."""
    tubes = Tubes.empty()
    for label, pts in sorted(lobe_points.items()):
        if len(pts) < 8:
            continue
        share = len(pts) / max(total_points, 1)
        radius = hilum_radius * (2 * share) ** (1 / 3)
        for root in hila[label]:
            tubes = tubes.concat(grow_tree(rng, pts, root, radius, min_radius, value))
    return tubes
