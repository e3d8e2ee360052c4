"""The real series' result set, shared by the SEG and SR tests (built and written once)."""

from __future__ import annotations

import pytest

from tests.support.results_data import real_ct_case


@pytest.fixture(scope="package")
def case():
    return real_ct_case()


@pytest.fixture(scope="package")
def written(case, tmp_path_factory):
    from dicom_node.results.build import write_result_set

    return write_result_set(case.result_set, tmp_path_factory.mktemp("results"))
