"""Inbound DICOM TLS (PS3.15 B.1): the server-side ``ssl.SSLContext`` built from ``[tls]``.

TLS 1.2 or newer. With ``require_client_certificate`` (the default) a peer must present a
certificate signed by one of ``ca_certificates``; without it, client certificates are still
verified when offered. The outbound side is :mod:`dicom_node.delivery.tls`.
"""

from __future__ import annotations

import ssl

from dicom_node.config.model import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context the SCP wraps accepted sockets with; ``ValueError`` naming a missing key or file."""
    if tls.certificate is None:
        raise ValueError("tls.certificate: required when tls.enabled = true")
    if tls.private_key is None:
        raise ValueError("tls.private_key: required when tls.enabled = true")
    for key, path in (("tls.certificate", tls.certificate), ("tls.private_key", tls.private_key), ("tls.ca_certificates", tls.ca_certificates)):
        if path is not None and not path.is_file():
            raise ValueError(f"{key}: {str(path)!r} is not a readable file")
    if tls.require_client_certificate and tls.ca_certificates is None:
        raise ValueError("tls.ca_certificates: required when tls.require_client_certificate = true")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"tls.certificate / tls.private_key: cannot be loaded ({exc})") from exc
    if tls.ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"tls.ca_certificates: {str(tls.ca_certificates)!r} cannot be loaded ({exc})") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context
