"""The lobe clean-up of :mod:`m2unet.postprocess` as tensor operations, for the GPU.

On a GPU the network takes well under a second for a whole study, while the scipy clean-up takes
4-7 s on the host (``docs/engine-performance.md``, "GPU"). This module performs the same clean-up
where the tensor lives, so on CUDA the decoder's label map is moved to the device once and never
comes back for post-processing; on the CPU the same code runs (that is how it is tested), but the
predictor keeps the scipy version there, which is faster on a CPU.

:func:`postprocess_tensor` gives the same labels as
``postprocess(class_map, network_lungs(class_map), spacing)`` of :mod:`m2unet.postprocess`,
voxel for voxel, except at exact ties of the nearest-label fill (below); every step is written to
be the same function, not an approximation:

* **Components** (:func:`component_keys`, :func:`label`): every voxel of the mask starts with a key
  that encodes its raster index (``numel - index``, so the first voxel in raster order has the
  largest key). Each round, a voxel takes the largest key among itself and its neighbours (26:
  the 3 x 3 x 3 cube, separable into three 1D maxima; 6: the face neighbours); where a key grew,
  the voxel the old key names learns the new one (``scatter_reduce`` amax: label equivalence, so
  that a whole region holding one key follows at once, also across the bends of a winding
  component); then every voxel jumps to the key that its key's voxel holds (pointer jumping). Keys
  only grow and always name a voxel of the same component, so when no key grows every component
  holds one key: that of its first voxel in raster order. Ordering components by that voxel is
  exactly the numbering of ``scipy.ndimage.label``, so sizes, the largest component and its
  tie-break (the lowest label) are scipy's. 7-9 rounds on the demo weights' lobes.
* **Network lungs** (:func:`network_lungs`): background components (6-connected) of the padded
  foreground box that do not hold the padding's first voxel are enclosed cavities.
* **Islands** (:func:`remove_islands`): per class in the order 1..6, the largest component stays;
  each fragment's face contacts with every other class are counted with ``torch.bincount`` and the
  fragment goes to the class touching it most, background only when it touches strictly more
  (scores ``2 * contacts``, background ``- 1``: the scipy version's ``- 0.5``, kept in integers).
* **Fill** (:func:`fill_lungs`): two passes of face-neighbour propagation, then the nearest label
  in the same slabs and windows as the scipy version, by an exact Euclidean feature transform
  (:func:`nearest_feature`) that also breaks ties as ``scipy.ndimage.distance_transform_edt`` does:
  scipy's transform works axis by axis (z, then y, then x) and, on each line, keeps the site of
  least squared distance in mm, the earliest on a tie, with the distances summed in float64 in the
  order z, y, x. Here the first axis uses the nearest site before and after each voxel (cumulative
  max/min), and the other two take, for every voxel of a line, the argmin over the line's sites of
  the same float64 sum (``torch.argmin`` returns the first minimum): a brute-force lower envelope,
  ``n`` work per voxel on lines of ``n`` voxels, cheap on a GPU and cut into chunks of
  :data:`CHUNK_BYTES`. The two differ only at exact ties, where two labelled voxels are equally
  near in exact arithmetic (a 3-4-5 triangle of pixels against a straight 5, say): scipy builds its
  envelope with a differently rounded test, which may drop the earlier of three sites meeting at a
  point, and then keeps the later one. Either label is a nearest one. Measured: 3 voxels (one in
  each of 3 maps) in 300 random blobby label maps; none on the demo weights' maps.

Memory stays bounded by boxes: components are found inside each class's bounding box (grown by a
voxel), the cavities inside the foreground's box, the feature transform inside the fill windows.
"""

from __future__ import annotations

from typing import Sequence

import torch

from m2unet.labels import NUM_CLASSES
from m2unet.postprocess import FACE_STEPS, FILL_SLAB

Box = tuple[slice, slice, slice]

FILL_MARGIN_SLICES = 16  # the fill window reaches this many slices beyond its slab (as in the scipy version)
FILL_MARGIN_PIXELS = 16  # ... and this many pixels beyond the slab's unlabelled voxels in-plane
PROPAGATION_PASSES = 2  # face-neighbour passes before the distance transform
CHUNK_BYTES = 1 << 28  # float64 distances held at once by the feature transform's brute force


# -- boxes and neighbours -----------------------------------------------------------------------


def bounding_box(mask: torch.Tensor, margin: int = 0) -> Box | None:
    """Bounding box (z, y, x slices) of a 3D mask grown by ``margin`` voxels (clamped), or None when
    the mask is empty; :func:`m2unet.lungs.bounding_box` for tensors."""
    bounds = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(mask.any(dim=others)).flatten()
        if hits.numel() == 0:
            return None
        lo, hi = int(hits[0]), int(hits[-1])
        bounds.append(slice(max(lo - margin, 0), min(hi + 1 + margin, mask.shape[axis])))
    return tuple(bounds)  # type: ignore[return-value]


def _face_pair(axis: int, step: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (voxels, their neighbour at ``step`` along ``axis``) over the voxels that have one."""
    here = [slice(None)] * 3
    there = [slice(None)] * 3
    here[axis] = slice(None, -step) if step > 0 else slice(-step, None)
    there[axis] = slice(step, None) if step > 0 else slice(None, step)
    return tuple(here), tuple(there)


def _face_max(values: torch.Tensor, include_self: bool) -> torch.Tensor:
    """The largest value among the 6 face neighbours (and the voxel itself when asked)."""
    best = values.clone() if include_self else torch.zeros_like(values)
    for axis, step in FACE_STEPS:
        here, there = _face_pair(axis, step)
        torch.maximum(best[here], values[there], out=best[here])
    return best


def _cube_max(values: torch.Tensor) -> torch.Tensor:
    """The largest value in every 3 x 3 x 3 cube (26 neighbours and the voxel), as three 1D maxima."""
    for axis in range(3):
        out = values.clone()
        n = values.shape[axis]
        if n > 1:
            lower, upper = out.narrow(axis, 1, n - 1), out.narrow(axis, 0, n - 1)
            torch.maximum(lower, values.narrow(axis, 0, n - 1), out=lower)
            torch.maximum(upper, values.narrow(axis, 1, n - 1), out=upper)
        values = out
    return values


# -- connected components -----------------------------------------------------------------------


def component_keys(mask: torch.Tensor, connectivity: int = 26) -> torch.Tensor:
    """Per voxel of ``mask`` (0 elsewhere, int32) the key ``numel - i`` of its component's first
    voxel ``i`` in raster order; ``connectivity`` 26 or 6. See the module's docstring."""
    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity!r}")
    n = mask.numel()
    if n >= 2**31:
        raise ValueError(f"mask of {n} voxels: more than int32 keys address")
    mask = mask.contiguous()
    keys = torch.arange(n, 0, -1, dtype=torch.int32, device=mask.device).view(mask.shape)
    keys = torch.where(mask, keys, 0).view(-1)
    flat_mask = mask.view(-1)
    while True:
        volume = keys.view(mask.shape)
        grown = _cube_max(volume) if connectivity == 26 else _face_max(volume, include_self=True)
        grown = torch.where(mask, grown, 0).view(-1)
        changed = torch.nonzero(grown != keys).flatten()
        if changed.numel() == 0:  # every voxel holds the largest key around it: one per component
            return volume
        # merge: the voxel a key names learns the larger key seen next to a voxel holding it, so
        # that all the voxels holding that key follow at the jump (only where a key grew: few
        # atomic writes to one address)
        merged = grown.clone()
        merged.scatter_reduce_(0, (n - keys[changed]).long(), grown[changed], reduce="amax")
        del changed, grown
        # pointer jumping: take the key held by the voxel the key names (itself a member)
        keys = torch.where(flat_mask, merged[(n - merged).clamp_(max=n - 1)], 0)


def label(mask: torch.Tensor, connectivity: int = 26) -> tuple[torch.Tensor, int]:
    """Components of ``mask`` numbered 1..count as ``scipy.ndimage.label`` numbers them (int64
    labels, 0 outside the mask), and their count."""
    keys = component_keys(mask, connectivity)
    members = keys > 0
    values, inverse = torch.unique(keys[members], sorted=True, return_inverse=True)
    count = int(values.numel())
    labels = torch.zeros(mask.shape, dtype=torch.int64, device=mask.device)
    labels[members] = count - inverse  # the largest key (the earliest first voxel) is label 1
    return labels, count


def network_lungs(class_map: torch.Tensor) -> torch.Tensor:
    """:func:`m2unet.postprocess.network_lungs` on a tensor: the foreground and every background
    cavity (6-connected) it encloses in 3D."""
    foreground = class_map > 0
    region = foreground.clone()
    box = bounding_box(foreground)
    if box is None:
        return region
    inner = foreground[box]
    inside = torch.ones(tuple(s + 2 for s in inner.shape), dtype=torch.bool, device=inner.device)
    inside[1:-1, 1:-1, 1:-1] = ~inner
    keys = component_keys(inside, connectivity=6)
    # the padding's first voxel is the first voxel of the whole box: its key is the largest
    enclosed = inside[1:-1, 1:-1, 1:-1] & (keys[1:-1, 1:-1, 1:-1] != inside.numel())
    region[box] |= enclosed
    return region


# -- islands ------------------------------------------------------------------------------------


def _hand_over_class(labels: torch.Tensor, c: int) -> None:
    """Hand the fragments of class ``c`` to the class touching each on most faces, in place."""
    box = bounding_box(labels == c, margin=1)
    if box is None:
        return
    sub = labels[box]  # a view
    components, count = label(sub == c)
    if count <= 1:
        return
    sizes = torch.bincount(components.view(-1), minlength=count + 1)
    sizes[0] = 0
    components[components == sizes.argmax()] = 0  # the main component stays
    contacts = torch.zeros((count + 1) * NUM_CLASSES, dtype=torch.int64, device=labels.device)
    for axis, step in FACE_STEPS:
        here, there = _face_pair(axis, step)
        ids, other = components[here], sub[there]
        touch = (ids > 0) & (other != c)
        contacts += torch.bincount(ids[touch] * NUM_CLASSES + other[touch], minlength=contacts.numel())
    score = contacts.view(count + 1, NUM_CLASSES) * 2
    score[:, 0] -= 1  # on a tie a lobe wins over background
    best, receiver = score.max(dim=1).values, score.argmax(dim=1)
    receiver = torch.where(best > 0, receiver, 0).to(labels.dtype)  # touches nothing: background
    fragment = components > 0
    sub[fragment] = receiver[components[fragment]]


def _remove_islands_in_place(out: torch.Tensor) -> None:
    """One pass over the classes 1..6 suffices (the argument of
    :func:`m2unet.postprocess.remove_islands`)."""
    box = bounding_box(out > 0, margin=1)
    if box is None:
        return
    labels = out[box]
    for c in range(1, NUM_CLASSES):
        _hand_over_class(labels, c)


def remove_islands(class_map: torch.Tensor) -> torch.Tensor:
    """:func:`m2unet.postprocess.remove_islands` on a tensor (a new uint8 tensor)."""
    out = class_map.to(torch.uint8, copy=True).contiguous()
    _remove_islands_in_place(out)
    return out


# -- fill ---------------------------------------------------------------------------------------


def _propagate(labels: torch.Tensor, todo: torch.Tensor) -> None:
    """One pass: each ``todo`` voxel with a labelled face neighbour takes the largest such label."""
    best = _face_max(labels, include_self=False)
    take = todo & (best > 0)
    labels.copy_(torch.where(take, best, labels))
    todo &= ~take


def _line_argmin(
    site_cost: torch.Tensor, spacing: float, targets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For lines (rows of ``site_cost``, ``inf`` where there is no site): per voxel ``i`` of
    ``targets`` (all when None) the site ``j`` minimising ``site_cost[j] + ((j - i) * spacing)**2``,
    the first on a tie, and whether the line has a site. Brute force in chunks of
    :data:`CHUNK_BYTES`."""
    lines, n = site_cost.shape
    index = torch.arange(n, device=site_cost.device)
    voxels = index if targets is None else targets
    step = (index[None, :] - voxels[:, None]).to(torch.float64) * spacing  # [i, j]: (j - i) mm, as scipy rounds it
    along = step * step
    del step
    nearest = torch.empty((lines, voxels.numel()), dtype=torch.int64, device=site_cost.device)
    found = torch.empty((lines, voxels.numel()), dtype=torch.bool, device=site_cost.device)
    rows = max(1, CHUNK_BYTES // (8 * n * max(voxels.numel(), 1)))
    for start in range(0, lines, rows):
        total = site_cost[start : start + rows, None, :] + along[None]
        where = total.argmin(dim=-1)  # the first minimum: the earliest site on a tie
        nearest[start : start + rows] = where
        found[start : start + rows] = torch.isfinite(total.gather(-1, where[..., None])[..., 0])
    return nearest, found


def nearest_feature(
    features: torch.Tensor,
    sampling: Sequence[float],
    rows: slice | None = None,
    wanted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinates (z, y, x; int64) of the nearest ``features`` voxel in Euclidean distance with
    ``sampling`` mm per axis, ties broken as by
    ``scipy.ndimage.distance_transform_edt(~features, sampling, return_indices=True)``, for the
    slices ``rows`` of the first axis (all when None) and there for the ``wanted`` voxels (all when
    None); -1 elsewhere and where there is no feature. See the module's docstring.

    Only the passes that reach a wanted voxel run: the y pass on the rows that hold one, the x
    pass on the lines that hold one."""
    s0, s1, s2 = (float(s) for s in sampling)
    depth, height, width = features.shape
    device = features.device
    # z: the nearest site before and after each voxel along its column; the earlier on a tie
    z = torch.arange(depth, device=device).view(-1, 1, 1)
    before = torch.where(features, z, -1).cummax(dim=0).values
    after = torch.where(features, z, depth).flip(0).cummin(dim=0).values.flip(0)
    take_before = (before >= 0) & ((after >= depth) | (z - before <= after - z))
    fz = torch.where(take_before, before, torch.where(after < depth, after, -1))
    del before, after, take_before
    rows = rows or slice(0, depth)
    fz, z = fz[rows], z[rows]
    if wanted is None:
        wanted = torch.ones(fz.shape, dtype=torch.bool, device=device)
    result = tuple(torch.full(fz.shape, -1, dtype=torch.int64, device=device) for _ in range(3))
    ys = torch.nonzero(wanted.any(dim=2).any(dim=0)).flatten()
    if ys.numel() == 0:
        return result  # type: ignore[return-value]
    # y: per (z, x) line, the site of least (dz * s0)^2 + (dy * s1)^2, at the rows ys
    tz = (fz - z).to(torch.float64) * s0
    cost = torch.where(fz >= 0, tz * tz, torch.inf).transpose(1, 2).reshape(-1, height)
    jy, found = _line_argmin(cost, s1, ys)
    shape = (fz.shape[0], width, ys.numel())  # (z, x, row)
    jy, found = jy.view(shape), found.view(shape)
    fz = torch.where(found, torch.gather(fz.transpose(1, 2), 2, jy), -1).transpose(1, 2)  # (z, row, x)
    fy = torch.where(found, jy, -1).transpose(1, 2)
    # x: per (z, y) line holding a wanted voxel, the site of least ((dz s0)^2 + (dy s1)^2) + (dx s2)^2
    wanted = wanted[:, ys, :]
    lines = torch.nonzero(wanted.any(dim=2))  # (z, row) pairs
    lz, lr = lines[:, 0], lines[:, 1]
    fz, fy = fz[lz, lr], fy[lz, lr]  # (line, x)
    tz = (fz - z.flatten()[lz, None]).to(torch.float64) * s0
    ty = (fy - ys[lr, None]).to(torch.float64) * s1
    cost = torch.where(fz >= 0, tz * tz + ty * ty, torch.inf)
    del tz, ty
    jx, found = _line_argmin(cost, s2)
    keep = found & wanted[lz, lr]
    coordinates = (torch.gather(fz, 1, jx), torch.gather(fy, 1, jx), jx)
    for out, value in zip(result, coordinates):
        out[lz, ys[lr]] = torch.where(keep, value, -1)
    return result  # type: ignore[return-value]


def _fill_lungs_in_place(out: torch.Tensor, lung: torch.Tensor, spacing: Sequence[float]) -> bool:
    """:func:`m2unet.postprocess._fill_lungs_in_place` (its defaults) on tensors: returns whether
    the distance transform ran."""
    box = bounding_box(lung)
    if box is None:
        return False
    labels = out[box]
    pending = lung[box] & (labels == 0)
    if not bool(pending.any()) or not bool(labels.any()):
        return False
    for _ in range(PROPAGATION_PASSES):
        _propagate(labels, pending)
        if not bool(pending.any()):
            return False
    sx, sy, sz = spacing
    depth = labels.shape[0]
    for start in range(0, depth, FILL_SLAB):
        stop = min(start + FILL_SLAB, depth)
        region = bounding_box(pending[start:stop], margin=FILL_MARGIN_PIXELS)
        if region is None:
            continue
        _, ys, xs = region
        lo, hi = max(start - FILL_MARGIN_SLICES, 0), min(stop + FILL_MARGIN_SLICES, depth)
        window = labels[lo:hi, ys, xs]
        features = window > 0
        if not bool(features.any()):
            continue
        need = pending[start:stop, ys, xs]
        fz, fy, fx = nearest_feature(features, (sz, sy, sx), rows=slice(start - lo, stop - lo), wanted=need)
        target = labels[start:stop, ys, xs]
        target[need] = window[fz[need], fy[need], fx[need]]  # every voxel has a site: the window holds a label
    return True


def fill_lungs(class_map: torch.Tensor, lung: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """:func:`m2unet.postprocess.fill_lungs` on tensors (a new uint8 tensor)."""
    out = class_map.to(torch.uint8, copy=True).contiguous()
    _fill_lungs_in_place(out, lung.to(torch.bool), spacing)
    return out


# -- the whole clean-up -------------------------------------------------------------------------


def postprocess_tensor(class_map: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """``postprocess(class_map, network_lungs(class_map), spacing)`` of :mod:`m2unet.postprocess`
    on the tensor's device (a new uint8 tensor there). ``spacing``: (x, y, z) mm, as a Volume's.

    Step 1 of the scipy version (background outside the lung) removes nothing here: the network's
    lungs hold its whole foreground."""
    if not isinstance(class_map, torch.Tensor):
        raise ValueError(f"class_map must be a torch.Tensor, got {type(class_map).__name__}")
    if class_map.dim() != 3:
        raise ValueError(f"class_map must be (z, y, x), got shape {tuple(class_map.shape)}")
    if class_map.dtype == torch.bool or class_map.dtype.is_floating_point or class_map.dtype.is_complex:
        raise ValueError(f"class_map must hold integer labels, got dtype {class_map.dtype}")
    if class_map.numel():
        low, high = int(class_map.min()), int(class_map.max())
        if low < 0 or high >= NUM_CLASSES:
            raise ValueError(f"class_map holds labels {low}..{high}, beyond 0..{NUM_CLASSES - 1}")
    out = class_map.to(torch.uint8, copy=True).contiguous()
    lung = network_lungs(out)
    _remove_islands_in_place(out)
    if _fill_lungs_in_place(out, lung, spacing):
        _remove_islands_in_place(out)
    return out


__all__ = [
    "bounding_box",
    "component_keys",
    "fill_lungs",
    "label",
    "nearest_feature",
    "network_lungs",
    "postprocess_tensor",
    "remove_islands",
]
