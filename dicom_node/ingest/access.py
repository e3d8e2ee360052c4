"""Who may associate: the called AE must be the node's, and (with ``reject_unknown_sources``) the
calling AE, and its address where the source names a ``host``, must be a ``[[sources]]`` entry.

Refusals are A-ASSOCIATE-RJ with the reasons of PS3.8 9.3.4: result 1 (rejected-permanent),
source 1 (DICOM UL service-user), reason 7 (called-AE-title-not-recognized) or 3
(calling-AE-title-not-recognized; also used when the AE is known but comes from another address,
since PS3.8 has no closer reason).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass

from dicom_node.config.model import NodeConfig, Source

REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01


class RejectReason(enum.IntEnum):
    """A-ASSOCIATE-RJ reasons (source: DICOM UL service-user) used by the node."""

    NO_REASON_GIVEN = 0x01
    CALLING_AE_TITLE_NOT_RECOGNIZED = 0x03
    CALLED_AE_TITLE_NOT_RECOGNIZED = 0x07


@dataclass(frozen=True)
class Refusal:
    reason: RejectReason
    why: str  # short machine-friendly word for the log: wrong_called_ae | unknown_calling_ae | wrong_host

    @property
    def result(self) -> int:
        return REJECTED_PERMANENT

    @property
    def source(self) -> int:
        return SOURCE_SERVICE_USER


def _same_host(configured: str, peer_address: str) -> bool:
    """Whether ``peer_address`` (an IP) is ``configured`` (an IP or a host name)."""
    try:
        peer = ipaddress.ip_address(peer_address)
    except ValueError:
        return configured == peer_address
    if peer.version == 6 and peer.ipv4_mapped:
        peer = peer.ipv4_mapped
    try:
        return ipaddress.ip_address(configured) == peer
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(configured, None)
    except OSError:
        return False
    return any(ipaddress.ip_address(info[4][0]) == peer for info in infos)


def find_source(config: NodeConfig, calling_ae: str) -> Source | None:
    """The ``[[sources]]`` entry for an AE title (trailing spaces ignored), else None."""
    calling_ae = calling_ae.strip()
    for source in config.sources:
        if source.ae_title.strip() == calling_ae:
            return source
    return None


def check_association(config: NodeConfig, called_ae: str, calling_ae: str, peer_address: str) -> Refusal | None:
    """None when the association may proceed, else the :class:`Refusal` to send."""
    if called_ae.strip() != config.node.ae_title.strip():
        return Refusal(RejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED, "wrong_called_ae")
    if not config.node.reject_unknown_sources:
        return None
    calling_ae = calling_ae.strip()
    candidates = [s for s in config.sources if s.ae_title.strip() == calling_ae]
    if not candidates:
        return Refusal(RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED, "unknown_calling_ae")
    if any(s.host is None or _same_host(s.host, peer_address) for s in candidates):
        return None
    return Refusal(RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED, "wrong_host")


def series_timeout_for(config: NodeConfig, calling_ae: str) -> float:
    """The quiet period that completes a series from ``calling_ae`` (per-source override first)."""
    source = find_source(config, calling_ae)
    if source is not None and source.series_timeout is not None:
        return float(source.series_timeout)
    return float(config.node.series_timeout)
