"""The summary Secondary Capture: valid, in the study, lobes in colour, switchable."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_node.results.build import build_result_set, write_result_set
from dicom_node.results.colours import LOBE_RGB
from dicom_node.results.summary import PANEL, key_slices, render_summary
from dicom_node.results.uids import ResultKind
from m2unet.labels import Lobe
from tests.support.paths import REAL_CT
from tests.support.results_data import CREATED, dciodvfy_errors, real_ct_case, warning_pixels

pytestmark = pytest.mark.skipif(not REAL_CT.exists(), reason="shared/data/real-ct is absent")


@pytest.fixture(scope="module")
def case():
    return real_ct_case()


def test_summary_is_valid_rgb_secondary_capture_in_study(case, tmp_path):
    written = write_result_set(case.result_set, tmp_path)
    path = written[ResultKind.SUMMARY]
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.BurnedInAnnotation == "YES"
    assert ds.StudyInstanceUID == case.reconstructed.datasets[0].StudyInstanceUID
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)


def test_key_slices_span_the_lungs():
    lobe_map = np.zeros((40, 8, 8), np.uint8)
    lobe_map[10:31, 2:6, 2:6] = Lobe.RIGHT_LOWER
    assert key_slices(lobe_map) == [15, 20, 25]
    assert key_slices(np.zeros((40, 8, 8), np.uint8)) == [10, 20, 30]


def test_overlay_shows_each_lobe_colour_and_table(case):
    pixels = render_summary(case.reconstructed.volume.hu, case.lobe_map, case.findings)
    panels = pixels[:PANEL].astype(int)
    grey = (panels[..., 0] == panels[..., 1]) & (panels[..., 1] == panels[..., 2])
    assert (~grey).mean() > 0.05  # the lobes are overlaid in colour
    # each lobe's colour swatch is burned into the table below the panels
    table = pixels[PANEL:]
    for lobe in Lobe:
        assert (table == np.asarray(LOBE_RGB[lobe], np.uint8)).all(axis=-1).sum() >= 50, lobe
    assert (table > 200).all(axis=-1).sum() > 500  # white text


def test_summary_can_be_switched_off(case):
    result_set = build_result_set(
        case.source, case.reconstructed.volume.hu, case.lobe_map, case.findings,
        version=1, ae_title="M2UNET", created=CREATED, summary_image=False,
    )
    assert result_set.summary is None
    assert set(result_set.objects()) == {ResultKind.SEG, ResultKind.SR}


def test_untrained_weights_are_flagged_on_the_image(case):
    from dataclasses import replace

    assert warning_pixels(case, case.findings) == 0
    assert warning_pixels(case, replace(case.findings, trained=False)) >= 10


def _qc_pixels(pixels, colour) -> int:
    return int((pixels[PANEL:] == np.asarray(colour, np.uint8)).all(axis=-1).sum())


def test_quality_check_line_on_the_image(case):
    from dataclasses import replace

    from dicom_node.results.summary import QC_FAILED_RGB, QC_PASSED_RGB, qc_line
    from m2unet.qc import Check, QualityCheck

    hu = case.reconstructed.volume.hu
    failed = case.findings  # the made-up lobe map fails some checks
    assert not failed.qc.passed
    text, colour = qc_line(failed)
    assert text.startswith("Quality check: FAILED - ") and colour == QC_FAILED_RGB
    assert failed.qc.short_reasons()[0] in text
    passed = replace(failed, qc=QualityCheck([Check(c.name, True, "fine") for c in failed.qc.checks]))
    assert qc_line(passed) == ("Quality check: passed", QC_PASSED_RGB)
    failed_image = render_summary(hu, case.lobe_map, failed)
    passed_image = render_summary(hu, case.lobe_map, passed)
    assert _qc_pixels(failed_image, QC_FAILED_RGB) >= 50 and _qc_pixels(failed_image, QC_PASSED_RGB) == 0
    assert _qc_pixels(passed_image, QC_PASSED_RGB) >= 20 and _qc_pixels(passed_image, QC_FAILED_RGB) == 0
    # one detail line per failed check below the table
    assert failed_image.shape[0] > passed_image.shape[0]
    assert qc_line(replace(failed, qc=None)) is None
