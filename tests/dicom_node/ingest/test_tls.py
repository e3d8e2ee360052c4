"""DICOM TLS: a scanner with a certificate from the configured CA gets in; one without a
certificate, or speaking plain TCP, does not."""

import shutil
import subprocess

import pytest

from dicom_node.config.model import TlsSettings
from dicom_node.ingest.tls import server_context
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import echoscu, have_dcmtk, storescu
from tests.support.node_process import InProcessSCP

pytestmark = pytest.mark.skipif(not (have_dcmtk() and shutil.which("openssl")), reason="DCMTK or openssl missing")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    # a client certificate from a CA the node does not trust
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "2",
            "-subj", "/CN=rogue", cwd=d)
    return d


@pytest.fixture
def tls_scp(tmp_path, pki):
    ctx = server_context(TlsSettings(True, pki / "server.crt", pki / "server.key", pki / "ca.crt", True))
    with InProcessSCP(tmp_path, ssl_context=ctx, series_timeout=0.3) as scp:
        yield scp


def client(pki, name="client"):
    return ["+tls", str(pki / f"{name}.key"), str(pki / f"{name}.crt"), "+cf", str(pki / "ca.crt")]


def test_store_over_tls_with_a_trusted_client_certificate(tls_scp, pki, tmp_path):
    files = write_ct_series(tmp_path / "s", phantom_hu(8, 8))
    run = storescu(tls_scp.port, files, extra=client(pki))
    assert run.responses == ["Success"] * 8, run.output
    assert echoscu(tls_scp.port, extra=client(pki)).returncode == 0


def test_untrusted_missing_or_plain_clients_are_refused(tls_scp, pki):
    assert echoscu(tls_scp.port, extra=client(pki, "rogue"), timeout=30).returncode != 0
    assert echoscu(tls_scp.port, extra=["+tla", "+cf", str(pki / "ca.crt")], timeout=30).returncode != 0
    assert echoscu(tls_scp.port, extra=["-to", "5", "-ta", "5"], timeout=30).returncode != 0
    assert echoscu(tls_scp.port, extra=client(pki)).returncode == 0  # and it still serves good peers


def test_bad_tls_settings_name_the_key(tmp_path, pki):
    with pytest.raises(ValueError, match="tls.certificate"):
        server_context(TlsSettings(True, None, pki / "server.key", pki / "ca.crt"))
    with pytest.raises(ValueError, match="tls.ca_certificates"):
        server_context(TlsSettings(True, pki / "server.crt", pki / "server.key", None, True))
    with pytest.raises(ValueError, match="tls.private_key"):
        server_context(TlsSettings(True, pki / "server.crt", tmp_path / "nope.key", pki / "ca.crt"))


def test_node_process_serves_tls_from_its_config(tmp_path, pki):
    from tests.support.node_process import NodeProcess

    config = {
        "sources": [{"ae_title": "SCANNER"}],
        "tls": {
            "enabled": True,
            "certificate": str(pki / "server.crt"),
            "private_key": str(pki / "server.key"),
            "ca_certificates": str(pki / "ca.crt"),
        },
    }
    node = NodeProcess(config, tmp_path).start()
    try:
        assert echoscu(node.port, extra=client(pki)).returncode == 0
        assert echoscu(node.port, extra=["-to", "5", "-ta", "5"], timeout=30).returncode != 0
    finally:
        assert node.stop() == 0
    assert any(e.get("event") == "scp_listening" and e.get("tls") is True for e in node.log_events())
