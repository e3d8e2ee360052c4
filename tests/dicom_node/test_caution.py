"""Results made with weights that are not for clinical use say so where a reader looks first:
every result series' description, and the summary image in red. The weights' ``caution`` travels
from the weights file through the predictor into the findings."""

from __future__ import annotations

from dataclasses import replace

import pydicom

from dicom_node.results.build import build_result_set, write_result_set
from dicom_node.results.findings import NOT_FOR_CLINICAL_USE, findings_from
from m2unet.phantom import make_phantom
from m2unet.predictor import Predictor
from m2unet.quantify import quantify
from m2unet.weights import WeightsMetadata, load_weights, random_weights, save_weights
from tests.support.results_data import CREATED, small_case, warning_pixels

CAUTION = "Demo weights, synthetic training only: not for clinical use"


def _descriptions(case, findings, folder):
    result_set = build_result_set(case.source, case.reconstructed.volume.hu, case.lobe_map, findings, version=1,
                                  ae_title="M2UNET", created=CREATED)
    written = write_result_set(result_set, folder)
    return {kind: pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription for kind, path in written.items()}


def test_every_result_series_is_marked_when_the_weights_carry_a_caution(tmp_path):
    case = small_case(tmp_path / "case")
    plain = _descriptions(case, case.findings, tmp_path / "plain")
    assert len(plain) == 3 and not any(NOT_FOR_CLINICAL_USE in d for d in plain.values())
    marked = _descriptions(case, replace(case.findings, caution=CAUTION), tmp_path / "marked")
    assert marked.keys() == plain.keys()
    for kind, description in marked.items():
        assert description == plain[kind] + NOT_FOR_CLINICAL_USE and len(description) <= 64
    untrained = _descriptions(case, replace(case.findings, trained=False), tmp_path / "untrained")
    assert all(d.endswith(NOT_FOR_CLINICAL_USE) for d in untrained.values())


def test_the_summary_image_prints_the_caution_in_red(tmp_path):
    case = small_case(tmp_path / "case", slices=16, size=128)
    assert warning_pixels(case, case.findings) == 0
    assert warning_pixels(case, replace(case.findings, caution=CAUTION)) >= 10


def test_the_caution_travels_from_the_weights_file_to_the_findings(tmp_path):
    source = load_weights(random_weights(tmp_path / "random.pt"))
    trained = WeightsMetadata.from_dict({**source.metadata.to_dict(), "trained": True, "training_data": "phantoms",
                                         "caution": CAUTION})
    path = tmp_path / "w.pt"
    save_weights(path, source.model, trained)
    phantom = make_phantom(1, shape=(16, 64, 64))
    prediction = Predictor.from_weights(path, device="cpu", bags=1).predict(phantom.volume, seed=0)
    assert prediction.caution == CAUTION
    findings = findings_from(prediction, quantify(phantom.volume, prediction.lobe_map))
    assert findings.caution == CAUTION and not findings.for_clinical_use


def test_weights_files_without_a_caution_read_as_none(tmp_path):
    data = load_weights(random_weights(tmp_path / "random.pt")).metadata.to_dict()
    data.pop("caution")
    assert WeightsMetadata.from_dict(data).caution == ""
