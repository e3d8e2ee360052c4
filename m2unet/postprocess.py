"""Lobe post-processing a radiologist expects of a 7-class label map (z, y, x).

The lung is what the network paints, not a Hounsfield threshold: a threshold mask loses the
consolidated lung that matters most in severe pneumonia (on held-out renders with 87 % of the lung
involved, lobes restricted to the HU mask kept half the lung; see ``docs/real-anatomy.md``).
:func:`network_lungs` gives that region: the network's foreground with its enclosed cavities.

1. Lungs only: labels outside the lung region (``lung``; optionally grown by ``margin_mm``
   in-plane) become background. With the region of :func:`network_lungs` nothing is removed.
2. No islands: for every class the largest 3D component (26-connected) stays; each smaller
   fragment is handed to the class that touches it on the most voxel faces (background included,
   which wins only when it touches strictly more than every lobe). One pass over the classes
   suffices (see :func:`remove_islands`).
3. No holes in the lungs: lung voxels left unlabelled get the label of the nearest labelled voxel
   (Euclidean distance in mm, computed in slabs of slices, each in a window reaching
   ``fill_margin_slices`` slices and 16 pixels beyond its unlabelled voxels, so the memory stays
   bounded; a voxel with no label in its window stays unlabelled). By the nearest-point property the filled voxels join the component they are
   nearest to, so filling creates no new islands; a last island pass makes sure. Thin gaps are
   first closed by face-neighbour propagation, which is cheaper.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from m2unet.labels import NUM_CLASSES
from m2unet.lungs import bounding_box, component_sizes, label

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
FILL_SLAB = 64
FACE_STEPS = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1))  # (axis, step) of the 6 face neighbours


def _hand_over_class(labels: np.ndarray, c: int) -> set[int]:
    """Hand the fragments of class ``c`` to their neighbours, in place; returns the receivers."""
    box = bounding_box(labels == c, margin=1)
    if box is None:
        return set()
    sub = labels[box]
    components, count = label(sub == c, CONNECTIVITY_26)
    if count <= 1:
        return set()
    sizes = component_sizes(components, count)
    sizes[0] = 0
    components[components == sizes.argmax()] = 0  # the main component stays
    coords = np.nonzero(components)
    ids = components[coords]
    del components
    # contacts of every fragment with every other class, over the faces of its voxels
    contacts = np.zeros((count + 1) * NUM_CLASSES, dtype=np.int64)
    for axis, step in FACE_STEPS:
        neighbour = list(coords)
        neighbour[axis] = neighbour[axis] + step
        inside = (neighbour[axis] >= 0) & (neighbour[axis] < sub.shape[axis])
        other = sub[tuple(n[inside] for n in neighbour)]
        keep = other != c
        contacts += np.bincount(ids[inside][keep] * NUM_CLASSES + other[keep], minlength=contacts.size)
    contacts = contacts.reshape(count + 1, NUM_CLASSES).astype(np.float64)
    contacts[:, 0] -= 0.5  # on a tie a lobe wins over background
    receiver = contacts.argmax(axis=1).astype(sub.dtype)
    receiver[contacts.max(axis=1) <= 0] = 0  # touches nothing: background
    new = receiver[ids]
    sub[coords] = new
    return {int(r) for r in np.unique(new)} - {0}


def remove_islands(class_map: np.ndarray, max_passes: int = 1) -> np.ndarray:
    """Step 2: one component per class, fragments handed to their neighbours (a new array).

    One pass over the classes suffices: a fragment is handed to a class it touches; if that class
    was processed already, what it touches is its main component or voxels handed to it since,
    which touch the main component in turn; if not, its own turn comes later in the pass.
    """
    out = np.array(class_map, dtype=np.uint8, copy=True)
    _remove_islands_in_place(out, max_passes)
    return out


def _remove_islands_in_place(out: np.ndarray, max_passes: int = 1) -> None:
    box = bounding_box(out > 0, margin=1)
    if box is None:
        return
    labels = out[box]  # a view: the work happens inside the labelled region
    todo = set(range(1, NUM_CLASSES))
    for _ in range(max_passes):
        receivers: set[int] = set()
        for c in sorted(todo):
            receivers |= _hand_over_class(labels, c)
        if not receivers:
            break
        todo = receivers


def _propagate(labels: np.ndarray, todo: np.ndarray) -> None:
    """One pass: each ``todo`` voxel with a labelled face neighbour takes the largest such label."""
    best = np.zeros_like(labels)
    for axis, step in FACE_STEPS:
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis] = slice(step, None) if step > 0 else slice(None, step)
        dst[axis] = slice(None, -step) if step > 0 else slice(-step, None)
        np.maximum(best[tuple(dst)], labels[tuple(src)], out=best[tuple(dst)])
    take = todo & (best > 0)
    labels[take] = best[take]
    todo &= ~take


def fill_lungs(
    class_map: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    fill_margin_slices: int = 16,
    propagation_passes: int = 2,
) -> np.ndarray:
    """Step 3 on a copy (see :func:`_fill_lungs_in_place`)."""
    out = np.array(class_map, dtype=np.uint8, copy=True)
    _fill_lungs_in_place(out, lung, spacing, fill_margin_slices, propagation_passes)
    return out


def _fill_lungs_in_place(
    out: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    fill_margin_slices: int = 16,
    propagation_passes: int = 2,
) -> bool:
    """Step 3: unlabelled lung voxels take the nearest label.

    Thin gaps (the usual case: a rim between the network's lobes and the lung mask) are closed by
    ``propagation_passes`` passes of face-neighbour propagation (each voxel joins a label it touches,
    so no island appears); what remains gets the nearest label by a Euclidean distance transform in
    slabs. Returns whether the distance transform ran.
    """
    box = bounding_box(lung)
    if box is None:
        return False
    labels = out[box]
    pending = lung[box] & (labels == 0)
    if not pending.any() or not labels.any():
        return False
    for _ in range(propagation_passes):
        _propagate(labels, pending)
        if not pending.any():
            return False
    sx, sy, sz = spacing
    depth = labels.shape[0]
    for start in range(0, depth, FILL_SLAB):
        stop = min(start + FILL_SLAB, depth)
        region = bounding_box(pending[start:stop], margin=16)
        if region is None:
            continue
        _, ys, xs = region
        lo, hi = max(start - fill_margin_slices, 0), min(stop + fill_margin_slices, depth)
        window = labels[lo:hi, ys, xs]
        if not (window > 0).any():
            continue
        indices = ndimage.distance_transform_edt(
            window == 0, sampling=(sz, sy, sx), return_distances=False, return_indices=True
        )
        inner = slice(start - lo, stop - lo)
        nearest = window[indices[0][inner], indices[1][inner], indices[2][inner]]
        del indices
        need = pending[start:stop, ys, xs]
        labels[start:stop, ys, xs][need] = nearest[need]
    return True


def network_lungs(class_map: np.ndarray) -> np.ndarray:
    """The lung region of a label map: its foreground (any class) and every background cavity the
    foreground encloses in 3D (6-connected background not reaching the labelled box's border: a
    nodule or vessel the network left unlabelled). The mediastinum and the airways leave the
    lungs' box at its top or bottom, so they are never enclosed."""
    foreground = np.asarray(class_map) > 0
    region = foreground.copy()
    box = bounding_box(foreground)
    if box is None:
        return region
    inside = ~np.pad(foreground[box], 1)
    components, count = label(inside)  # 6-connected background
    if count > 1:
        open_ = np.zeros(count + 1, dtype=bool)
        open_[components[0, 0, 0]] = True  # the padding: every cavity reaching the border joins it
        enclosed = ~open_[components[1:-1, 1:-1, 1:-1]] & inside[1:-1, 1:-1, 1:-1]
        region[box] |= enclosed
    return region


def restrict_to_lungs(
    class_map: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], margin_mm: float = 0.0
) -> np.ndarray:
    """Step 1: background outside the lung mask grown by ``margin_mm`` in-plane (a new array)."""
    allowed = lung
    if margin_mm > 0 and lung.any():
        sx, sy, _ = spacing
        pad = int(np.ceil(margin_mm / min(sx, sy))) + 1
        (zs, ys, xs) = bounding_box(lung)
        ys = slice(max(ys.start - pad, 0), min(ys.stop + pad, lung.shape[1]))
        xs = slice(max(xs.start - pad, 0), min(xs.stop + pad, lung.shape[2]))
        distance = ndimage.distance_transform_edt(~lung[zs, ys, xs], sampling=(1e6, sy, sx))
        allowed = lung.copy()
        allowed[zs, ys, xs] = distance <= margin_mm
    return np.where(allowed, class_map, 0).astype(np.uint8)


def postprocess(
    class_map: np.ndarray,
    lung: np.ndarray | None,
    spacing: tuple[float, float, float],
    margin_mm: float = 0.0,
) -> np.ndarray:
    """Steps 1-3 on a 7-class label map; without a lung mask only step 2 runs."""
    class_map = np.asarray(class_map)
    if class_map.ndim != 3:
        raise ValueError(f"class_map must be (z, y, x), got shape {class_map.shape}")
    if not np.issubdtype(class_map.dtype, np.integer):
        raise ValueError(f"class_map must hold integer labels, got dtype {class_map.dtype}")
    if class_map.size and (int(class_map.min()) < 0 or int(class_map.max()) >= NUM_CLASSES):
        raise ValueError(
            f"class_map holds labels {int(class_map.min())}..{int(class_map.max())}, beyond 0..{NUM_CLASSES - 1}"
        )
    if lung is None:
        return remove_islands(class_map)
    lung = np.asarray(lung, dtype=bool)
    if lung.shape != class_map.shape:
        raise ValueError(f"lung mask shape {lung.shape} differs from class_map shape {class_map.shape}")
    out = restrict_to_lungs(class_map, lung, spacing, margin_mm)  # the one copy
    _remove_islands_in_place(out)
    if _fill_lungs_in_place(out, lung, spacing):
        _remove_islands_in_place(out)
    return out
