"""The admin commands: ``check-config``, ``ae list|add|remove``, ``dest list|add|remove|echo``.

Each returns the process exit status: 0 done, 1 the operation failed (a C-ECHO that got no
success), 2 the config or an argument is invalid. Problems go to standard error, one per line as
``key = value: why``; results go to standard output. Edits go through :mod:`dicom_node.config.edit`
(comments kept, validated, atomic); a running node picks them up within a few seconds
(:mod:`dicom_node.config.live`), no restart needed.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config.model import ConfigError, Destination, NodeConfig, config_from_text, load_config, read_config_text, resolve_config_path
from dicom_node.config.edit import EditError, add_destination, add_source, remove_destination, remove_source

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

ECHO_TIMEOUT = 10.0  # seconds for the TCP connection, the association and the C-ECHO response
RELOAD_HINT = "a running node applies this within a few seconds (or at once on SIGHUP)"


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _out(line: str) -> None:
    print(line, file=sys.stdout)


def _problems(lines: list[str]) -> int:
    for line in lines:
        _err(line)
    return EXIT_INVALID


def _load(config_path: str | os.PathLike | None) -> NodeConfig | int:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        _problems(exc.problems)
        _err(f"{resolve_config_path(config_path)}: invalid config ({len(exc.problems)} problem(s)); nothing done")
        return EXIT_INVALID


# --- check-config ---------------------------------------------------------------------------------


def _shipped_weights_problem(config: NodeConfig) -> str | None:
    """With ``[model] weights`` unset the shipped file is used: it has to be there."""
    if config.model.weights is not None:
        return None
    try:
        from m2unet.weights import default_weights_path
    except ImportError:
        return None
    path = Path(default_weights_path())
    if path.is_file():
        return None
    return f'model.weights = (unset): the shipped weights file is missing ({path}); set model.weights to a weights file'


def check_config(config_path: str | os.PathLike | None) -> int:
    """Validate the config file: exit 0 and a one-line summary, or each problem and exit 2."""
    path = resolve_config_path(config_path)
    try:
        config = config_from_text(read_config_text(path), path, serving=True)
    except ConfigError as exc:
        _problems(exc.problems)
        _err(f"{path}: {len(exc.problems)} problem(s)")
        return EXIT_INVALID
    weights_problem = _shipped_weights_problem(config)
    if weights_problem:
        _problems([weights_problem])
        _err(f"{path}: 1 problem(s)")
        return EXIT_INVALID
    _out(
        f"{path}: ok ({len(config.sources)} source(s), {len(config.destinations)} destination(s), "
        f"node {config.node.ae_title} on {config.node.host}:{config.node.port})"
    )
    return EXIT_OK


# --- ae -------------------------------------------------------------------------------------------


def ae_list(config_path: str | os.PathLike | None) -> int:
    """Print the ``[[sources]]``: AE title, host (``any`` when unset), series timeout."""
    config = _load(config_path)
    if isinstance(config, int):
        return config
    rows = [
        (s.ae_title, s.host or "any", f"{s.series_timeout:g}" if s.series_timeout is not None else "-")
        for s in config.sources
    ]
    _table(("AE_TITLE", "HOST", "SERIES_TIMEOUT"), rows)
    if not config.node.reject_unknown_sources:
        _out("note: node.reject_unknown_sources = false: any calling AE title may send")
    elif not rows:
        _out("note: no sources: the node refuses every association")
    return EXIT_OK


def ae_add(config_path: str | os.PathLike | None, ae_title: str, host: str | None = None) -> int:
    """Allow a scanner to send (``[[sources]]``), from ``host`` only when given."""
    path = resolve_config_path(config_path)
    try:
        add_source(path, ae_title, host=host)
    except (EditError, ConfigError) as exc:
        return _refused(exc, path)
    except OSError as exc:
        return _unwritable(exc, path)
    where = f" from {host}" if host else " from any host"
    _out(f"added source {ae_title}{where} to {path}; {RELOAD_HINT}")
    return EXIT_OK


def ae_remove(config_path: str | os.PathLike | None, ae_title: str) -> int:
    """Remove every ``[[sources]]`` entry with this AE title."""
    path = resolve_config_path(config_path)
    try:
        result = remove_source(path, ae_title)
    except (EditError, ConfigError) as exc:
        return _refused(exc, path)
    except OSError as exc:
        return _unwritable(exc, path)
    _out(f"removed source {ae_title} ({result.changed} entr{'y' if result.changed == 1 else 'ies'}) from {path}; {RELOAD_HINT}")
    if not result.config.sources and result.config.node.reject_unknown_sources:
        _out("note: no sources left: the node now refuses every association")
    return EXIT_OK


# --- dest -----------------------------------------------------------------------------------------


def dest_list(config_path: str | os.PathLike | None) -> int:
    """Print the ``[[destinations]]``."""
    config = _load(config_path)
    if isinstance(config, int):
        return config
    _table(
        ("NAME", "AE_TITLE", "HOST", "PORT", "TLS"),
        [(d.name, d.ae_title, d.host, str(d.port), "yes" if d.tls else "no") for d in config.destinations],
    )
    if not config.destinations:
        _out(f"note: no destinations: results stay under {config.node.data_dir}")
    return EXIT_OK


def dest_add(
    config_path: str | os.PathLike | None, name: str, ae_title: str, host: str, port: str | int, **tls
) -> int:
    """Add a destination for results; ``tls``: the keyword arguments of
    :func:`dicom_node.config.edit.add_destination` for DICOM TLS (none: plain TCP)."""
    from dicom_node.delivery.tls import destination_tls_files

    path = resolve_config_path(config_path)
    try:
        result = add_destination(path, name, ae_title, host, port, **tls)
    except (EditError, ConfigError) as exc:
        return _refused(exc, path)
    except OSError as exc:
        return _unwritable(exc, path)
    dest = next(d for d in result.config.destinations if d.name == name)
    _out(f"added destination {name} ({_describe(dest)}) to {path}; {RELOAD_HINT}")
    if dest.tls:
        files = destination_tls_files(dest, result.config.tls)
        hostname = "checked" if dest.tls_verify_hostname else "not checked"
        _out(f"  its certificate is verified against {files.ca_certificates or files.ca_key} (host name {hostname}); "
             f"client certificate: {files.certificate or 'none'}")
    _out(f"check it answers: m2unet-node dest echo {name}")
    return EXIT_OK


def dest_remove(config_path: str | os.PathLike | None, name: str) -> int:
    """Remove a destination; results not yet delivered to it are kept ("orphaned" in ``status``) and
    sent if a destination of that name is configured again."""
    path = resolve_config_path(config_path)
    try:
        remove_destination(path, name)
    except (EditError, ConfigError) as exc:
        return _refused(exc, path)
    except OSError as exc:
        return _unwritable(exc, path)
    _out(f"removed destination {name} from {path}; {RELOAD_HINT}")
    _out(f'note: results not yet delivered to {name} are kept ("orphaned" in m2unet-node status, files left in '
         "place) and sent if a destination of that name is added again")
    return EXIT_OK


def dest_echo(config_path: str | os.PathLike | None, name: str) -> int:
    """C-ECHO a destination: exit 0 on success, 1 with the reason on failure."""
    config = _load(config_path)
    if isinstance(config, int):
        return config
    dest = next((d for d in config.destinations if d.name == name), None)
    if dest is None:
        known = ", ".join(d.name for d in config.destinations) or "none"
        _err(f'NAME = "{name}": no such destination (configured: {known})')
        return EXIT_INVALID
    outcome = c_echo(config, dest.ae_title, dest.host, dest.port, destination=dest)
    target = f"{dest.name} ({_describe(dest)})"
    if outcome.ok:
        _out(f"C-ECHO {target}: success in {outcome.seconds * 1000:.0f} ms")
        return EXIT_OK
    _err(f"C-ECHO {target}: failed: {outcome.reason}")
    return EXIT_FAILED


@dataclass(frozen=True)
class EchoOutcome:
    ok: bool
    reason: str  # "success", or why not, in words
    seconds: float


def _describe(dest: Destination) -> str:
    return f"{dest.ae_title} at {dest.host}:{dest.port}{', DICOM TLS' if dest.tls else ''}"


def c_echo(
    config: NodeConfig,
    ae_title: str,
    host: str,
    port: int,
    timeout: float = ECHO_TIMEOUT,
    destination: Destination | None = None,
) -> EchoOutcome:
    """One Verification association from the node's AE title; the outcome in words. With a
    ``destination`` that uses TLS, the association is opened as the sender opens it."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    start = time.monotonic()
    # A plain TCP connect first: its error ("Connection refused", "Name or service not known")
    # says more than pynetdicom's "association request failed".
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return EchoOutcome(False, f"cannot connect to {host}:{port}: {exc.strerror or exc}", time.monotonic() - start)

    context = None
    if destination is not None and destination.tls:
        from dicom_node.delivery.tls import client_context

        try:
            context = client_context(destination, config.tls)
        except ValueError as exc:
            return EchoOutcome(False, f"TLS settings cannot be used: {exc}", time.monotonic() - start)
    ae = AE(ae_title=config.node.ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(context, host) if context is not None else None)
    try:
        if not assoc.is_established:
            if context is not None and context.handshake_error is not None:
                from dicom_node.delivery.tls import describe_handshake_error

                reason = f"TLS handshake failed: {describe_handshake_error(context.handshake_error)}"
            elif assoc.is_rejected:
                rsp = assoc.acceptor.primitive
                reason = f"association rejected ({rsp.result_str}, {rsp.source_str}: {rsp.reason_str})"
            elif assoc.is_aborted and context is not None:
                reason = "association aborted after the TLS handshake (this node's client certificate refused? wrong AE title?)"
            elif assoc.is_aborted:
                reason = "association aborted (wrong AE title, the peer expects TLS, or no Verification support?)"
            else:
                reason = f"no association within {timeout:g} s (is it a DICOM node? does it expect TLS?)"
            return EchoOutcome(False, reason, time.monotonic() - start)
        status = assoc.send_c_echo()
        seconds = time.monotonic() - start
        if status is None or "Status" not in status:
            return EchoOutcome(False, "no C-ECHO response (timeout or aborted)", seconds)
        if status.Status != 0x0000:
            return EchoOutcome(False, f"C-ECHO status 0x{status.Status:04X}", seconds)
        return EchoOutcome(True, "success", seconds)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


# --- helpers --------------------------------------------------------------------------------------


def _unwritable(exc: OSError, path: Path) -> int:
    _err(f"{path}: cannot write: {exc.strerror or exc} (run as the config file's owner?); not changed")
    return EXIT_FAILED


def _refused(exc: EditError | ConfigError, path: Path) -> int:
    lines = [str(p) for p in exc.problems] if isinstance(exc, EditError) else list(exc.problems)
    _problems(lines)
    _err(f"{path}: not changed")
    return EXIT_INVALID


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        _out("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
