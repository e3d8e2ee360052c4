"""Socket tuning for accepted associations: the receiving side of a C-STORE must not wait on TCP.

Three measures, applied to each accepted connection (``EVT_CONN_OPEN``) and to nothing else:

- ``TCP_NODELAY``: our small responses (C-STORE-RSP, A-RELEASE-RP) go out at once instead of
  waiting for Nagle's algorithm.
- ``TCP_QUICKACK`` before every read (Linux): the sender's data is acknowledged at once instead of
  after the delayed-ACK timer (about 40 ms). A sender that runs Nagle's algorithm, as DCMTK's
  ``storescu`` and many scanners do, otherwise stalls on that timer at the end of every PDU.
- Large reads: pynetdicom reads PDUs 4 KiB per ``recv`` into a growing ``bytearray``; here each PDU
  is read with ``recv_into`` straight into one buffer of its final size.

The PDU bytes and their order are unchanged; only how they are read from the kernel differs.
"""

from __future__ import annotations

import socket

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
READ_CHUNK = 1 << 20


def _fast_recv(assoc_socket, quickack: bool):
    def recv(nr_bytes: int) -> bytearray:
        sock = assoc_socket.socket
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        got = 0
        while got < nr_bytes:
            if quickack:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                except OSError:
                    pass
            n = sock.recv_into(view[got:], min(nr_bytes - got, READ_CHUNK))
            if n == 0:  # connection closed: return what arrived, as pynetdicom does
                del view
                return buffer[:got]
            got += n
        del view
        return buffer

    return recv


def tune_accepted_socket(assoc, nodelay: bool = True, quickack: bool = True, fast_reads: bool = True) -> None:
    """Apply the measures above to an acceptor association's socket (errors are ignored)."""
    assoc_socket = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(assoc_socket, "socket", None)
    if sock is None:
        return
    if nodelay:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    if fast_reads:
        assoc_socket.recv = _fast_recv(assoc_socket, quickack and QUICKACK is not None)
