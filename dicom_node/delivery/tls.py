"""Outbound DICOM TLS (PS3.15 B.1): the client-side ``ssl.SSLContext`` of the sender's
associations to ``[[destinations]]`` with ``tls = true``.

The destination's certificate is always verified; see :func:`client_context`. The inbound side
is :mod:`dicom_node.ingest.tls`.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config.model import Destination, TlsSettings


@dataclass(frozen=True)
class DestinationTlsFiles:
    """The files a TLS destination uses once the ``[tls]`` defaults are filled in; each ``*_key``
    names the config key the file came from (for messages)."""

    ca_certificates: Path | None  # None: the system's trust store
    ca_key: str
    certificate: Path | None  # None: no client certificate is offered
    private_key: Path | None
    certificate_key: str
    private_key_key: str


def destination_tls_files(destination: Destination, node_tls: TlsSettings) -> DestinationTlsFiles:
    """Per-destination ``tls_ca_certificates`` / ``tls_certificate`` + ``tls_private_key`` when the
    entry sets them, else ``[tls] ca_certificates`` / ``certificate`` + ``private_key`` when set
    (this node's own identity, also when ``[tls] enabled = false``), else the system trust store
    and no client certificate."""
    if destination.tls_ca_certificates is not None:
        ca, ca_key = destination.tls_ca_certificates, "tls_ca_certificates"
    elif node_tls.ca_certificates is not None:
        ca, ca_key = node_tls.ca_certificates, "tls.ca_certificates"
    else:
        ca, ca_key = None, "the system trust store"
    if destination.tls_certificate is not None or destination.tls_private_key is not None:
        cert, key = destination.tls_certificate, destination.tls_private_key
        cert_key, key_key = "tls_certificate", "tls_private_key"
    elif node_tls.certificate is not None and node_tls.private_key is not None:
        cert, key = node_tls.certificate, node_tls.private_key
        cert_key, key_key = "tls.certificate", "tls.private_key"
    else:
        cert = key = None
        cert_key, key_key = "tls_certificate", "tls_private_key"
    return DestinationTlsFiles(ca, ca_key, cert, key, cert_key, key_key)


class _RecordingSSLSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that leaves a failed handshake's exception on its context: pynetdicom only
    logs it, and the sender wants it for the outbox's ``last_error``."""

    def do_handshake(self, block=False):
        context = self.context
        try:
            result = super().do_handshake(block)
        except OSError as exc:  # ssl.SSLError, and resets or time-outs during the handshake
            if isinstance(context, ClientContext):
                context.handshake_error = exc
            raise
        if isinstance(context, ClientContext):
            context.handshake_done = True
        return result


class ClientContext(ssl.SSLContext):
    """The client-side context of one outbound association; ``handshake_error`` is the exception
    of a failed TLS handshake (None when there was none), ``handshake_done`` says one succeeded."""

    sslsocket_class = _RecordingSSLSocket
    handshake_error: OSError | None = None
    handshake_done: bool = False


def client_context(destination: Destination, node_tls: TlsSettings) -> ClientContext:
    """The context for an association to a TLS destination: TLS 1.2 or newer, the destination's
    certificate always verified (against :func:`destination_tls_files`' CA), its name checked
    against ``host`` unless ``tls_verify_hostname = false``, this node's client certificate
    offered when one is configured. ``ValueError`` naming the key and the file on a problem."""
    files = destination_tls_files(destination, node_tls)
    for key, path in ((files.ca_key, files.ca_certificates), (files.certificate_key, files.certificate), (files.private_key_key, files.private_key)):
        if path is not None and not path.is_file():
            raise ValueError(f"{key}: {str(path)!r} is not a readable file")
    if files.certificate is None and files.private_key is not None:
        raise ValueError(f"{files.certificate_key}: required with {files.private_key_key}")
    if files.private_key is None and files.certificate is not None:
        raise ValueError(f"{files.private_key_key}: required with {files.certificate_key}")
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = destination.tls_verify_hostname
    try:
        if files.ca_certificates is not None:
            context.load_verify_locations(cafile=str(files.ca_certificates))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{files.ca_key}: {str(files.ca_certificates)!r} cannot be loaded ({_ssl_text(exc)})") from exc
    if files.certificate is not None:
        try:
            context.load_cert_chain(certfile=str(files.certificate), keyfile=str(files.private_key))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"{files.certificate_key} / {files.private_key_key}: {str(files.certificate)!r} and "
                f"{str(files.private_key)!r} cannot be loaded ({_ssl_text(exc)})"
            ) from exc
    return context


def _ssl_text(exc: BaseException) -> str:
    """An ``ssl`` exception in words, without the ``(_ssl.c:1006)`` tail."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_handshake_error(exc: BaseException) -> str:
    """Why a client handshake failed, in words an admin can act on (no key material, no data)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"the destination's certificate was not accepted: {exc.verify_message or _ssl_text(exc)}"
        if "mismatch" in (exc.verify_message or ""):
            text += " (it must name the destination's host; see tls_verify_hostname)"
        return text
    if isinstance(exc, ssl.SSLEOFError) or isinstance(exc, ConnectionError):
        return "the destination closed the connection during the handshake (does it speak TLS on this port? does it accept this node's certificate?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no TLS answer in time (does the destination speak TLS on this port?)"
    if isinstance(exc, ssl.SSLError):
        text = _ssl_text(exc)
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            text += " (does the destination speak TLS on this port?)"
        return text
    return _ssl_text(exc)
