"""Tiny prepared phantom cases shared by the training tests (4 mm grid, 32 x 32 patches)."""

import pytest

from m2unet.phantom import make_phantom
from m2unet.preprocessing import PreprocessingConfig
from train.fit import preprocessing_config
from train.prepared import prepare_case
from train.recipe import SMOKE

TINY_SHAPE = (16, 64, 64)


def tiny_cases(count: int, config: PreprocessingConfig | None = None):
    config = config or preprocessing_config(SMOKE)
    cases = []
    for seed in range(count):
        p = make_phantom(seed, shape=TINY_SHAPE, severity="severe" if seed % 2 else "non-severe")
        cases.append(prepare_case(f"tiny{seed}", p.volume, p.class_map, p.severe, config))
    return cases


@pytest.fixture(scope="session")
def tiny():
    return tiny_cases(4)
