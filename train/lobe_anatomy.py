"""Where the lobes sit: each lobe's centroid in patient coordinates, and the anatomical checks.

A lobe map says nothing about a real chest without ground truth, but anatomy still holds it to a
few facts, checked on the centroids in LPS millimetres (+x the patient's left, +y posterior,
+z towards the head): the right lobes lie on the patient's right of the left ones, each upper lobe
above its lower lobe, and the right middle lobe in front of the right lower lobe.
"""

from __future__ import annotations

import numpy as np


def lobe_anatomy(lobe_map: np.ndarray, volume) -> dict:
    """Centroids of each lobe in patient coordinates (LPS mm) and the anatomical checks."""
    from m2unet.labels import Lobe

    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(volume.spacing, dtype=float)
    origin = np.asarray(volume.origin, dtype=float)
    centroids = {}
    for lobe in Lobe:
        zyx = np.argwhere(lobe_map == int(lobe))
        if not len(zyx):
            continue
        index_xyz = zyx[:, ::-1].mean(axis=0)
        centroids[lobe.name.lower()] = (origin + direction @ (index_xyz * spacing)).round(1).tolist()
    c = {k: np.asarray(v) for k, v in centroids.items()}
    checks = {}
    if all(k in c for k in ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")):
        right_x = max(c["right_upper"][0], c["right_middle"][0], c["right_lower"][0])
        left_x = min(c["left_upper"][0], c["left_lower"][0])
        checks["right_lobes_on_patient_right"] = bool(right_x < left_x)  # LPS: +x is the patient's left
        checks["right_upper_above_right_lower"] = bool(c["right_upper"][2] > c["right_lower"][2])  # +z head
        checks["left_upper_above_left_lower"] = bool(c["left_upper"][2] > c["left_lower"][2])
        checks["middle_lobe_anterior"] = bool(c["right_middle"][1] < c["right_lower"][1])  # LPS: -y anterior
    return {"centroids_lps_mm": centroids, "checks": checks, "all_pass": bool(checks) and all(checks.values())}
