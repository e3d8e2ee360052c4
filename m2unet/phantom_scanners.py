"""Scanner profiles: how the "scanners" of the synthetic data differ in noise, intensity and storage.

The paper's data came from seven hospitals and five scanner models (Section IV-A): Philips
Ingenuity CT iDOSE4, GE BrightSpeed S, Siemens SOMATOM Perspective, Hitachi ECLOS and Anke
ANATOM 16HD. A profile names one of them and fixes what differs between scanners in the images:
noise level and texture (reconstruction kernel), a small intensity calibration offset and gain,
the value written outside the circular reconstruction field of view, and how pixels are stored
(signed, or unsigned with a rescale intercept of -1024). The numbers are plausible, not measured
on those machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScannerProfile:
    """One synthetic scanner; HU values are what the scanner writes, not tissue truth."""

    name: str
    manufacturer: str
    model_name: str
    kvp: float
    convolution_kernel: str
    noise_sd_hu: tuple[float, float]  # range of the per-case noise standard deviation
    noise_correlation: float  # 0 white (sharp kernel) .. 1 strongly correlated (smooth kernel)
    blur: float  # in-plane edge blur 0..1 (a 3-tap kernel's side weight)
    hu_offset: float  # calibration offset, HU
    hu_gain: float  # calibration gain
    outside_fov_hu: int  # value outside the circular reconstruction field of view
    pixel_representation: int  # 0 unsigned, 1 signed (two's complement)
    rescale_intercept: float
    software_versions: str

    @property
    def min_hu(self) -> int:
        """The smallest HU the storage can represent (16 bits stored)."""
        return int(self.rescale_intercept) - (32768 if self.pixel_representation else 0)


SCANNERS: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            name="philips-ingenuity",
            manufacturer="Philips",
            model_name="Ingenuity CT",
            kvp=120.0,
            convolution_kernel="B",
            noise_sd_hu=(10.0, 18.0),
            noise_correlation=0.6,
            blur=0.22,
            hu_offset=-4.0,
            hu_gain=1.0,
            outside_fov_hu=-1024,
            pixel_representation=0,
            rescale_intercept=-1024.0,
            software_versions="4.1.5 iDose4",
        ),
        ScannerProfile(
            name="ge-brightspeed",
            manufacturer="GE MEDICAL SYSTEMS",
            model_name="BrightSpeed S",
            kvp=120.0,
            convolution_kernel="LUNG",
            noise_sd_hu=(22.0, 38.0),
            noise_correlation=0.15,
            blur=0.05,
            hu_offset=6.0,
            hu_gain=1.01,
            outside_fov_hu=-2000,
            pixel_representation=1,
            rescale_intercept=-1024.0,
            software_versions="sd_bs.06",
        ),
        ScannerProfile(
            name="siemens-perspective",
            manufacturer="SIEMENS",
            model_name="SOMATOM Perspective",
            kvp=130.0,
            convolution_kernel="B70s",
            noise_sd_hu=(25.0, 45.0),
            noise_correlation=0.1,
            blur=0.0,
            hu_offset=-8.0,
            hu_gain=0.99,
            outside_fov_hu=-1024,
            pixel_representation=0,
            rescale_intercept=-1024.0,
            software_versions="syngo CT VC30",
        ),
        ScannerProfile(
            name="hitachi-eclos",
            manufacturer="Hitachi Medical Corporation",
            model_name="ECLOS",
            kvp=120.0,
            convolution_kernel="LUNG",
            noise_sd_hu=(14.0, 26.0),
            noise_correlation=0.35,
            blur=0.12,
            hu_offset=10.0,
            hu_gain=1.02,
            outside_fov_hu=-2048,
            pixel_representation=1,
            rescale_intercept=0.0,
            software_versions="V2.30",
        ),
        ScannerProfile(
            name="anke-anatom",
            manufacturer="ANKE",
            model_name="ANATOM 16HD",
            kvp=120.0,
            convolution_kernel="STANDARD",
            noise_sd_hu=(12.0, 22.0),
            noise_correlation=0.5,
            blur=0.18,
            hu_offset=0.0,
            hu_gain=0.98,
            outside_fov_hu=-1024,
            pixel_representation=1,
            rescale_intercept=-1024.0,
            software_versions="3.0",
        ),
    )
}


def resolve_scanner(scanner, rng: np.random.Generator) -> ScannerProfile:
    """A profile from ``None`` (drawn), a profile name, or a :class:`ScannerProfile`."""
    if scanner is None:
        names = sorted(SCANNERS)
        return SCANNERS[names[int(rng.integers(len(names)))]]
    if isinstance(scanner, ScannerProfile):
        return scanner
    if isinstance(scanner, str) and scanner in SCANNERS:
        return SCANNERS[scanner]
    raise ValueError(f"scanner = {scanner!r} is not one of {sorted(SCANNERS)} or a ScannerProfile")
