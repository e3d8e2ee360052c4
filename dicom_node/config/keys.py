"""Every key of the config file, said once: its table, name, kind, default and the check of its value.

:data:`TABLES` is read by the parser (:mod:`dicom_node.config.model` makes one frozen settings class
per table from it and fills it), by the validation (:func:`dicom_node.config.validation.validate_config`:
known tables and keys, the check of each value, required entry keys, the defaults of cross-key
checks) and by the check that the commented config file documents every key
(:func:`documentation_problems`). A new key is one :class:`Key` line here and its comment in
``config/node.toml``.

Defaults are written as the file spells them (``data_dir = "var"``; numbers of seconds as floats,
as the settings hold them). This module imports nothing of :mod:`dicom_node.config`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AE_TITLE_MAX = 16
LOG_FORMATS = ("auto", "console", "json")
EXECUTORS = ("local", "celery")
RETENTION_MAX_DAYS = 36500  # 100 years: anything longer is a typo (0 already means forever)
RETENTION_MIN_INTERVAL = 60.0  # seconds; a pass reads the series and outbox tables
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WEB_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
WEB_ROLES = ("admin", "viewer")

Check = Callable[[Any], "str | None"]  # why a value cannot be used, in words; None: it can


# --- the checks of single values ------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def ae_title_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable AE title (DICOM PS3.5 AE VR), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value:
        return "must not be empty"
    if len(value) > AE_TITLE_MAX:
        return f"must be at most {AE_TITLE_MAX} characters (has {len(value)})"
    if not value.strip(" "):
        return "must not be all spaces"
    if "\\" in value:
        return "must not contain a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters"
    if not value.isascii():
        return "must use ASCII characters only"
    return None


def host_problem(value: Any) -> str | None:
    """Why ``value`` is neither an IP address nor a host name (RFC 1123), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value:
        return "must not be empty"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return "must be an IP address or a host name (letters, digits, hyphens, dots)"
    if labels[-1].isdigit():
        return "is not a valid IP address"
    return None


def port_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, not {_type_name(value)}"
    if not 1 <= value <= 65535:
        return "must be between 1 and 65535"
    return None


def port_argument_problem(text: str) -> tuple[int | None, str | None]:
    """A port typed on the command line: ``(port, None)`` or ``(None, why)``."""
    try:
        port = int(text.strip())
    except ValueError:
        return None, "must be an integer between 1 and 65535"
    return port, port_problem(port)


def destination_name_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not _DEST_NAME.match(value):
        return "must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_type_name(value)}"


def _positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {_type_name(value)}"
    if not value > 0 or value != value or value == float("inf"):
        return "must be a number greater than 0"
    return None


def _retention_days(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of days (0: keep forever), not {_type_name(value)}"
    if value != value or value in (float("inf"), float("-inf")):
        return "must be a finite number of days (0: keep forever)"
    if value < 0:
        return "must not be negative (a number of days; 0: keep forever)"
    if value > RETENTION_MAX_DAYS:
        return f"must be at most {RETENTION_MAX_DAYS} days (use 0 to keep forever)"
    return None


def _retention_interval(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {_type_name(value)}"
    if value != value or value == float("inf"):
        return "must be a finite number of seconds"
    if value < RETENTION_MIN_INTERVAL:
        return f"must be at least {RETENTION_MIN_INTERVAL:g} seconds (each pass reads the whole job database)"
    return None


def _nonempty_string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if value.strip() else "must not be empty"


def _device(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if _DEVICE.match(value) else "must be auto, cpu, cuda or cuda:N (N = GPU index)"


def _log_format(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if value in LOG_FORMATS else f"must be one of {', '.join(LOG_FORMATS)}"


def _executor(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if value in EXECUTORS else f"must be one of {', '.join(EXECUTORS)}"


def _broker_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value.startswith(("redis://", "rediss://", "redis+socket://")):
        return "must be a Redis URL (redis://host:port/db, rediss:// for TLS)"
    return None


def _queue(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if _QUEUE.match(value) else "must be 1-64 letters, digits, '_', '.' or '-'"


def web_user_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not _WEB_USER.match(value):
        return "must be 1-64 letters, digits, '_', '.', '@', '-' (starting with a letter or digit)"
    return None


def web_role_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    return None if value in WEB_ROLES else f"must be one of {', '.join(WEB_ROLES)}"


def _password_hash(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value.startswith("$argon2id$"):
        return "must be an argon2id hash (set it with m2unet-node web set-password USER)"
    return None


def _session_minutes(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of minutes, not {_type_name(value)}"
    if not 1 <= value <= 24 * 60:
        return "must be between 1 and 1440 minutes"
    return None


# --- the shape of the table -----------------------------------------------------------------------


def resolve_path(value: str, config_dir: Path) -> Path:
    """A path as the config gives it: absolute as is; relative to the current folder when it
    exists there (or exists nowhere), else relative to the config's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or (Path.cwd() / p).exists() or not (config_dir / p).exists():
        return p if p.is_absolute() else Path.cwd() / p
    return config_dir / p


@dataclass(frozen=True)
class Kind:
    """What the settings hold of a value the validation let through."""

    type: type  # of the settings attribute (``| None`` added for keys without a default)
    convert: Callable[[Any], Any]  # the file's value -> the attribute's (paths: see resolve_path)


TEXT = Kind(str, lambda value: value)  # as the file gives it (validated: a string)
INTEGER = Kind(int, int)
NUMBER = Kind(float, float)
BOOLEAN = Kind(bool, bool)
PATH = Kind(Path, Path)  # the parser resolves it with resolve_path; the class default stays relative


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a key each [[entry]] must give


@dataclass(frozen=True)
class Key:
    """One key of a table. ``default`` as the file spells it; None: unset (the attribute is None)."""

    name: str
    kind: Kind
    check: Check
    default: Any = None
    note: str = ""  # what it means in a few words (config/node.toml says the rest)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def attribute_type(self) -> Any:
        return self.kind.type | None if self.default is None else self.kind.type

    @property
    def attribute_default(self) -> Any:
        """The settings class's default (``REQUIRED``: none)."""
        return self.default if self.default is None or self.required else self.kind.convert(self.default)


@dataclass(frozen=True)
class Table:
    """``[name]``, or ``[[name]]`` (an array of entries) when ``array``; keys in the order
    problems list them (unknown keys: "known: ...")."""

    name: str
    keys: dict[str, Key]
    array: bool = False

    def default(self, key: str) -> Any:
        return self.keys[key].default

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys.values() if k.required)


def _table(name: str, *keys: Key, array: bool = False) -> Table:
    return Table(name, {k.name: k for k in keys}, array)


# --- the keys -------------------------------------------------------------------------------------

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "node",
            Key("ae_title", TEXT, ae_title_problem, "M2UNET", "the called AE title scanners use"),
            Key("host", TEXT, host_problem, "0.0.0.0", "the address to listen on"),
            Key("port", INTEGER, port_problem, 11112),
            Key("data_dir", PATH, _nonempty_string, "var", "all durable state"),
            Key("series_timeout", NUMBER, _positive_number, 30.0, "s without a new instance: the series is complete"),
            Key("reject_unknown_sources", BOOLEAN, _boolean, True, "only [[sources]] may send"),
            Key("accept_other_storage", BOOLEAN, _boolean, False,
                "non-CT storage classes: false refuses them, true stores and ignores"),
            Key("log_format", TEXT, _log_format, "auto", "auto (console on a terminal, JSON otherwise) | console | json"),
        ),
        _table(
            "model",
            Key("weights", PATH, _nonempty_string, None, "None: the shipped weights"),
            Key("device", TEXT, _device, "auto"),
        ),
        _table(
            "tls",
            Key("enabled", BOOLEAN, _boolean, False, "DICOM TLS for the associations scanners open"),
            Key("certificate", PATH, _nonempty_string, None),
            Key("private_key", PATH, _nonempty_string, None),
            Key("ca_certificates", PATH, _nonempty_string, None, "peers' certificates are verified against these"),
            Key("require_client_certificate", BOOLEAN, _boolean, True),
        ),
        _table(
            "results",
            Key("summary_image", BOOLEAN, _boolean, True, "a Secondary Capture with key slices for viewers without SEG/SR"),
        ),
        _table(
            "sender",
            Key("retry_initial", NUMBER, _positive_number, 5.0, "s before the first retry; doubles after each failure"),
            Key("retry_max", NUMBER, _positive_number, 300.0, "cap of the delay between retries"),
        ),
        _table(
            "retention",
            Key("received_days", NUMBER, _retention_days, 7.0,
                "received instances: days after the series is final and delivered (0: keep forever)"),
            Key("results_days", NUMBER, _retention_days, 30.0,
                "result folders and outbox copies: days after creation / delivery (0: keep forever)"),
            Key("check_interval", NUMBER, _retention_interval, 3600.0, "s between two passes (one also runs at start-up)"),
        ),
        _table(
            "pipeline",
            Key("executor", TEXT, _executor, "local", '"local": in the node\'s process; "celery": on workers through broker_url'),
            Key("broker_url", TEXT, _broker_url, None, "e.g. redis://127.0.0.1:6379/0"),
            Key("queue", TEXT, _queue, "m2unet", "the broker queue the node publishes to and the workers serve"),
            Key("visibility_timeout", NUMBER, _positive_number, 3600.0,
                "s before Redis hands an unacknowledged task to another worker"),
            Key("worker_timeout", NUMBER, _positive_number, 30.0, "s without a heartbeat after which a worker is taken for dead"),
        ),
        _table(
            "sources",
            Key("ae_title", TEXT, ae_title_problem, REQUIRED, "the calling AE title"),
            Key("host", TEXT, host_problem, None, "None: any address may use the title"),
            Key("series_timeout", NUMBER, _positive_number, None, "per-source override of [node] series_timeout"),
            array=True,
        ),
        _table(
            "destinations",
            Key("name", TEXT, destination_name_problem, REQUIRED),
            Key("ae_title", TEXT, ae_title_problem, REQUIRED),
            Key("host", TEXT, host_problem, REQUIRED),
            Key("port", INTEGER, port_problem, REQUIRED),
            Key("tls", BOOLEAN, _boolean, False, "DICOM TLS (PS3.15 B.1) for the associations to this destination"),
            Key("tls_ca_certificates", PATH, _nonempty_string, None, "the destination's certificate is verified against these"),
            Key("tls_certificate", PATH, _nonempty_string, None, "this node's client certificate (mutual TLS)"),
            Key("tls_private_key", PATH, _nonempty_string, None),
            Key("tls_verify_hostname", BOOLEAN, _boolean, True, "the certificate must name ``host``"),
            array=True,
        ),
        _table(
            "web",
            Key("enabled", BOOLEAN, _boolean, False, "the web console and REST API in the node's process"),
            Key("host", TEXT, host_problem, "127.0.0.1", "the address the console listens on"),
            Key("port", INTEGER, port_problem, 8080),
            Key("session_minutes", NUMBER, _session_minutes, 60.0, "a login lasts this long without use"),
            Key("show_patient_names", BOOLEAN, _boolean, False, "the series page shows the patient's name"),
        ),
        _table(
            "web_users",
            Key("name", TEXT, web_user_problem, REQUIRED, "the login name"),
            Key("password_hash", TEXT, _password_hash, REQUIRED, "argon2id, written by m2unet-node web set-password"),
            Key("role", TEXT, web_role_problem, "viewer", "admin: may change the config; viewer: reads only"),
            array=True,
        ),
    )
}


# --- the commented config file --------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*(\]\]?)\s*(#.*)?$")
_SET_OR_COMMENTED = re.compile(r"^\s*(?:#\s*)?([A-Za-z0-9_]+)\s*=")


def _documenting_lines(lines: list[str], table: Table) -> list[str]:
    """Where the file documents ``table``: under its header up to the next header (an array's
    entry: up to the next blank line), and for an array the paragraphs of comment lines only whose
    first line names ``[[table]]``."""
    found: list[str] = []
    headers = [i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and len(m.group(1)) == len(m.group(3))]
    for i in headers:
        m = _HEADER.match(lines[i])
        if m.group(2) != table.name or (m.group(1) == "[[") != table.array:
            continue
        stop = next((h for h in headers if h > i), len(lines))
        if table.array:
            stop = next((j for j in range(i + 1, stop) if not lines[j].strip()), stop)
        found += lines[i + 1 : stop]
    if table.array:
        starts = [i for i, line in enumerate(lines) if line.strip() and (i == 0 or not lines[i - 1].strip())]
        for i in starts:
            end = next((j for j in range(i, len(lines)) if not lines[j].strip()), len(lines))
            paragraph = lines[i:end]
            if f"[[{table.name}]]" in paragraph[0] and all(line.lstrip().startswith("#") for line in paragraph):
                found += paragraph
    return found


def documentation_problems(text: str) -> list[str]:
    """Why the commented config file (``config/node.toml``, as text) does not document
    :data:`TABLES`, one ``key: why`` line each; empty when it does.

    A key of ``[table]`` is documented by a ``key = value`` line under the table's header, set or
    commented out (``# key = value``); a key of ``[[table]]`` by a ``#   key   what it means`` line
    (or a ``key = value`` line) in a paragraph of comments that opens with ``[[table]]``, or in an
    entry. A value the file sets under ``[table]`` must be the default (the file says it shows
    defaults), and a ``key =`` line must name a key the table has.
    """
    lines = text.splitlines()
    doc = tomllib.loads(text)
    problems: list[str] = []
    for table in TABLES.values():
        region = _documenting_lines(lines, table)
        where = f"the comments on [[{table.name}]]" if table.array else f"[{table.name}]"
        for key in table.keys.values():
            documented = re.compile(rf"^\s*(?:#\s*)?{re.escape(key.name)}(?:\s*=|\s{{2,}}\S)")
            if not any(documented.match(line) for line in region):
                problems.append(f"{table.name}.{key.name}: not documented in {where}")
            elif not table.array and key.name in doc.get(table.name, {}):
                value = doc[table.name][key.name]
                if value != key.default or isinstance(value, bool) != isinstance(key.default, bool):
                    problems.append(f"{table.name}.{key.name}: the file sets {value!r}, the default is {key.default!r}")
        for line in region:
            m = _SET_OR_COMMENTED.match(line)
            if m and m.group(1) not in table.keys:
                problems.append(f"{table.name}.{m.group(1)}: documented in {where}, but no such key")
    return problems
