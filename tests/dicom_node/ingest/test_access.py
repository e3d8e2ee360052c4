"""Who may associate: called AE, calling AE, host; the A-ASSOCIATE-RJ reasons; series timeouts."""

from pathlib import Path

from dicom_node.ingest.access import RejectReason, check_association, series_timeout_for
from dicom_node.config.model import NodeConfig, NodeSettings, Source


def config(reject_unknown=True, timeout=30.0):
    return NodeConfig(
        node=NodeSettings(ae_title="M2UNET", data_dir=Path("x"), reject_unknown_sources=reject_unknown, series_timeout=timeout),
        sources=(
            Source("CT_ANY"),
            Source("CT_FIXED", host="10.1.2.3", series_timeout=5.0),
            Source("CT_LOCAL", host="localhost"),
        ),
    )


def test_known_source_is_accepted():
    assert check_association(config(), "M2UNET", "CT_ANY", "192.168.0.9") is None
    assert check_association(config(), "M2UNET  ", "CT_ANY  ", "192.168.0.9") is None


def test_wrong_called_ae_is_refused_with_reason_7():
    refusal = check_association(config(), "OTHER", "CT_ANY", "127.0.0.1")
    assert refusal.reason == RejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED == 7
    assert (refusal.result, refusal.source) == (1, 1)
    # even when unknown sources are let in
    assert check_association(config(reject_unknown=False), "OTHER", "WHOEVER", "127.0.0.1").reason == 7


def test_unknown_calling_ae_is_refused_with_reason_3_unless_allowed():
    refusal = check_association(config(), "M2UNET", "STRANGER", "127.0.0.1")
    assert refusal.reason == RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED == 3
    assert refusal.why == "unknown_calling_ae"
    assert check_association(config(reject_unknown=False), "M2UNET", "STRANGER", "127.0.0.1") is None


def test_host_must_match_where_set():
    assert check_association(config(), "M2UNET", "CT_FIXED", "10.1.2.3") is None
    assert check_association(config(), "M2UNET", "CT_FIXED", "::ffff:10.1.2.3") is None
    refusal = check_association(config(), "M2UNET", "CT_FIXED", "10.1.2.4")
    assert refusal.reason == 3 and refusal.why == "wrong_host"
    assert check_association(config(), "M2UNET", "CT_LOCAL", "127.0.0.1") is None


def test_series_timeout_per_source_override():
    assert series_timeout_for(config(timeout=30), "CT_FIXED") == 5.0
    assert series_timeout_for(config(timeout=30), "CT_ANY") == 30.0
    assert series_timeout_for(config(timeout=30), "UNKNOWN") == 30.0
