"""A picture of a lobe map: two slices (upper and lower chest) with the lobes over the lung window."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def overlay_png(volume, lobe_map: np.ndarray, path: Path) -> Path:
    """Two slices (upper and lower chest) with the lobe map over the lung window."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from m2unet.labels import Lobe

    colours = ["#00000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4"]
    cmap = ListedColormap(colours)
    per_slice = [(lobe_map[z] > 0).sum() for z in range(lobe_map.shape[0])]
    lung_slices = [z for z, n in enumerate(per_slice) if n > 0]
    if not lung_slices:
        lung_slices = [lobe_map.shape[0] // 2]
    picks = [lung_slices[int(len(lung_slices) * f)] for f in (0.35, 0.7)]
    figure, axes = plt.subplots(1, 2, figsize=(12, 6.4), dpi=90)
    for ax, z in zip(axes, picks):
        ax.imshow(volume.hu[z], cmap="gray", vmin=-1200, vmax=0)
        overlay = np.ma.masked_where(lobe_map[z] == 0, lobe_map[z])
        ax.imshow(overlay, cmap=cmap, vmin=0, vmax=5, alpha=0.45, interpolation="nearest")
        z_mm = volume.origin[2] + z * volume.spacing[2]
        ax.set_title(f"slice {z} (z = {z_mm:.0f} mm); image left = patient right")
        ax.axis("off")
    handles = [Patch(color=colours[int(lobe)], label=lobe.display_name) for lobe in Lobe]
    figure.legend(handles=handles, loc="lower center", ncol=5)
    figure.suptitle("m2unet demo weights on the real series: lobe map (synthetic training only)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
