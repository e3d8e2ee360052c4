"""Display colours of the lobes (sRGB), shared by the SEG's Recommended Display CIELab Value and
the overlay of the summary image, so a viewer shows the same lobe in the same colour in both."""

from __future__ import annotations

from m2unet.labels import Lobe

LOBE_RGB: dict[Lobe, tuple[int, int, int]] = {
    Lobe.RIGHT_UPPER: (230, 75, 55),  # red
    Lobe.RIGHT_MIDDLE: (240, 200, 40),  # yellow
    Lobe.RIGHT_LOWER: (60, 180, 75),  # green
    Lobe.LEFT_UPPER: (50, 120, 230),  # blue
    Lobe.LEFT_LOWER: (200, 80, 210),  # magenta
}
