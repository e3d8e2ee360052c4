"""Lobe post-processing a radiologist expects of a 7-class label map (z, y, x).

1. Lungs only: labels outside the lung mask (:func:`m2unet.lungs.lung_mask`, optionally grown by
   ``margin_mm`` in-plane, for opacities at the pleura the HU mask leaves out) become background.
2. No islands: for every class the largest 3D component (26-connected) stays; each smaller
   fragment is handed to the class that touches it on the most voxel faces (background included,
   which wins only when it touches strictly more than every lobe). Repeated until stable (at most
   ``max_passes``), since a handed fragment may join another class's fragment.
3. No holes in the lungs: lung voxels left unlabelled get the label of the nearest labelled voxel
   (Euclidean distance in mm, computed in slabs of slices with an overlap of ``fill_margin_slices``
   so the memory stays bounded; a voxel farther than that from any label in its slab stays
   unlabelled). By the nearest-point property the filled voxels join the component they are
   nearest to, so filling creates no new islands; a last island pass makes sure.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from m2unet.labels import NUM_CLASSES

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
FILL_SLAB = 64


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    return ndimage.find_objects(mask.view(np.uint8))[0]


def _face_shifts(ndim: int = 3):
    """(source, neighbour) slice pairs for the 6 face neighbours."""
    for axis in range(ndim):
        for forward in (True, False):
            src = [slice(None)] * ndim
            dst = [slice(None)] * ndim
            src[axis] = slice(0, -1) if forward else slice(1, None)
            dst[axis] = slice(1, None) if forward else slice(0, -1)
            yield tuple(src), tuple(dst)


def _hand_over_fragments(class_map: np.ndarray) -> bool:
    """One pass of step 2, in place; returns whether anything changed."""
    changed = False
    for c in range(1, NUM_CLASSES):
        box = _bbox(class_map == c)
        if box is None:
            continue
        # grow the box by one voxel so that the fragments' neighbours are inside it
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, class_map.shape))
        sub = class_map[box]
        components, count = ndimage.label(sub == c, structure=CONNECTIVITY_26)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        fragment = components.copy()
        fragment[components == sizes.argmax()] = 0
        contacts = np.zeros((count + 1) * NUM_CLASSES, dtype=np.int64)
        for src, dst in _face_shifts():
            a, b = fragment[src], sub[dst]
            touching = (a > 0) & (b != c)
            contacts += np.bincount(a[touching] * NUM_CLASSES + b[touching], minlength=contacts.size)
        contacts = contacts.reshape(count + 1, NUM_CLASSES).astype(np.float64)
        contacts[:, 0] -= 0.5  # on a tie a lobe wins over background
        receiver = contacts.argmax(axis=1).astype(sub.dtype)
        receiver[contacts.max(axis=1) <= 0] = 0  # touches nothing: background
        receiver[0] = c  # not a fragment: unchanged
        where = fragment > 0
        sub[where] = receiver[fragment[where]]
        changed = True
    return changed


def remove_islands(class_map: np.ndarray, max_passes: int = 3) -> np.ndarray:
    """Step 2: one component per class, fragments handed to their neighbours (a new array)."""
    out = np.array(class_map, dtype=np.uint8, copy=True)
    for _ in range(max_passes):
        if not _hand_over_fragments(out):
            break
    return out


def fill_lungs(
    class_map: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    fill_margin_slices: int = 16,
) -> np.ndarray:
    """Step 3: unlabelled lung voxels take the nearest label (a new array)."""
    out = np.array(class_map, dtype=np.uint8, copy=True)
    todo = lung & (out == 0)
    if not todo.any() or not (out > 0).any():
        return out
    sx, sy, sz = spacing
    (zs, ys, xs) = _bbox(todo | (out > 0))
    for start in range(zs.start, zs.stop, FILL_SLAB):
        stop = min(start + FILL_SLAB, zs.stop)
        if not todo[start:stop, ys, xs].any():
            continue
        lo, hi = max(start - fill_margin_slices, zs.start), min(stop + fill_margin_slices, zs.stop)
        labels = out[lo:hi, ys, xs]
        if not (labels > 0).any():
            continue
        indices = ndimage.distance_transform_edt(
            labels == 0, sampling=(sz, sy, sx), return_distances=False, return_indices=True
        )
        inner = slice(start - lo, stop - lo)
        nearest = labels[indices[0][inner], indices[1][inner], indices[2][inner]]
        del indices
        region = out[start:stop, ys, xs]
        need = todo[start:stop, ys, xs]
        region[need] = nearest[need]
    return out


def restrict_to_lungs(
    class_map: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], margin_mm: float = 0.0
) -> np.ndarray:
    """Step 1: background outside the lung mask grown by ``margin_mm`` in-plane (a new array)."""
    allowed = lung
    if margin_mm > 0 and lung.any():
        sx, sy, _ = spacing
        pad = int(np.ceil(margin_mm / min(sx, sy))) + 1
        (zs, ys, xs) = _bbox(lung)
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
    if class_map.size and int(class_map.max()) >= NUM_CLASSES:
        raise ValueError(f"class_map holds label {int(class_map.max())}, beyond 0..{NUM_CLASSES - 1}")
    if lung is None:
        return remove_islands(class_map)
    lung = np.asarray(lung, dtype=bool)
    if lung.shape != class_map.shape:
        raise ValueError(f"lung mask shape {lung.shape} differs from class_map shape {class_map.shape}")
    out = restrict_to_lungs(class_map, lung, spacing, margin_mm)
    out = remove_islands(out)
    allowed = out > 0
    out = fill_lungs(out, lung, spacing)
    if (out > 0).sum() != allowed.sum():
        out = remove_islands(out)
    return out
