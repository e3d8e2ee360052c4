"""The sender over DICOM TLS, against a real pynetdicom Storage SCP speaking TLS on loopback.

The PKI is made here with the ``openssl`` command (a test CA, a server certificate naming
127.0.0.1 and localhost, one naming another host only, a client certificate, and a rogue CA):
delivery over TLS, mutual TLS with the node's [tls] identity as the default client certificate,
a wrong CA or a wrong host name failing transiently with a clear ``last_error`` (and delivering
once the config is fixed), validation naming a missing file, and ``dest add --tls`` / ``dest
echo`` over TLS.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node import cli

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.config.model import ConfigError, Destination, TlsSettings, config_from_text, load_config
from dicom_node.config.admin import c_echo
from dicom_node.delivery.sender import Sender
from tests.support.results_data import StaticConfig, node_config, outbox_objects, small_case

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl missing")

RETRY_INITIAL = 30.0


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "2", "-subj", f"/CN=test {ca}", cwd=d)
    (d / "loopback.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "elsewhere.ext").write_text("subjectAltName=DNS:pacs.example.org\n")
    for name, ext in (("server", "loopback.ext"), ("elsewhere", "elsewhere.ext"), ("client", "loopback.ext")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=d)
    return d


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("case"))


class TlsStorageSCP:
    """A pynetdicom Storage SCP with TLS on 127.0.0.1 (a free port); records what it stored and
    the TLS facts of each association."""

    def __init__(self, pki: Path, sop_classes, cert: str = "server", require_client_certificate: bool = False):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
        context.load_verify_locations(str(pki / "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
        self.stored: list[str] = []
        self.sessions: list[dict] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="TLSPACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)],
        )
        self.port = self.server.server_address[1]

    def _on_store(self, event):
        sock = event.assoc.dul.socket.socket
        peer = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        with self._lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
            self.sessions.append(
                {
                    "tls": isinstance(sock, ssl.SSLSocket),
                    "version": sock.version() if isinstance(sock, ssl.SSLSocket) else None,
                    "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None,
                }
            )
        return 0x0000

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def objects(case, tmp_path):
    return outbox_objects(case, tmp_path / "results")


def _scp(pki, objects, **kwargs) -> TlsStorageSCP:
    return TlsStorageSCP(pki, sorted({o.sop_class_uid for o in objects}), **kwargs)


def tls_destination(port: int, **tls) -> Destination:
    return Destination(name="pacs-tls", ae_title="TLSPACS", host="127.0.0.1", port=port, tls=True, **tls)


def _sender(data_dir: Path, destinations, node_tls: TlsSettings | None = None, **sender) -> tuple[Sender, object]:
    config = node_config(data_dir, destinations, retry_initial=RETRY_INITIAL, retry_max=120.0, **sender)
    if node_tls is not None:
        config = replace(config, tls=node_tls)
    conn = db.connect(data_dir)
    s = Sender(StaticConfig(config))
    s._conn = conn
    return s, conn


def test_delivers_over_tls_verifying_the_destination(pki, objects, tmp_path):
    scp = _scp(pki, objects)
    try:
        sender, conn = _sender(tmp_path / "data", [tls_destination(scp.port, tls_ca_certificates=pki / "ca.crt")])
        outbox.enqueue(conn, objects, ["pacs-tls"])
        assert sender.deliver_due() == 3
        assert sorted(scp.stored) == sorted(o.sop_instance_uid for o in objects)
        assert all(s["tls"] and s["version"] in ("TLSv1.2", "TLSv1.3") for s in scp.sessions)
        assert all(s["client"] is None for s in scp.sessions)  # no identity configured: none offered
        summary = outbox.delivery_summary(conn)
        assert (summary["delivered"], summary["pending"]) == (3, 0)
        conn.close()
    finally:
        scp.stop()


def test_mutual_tls_offers_the_node_identity_by_default_and_the_entry_can_override_it(pki, objects, tmp_path):
    scp = _scp(pki, objects, require_client_certificate=True)
    try:
        # [tls] is not enabled for the SCP side, but its certificate and key are the node's identity
        node_tls = TlsSettings(enabled=False, certificate=pki / "client.crt", private_key=pki / "client.key",
                               ca_certificates=pki / "ca.crt")
        sender, conn = _sender(tmp_path / "data", [tls_destination(scp.port)], node_tls=node_tls)
        outbox.enqueue(conn, objects[:1], ["pacs-tls"])
        assert sender.deliver_due() == 1  # the CA also came from [tls] ca_certificates
        assert scp.sessions[-1]["client"] == "client"

        # the entry's own pair wins; without any client certificate the PACS refuses (transient)
        sender, conn2 = _sender(
            tmp_path / "data2",
            [tls_destination(scp.port, tls_ca_certificates=pki / "ca.crt")],
        )
        outbox.enqueue(conn2, objects[:1], ["pacs-tls"])
        assert sender.deliver_due() == 0
        (item,) = outbox.delivery_summary(conn2)["items"]
        assert item["state"] == "pending" and item["attempts"] == 1
        assert "client certificate" in item["last_error"] or "TLS handshake" in item["last_error"], item["last_error"]
        sender.live_config.current = replace(
            sender.live_config.current,
            destinations=(
                tls_destination(scp.port, tls_ca_certificates=pki / "ca.crt", tls_certificate=pki / "client.crt",
                                tls_private_key=pki / "client.key"),
            ),
        )
        assert sender.deliver_due(now=time.time() + RETRY_INITIAL + 1) == 1
        assert scp.sessions[-1]["client"] == "client"
        conn.close()
        conn2.close()
    finally:
        scp.stop()


def test_wrong_ca_fails_transiently_with_a_clear_error_then_delivers_once_fixed(pki, objects, tmp_path):
    scp = _scp(pki, objects)
    try:
        sender, conn = _sender(tmp_path / "data", [tls_destination(scp.port, tls_ca_certificates=pki / "rogue-ca.crt")])
        outbox.enqueue(conn, objects, ["pacs-tls"])
        start = time.time()
        with structlog.testing.capture_logs() as logs:
            assert sender.deliver_due() == 0
        assert scp.stored == []
        summary = outbox.delivery_summary(conn)
        assert (summary["pending"], summary["failed"], summary["delivered"]) == (3, 0, 0)
        for item in summary["items"]:
            assert item["attempts"] == 1
            assert item["last_error"].startswith("TLS handshake with 127.0.0.1:")
            assert "certificate was not accepted" in item["last_error"]
            assert "certificate" in item["last_error"].split("not accepted: ", 1)[1]  # OpenSSL's verify message
            # the existing backoff: the first retry after retry_initial
            assert start + RETRY_INITIAL - 1 <= item["next_attempt"] <= time.time() + RETRY_INITIAL + 1
        events = [e["event"] for e in logs]
        assert "tls_handshake_failed" in events and "send_deferred" in events
        text = repr(logs)
        for private in ("Test^Synthetic", "SYN-0001", "PRIVATE KEY", "BEGIN"):  # the phantom's name and ID
            assert private not in text  # no patient data, no key material in the logs
        # not due yet: nothing is tried before the backoff delay
        assert sender.deliver_due() == 0 and outbox.delivery_summary(conn)["items"][0]["attempts"] == 1
        # a second failure doubles the delay
        assert sender.deliver_due(now=time.time() + RETRY_INITIAL + 1) == 0
        item = outbox.delivery_summary(conn)["items"][0]
        assert item["attempts"] == 2 and item["next_attempt"] >= time.time() + 2 * RETRY_INITIAL - 2
        # the admin fixes the CA (hot reload): everything is delivered at the next attempt
        sender.live_config.current = replace(
            sender.live_config.current, destinations=(tls_destination(scp.port, tls_ca_certificates=pki / "ca.crt"),)
        )
        assert sender.deliver_due(now=time.time() + 10 * RETRY_INITIAL) == 3
        assert sorted(scp.stored) == sorted(o.sop_instance_uid for o in objects)
        conn.close()
    finally:
        scp.stop()


def test_host_name_is_checked_unless_turned_off(pki, objects, tmp_path):
    scp = _scp(pki, objects, cert="elsewhere")  # a certificate for pacs.example.org, from the right CA
    try:
        checked = tls_destination(scp.port, tls_ca_certificates=pki / "ca.crt")
        sender, conn = _sender(tmp_path / "data", [checked])
        outbox.enqueue(conn, objects[:1], ["pacs-tls"])
        assert sender.deliver_due() == 0
        (item,) = outbox.delivery_summary(conn)["items"]
        assert item["state"] == "pending", item
        assert "address mismatch" in item["last_error"] and "tls_verify_hostname" in item["last_error"], item["last_error"]
        sender.live_config.current = replace(
            sender.live_config.current, destinations=(replace(checked, tls_verify_hostname=False),)
        )
        assert sender.deliver_due(now=time.time() + RETRY_INITIAL + 1) == 1
        conn.close()
    finally:
        scp.stop()


def test_a_plain_tcp_destination_marked_tls_is_a_clear_transient_failure(pki, objects, tmp_path):
    ae = AE(ae_title="PLAIN")
    for sop_class in sorted({o.sop_class_uid for o in objects}):
        ae.add_supported_context(sop_class)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        sender, conn = _sender(tmp_path / "data", [tls_destination(server.server_address[1], tls_ca_certificates=pki / "ca.crt")])
        outbox.enqueue(conn, objects[:1], ["pacs-tls"])
        assert sender.deliver_due() == 0
        (item,) = outbox.delivery_summary(conn)["items"]
        assert item["state"] == "pending"
        assert item["last_error"].startswith("TLS handshake with") and "speak TLS" in item["last_error"], item["last_error"]
        conn.close()
    finally:
        server.shutdown()


def test_unusable_tls_files_at_send_time_are_transient_and_named(pki, objects, tmp_path):
    gone = tmp_path / "renewed-and-misplaced.crt"
    sender, conn = _sender(tmp_path / "data", [tls_destination(9, tls_ca_certificates=gone)])
    outbox.enqueue(conn, objects[:1], ["pacs-tls"])
    assert sender.deliver_due() == 0
    (item,) = outbox.delivery_summary(conn)["items"]
    assert item["state"] == "pending" and item["attempts"] == 1
    assert "tls_ca_certificates" in item["last_error"] and str(gone) in item["last_error"]
    conn.close()


# --- the config file ------------------------------------------------------------------------------


def _config_text(data_dir: Path, entry: str, tls: str = "") -> str:
    return (
        f'[node]\ndata_dir = "{data_dir}"\n\n{tls}'
        '[[destinations]]\nname = "pacs-tls"\nae_title = "TLSPACS"\nhost = "127.0.0.1"\nport = 2762\n' + entry
    )


def test_config_with_a_missing_ca_file_is_refused_naming_the_key_and_the_file(tmp_path, pki):
    missing = tmp_path / "no-such-ca.crt"
    path = tmp_path / "node.toml"
    path.write_text(_config_text(tmp_path / "data", f'tls = true\ntls_ca_certificates = "{missing}"\n'))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    (problem,) = refused.value.problems
    assert problem.startswith("destinations[0].tls_ca_certificates = ")
    assert "file not found" in problem and str(missing) in problem

    # relative paths are taken from the config's folder, like every other path
    shutil.copy(pki / "ca.crt", tmp_path / "pacs-ca.crt")
    path.write_text(_config_text(tmp_path / "data", 'tls = true\ntls_ca_certificates = "pacs-ca.crt"\n'))
    (dest,) = load_config(path).destinations
    assert dest.tls and dest.tls_ca_certificates == tmp_path / "pacs-ca.crt" and dest.tls_verify_hostname


@pytest.mark.parametrize(
    ("entry", "tls", "key", "words"),
    [
        ('tls_ca_certificates = "{pki}/ca.crt"\n', "", "destinations[0].tls_ca_certificates", "tls is not true"),
        ('tls = true\ntls_certificate = "{pki}/client.crt"\n', "", "destinations[0].tls_private_key", "required with"),
        ('tls = true\ntls_private_key = "{pki}/client.key"\n', "", "destinations[0].tls_certificate", "required with"),
        ("tls = true\n", '[tls]\ncertificate = "{pki}/gone.crt"\nprivate_key = "{pki}/client.key"\n\n', "tls.certificate",
         "uses it"),
        ('tls = "yes"\n', "", "destinations[0].tls", "true or false"),
        ("tls = true\ntls_verify_hostname = 0\n", "", "destinations[0].tls_verify_hostname", "true or false"),
        ('tls = true\ntls_verfy_hostname = false\n', "", "destinations[0].tls_verfy_hostname", "tls_verify_hostname"),
    ],
)
def test_destination_tls_rules(tmp_path, pki, entry, tls, key, words):
    text = _config_text(tmp_path / "data", entry.format(pki=pki), tls.format(pki=pki))
    with pytest.raises(ConfigError) as refused:
        config_from_text(text, tmp_path / "node.toml")
    assert [p.split(" = ")[0] for p in refused.value.problems] == [key]
    assert words in refused.value.problems[0]


def test_defaults_no_tls_and_good_tls_entries_parse(tmp_path, pki):
    plain = config_from_text(_config_text(tmp_path / "data", ""), tmp_path / "node.toml")
    assert plain.destinations[0].tls is False
    node_tls = f'[tls]\ncertificate = "{pki}/client.crt"\nprivate_key = "{pki}/client.key"\n\n'
    config = config_from_text(
        _config_text(tmp_path / "data", "tls = true\ntls_verify_hostname = false\n", node_tls), tmp_path / "node.toml"
    )
    (dest,) = config.destinations
    assert dest.tls and not dest.tls_verify_hostname and dest.tls_certificate is None
    assert config.tls.enabled is False and config.tls.certificate == pki / "client.crt"


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_dest_add_with_tls_keeps_comments_and_dest_echo_goes_over_tls(pki, objects, tmp_path, capsys):
    scp = _scp(pki, objects)
    try:
        path = tmp_path / "node.toml"
        path.write_text(
            f'# my node\n[node]\ndata_dir = "{tmp_path / "data"}"  # state here\n\n# results go here\n',
            encoding="utf-8",
        )
        assert cli.main(["--config", str(path), "dest", "add", "pacs-tls", "TLSPACS", "127.0.0.1", str(scp.port),
                         "--tls-ca-certificates", str(pki / "ca.crt")]) == 0
        out = capsys.readouterr().out
        assert "DICOM TLS" in out and str(pki / "ca.crt") in out
        text = path.read_text()
        assert text.startswith("# my node\n") and "# state here" in text and "# results go here" in text
        assert "tls = true" in text and f'tls_ca_certificates = "{pki / "ca.crt"}"' in text
        (dest,) = load_config(path).destinations
        assert dest.tls and dest.tls_ca_certificates == pki / "ca.crt"

        assert cli.main(["--config", str(path), "dest", "echo", "pacs-tls"]) == 0
        assert "success" in capsys.readouterr().out
        assert cli.main(["--config", str(path), "dest", "list"]) == 0
        listed = capsys.readouterr().out
        assert any(line.split()[:1] == ["pacs-tls"] and line.split()[-1] == "yes" for line in listed.splitlines())

        # a CA file that is not there: refused, naming the key and the file; the file is unchanged
        assert cli.main(["--config", str(path), "dest", "add", "other", "TLSPACS", "127.0.0.1", "2762", "--tls",
                         "--tls-ca-certificates", str(tmp_path / "nope.crt")]) == 2
        err = capsys.readouterr().err
        assert "destinations[1].tls_ca_certificates" in err and str(tmp_path / "nope.crt") in err
        assert path.read_text() == text
    finally:
        scp.stop()


def test_echo_names_a_certificate_problem(pki, objects, tmp_path):
    scp = _scp(pki, objects)
    try:
        config = node_config(tmp_path / "data", [])
        for ca, expected_ok in (("rogue-ca.crt", False), ("ca.crt", True)):
            dest = tls_destination(scp.port, tls_ca_certificates=pki / ca)
            outcome = c_echo(config, dest.ae_title, dest.host, dest.port, timeout=5, destination=dest)
            assert outcome.ok is expected_ok, outcome.reason
            if not expected_ok:
                assert "TLS handshake failed" in outcome.reason and "certificate" in outcome.reason
    finally:
        scp.stop()
