"""Validation of the whole config document: one :class:`Problem` (key, value, why) per bad value.

Pure checks over the parsed TOML (a ``dict``), run before anything is parsed into the
dataclasses of :mod:`dicom_node.config.model`. Every table and key the node knows is listed in
:data:`SCHEMA`; anything else is reported as unknown, with the closest known key when there is
one (typo protection: ``serie_timeout`` must not silently fall back to the default).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AE_TITLE_MAX = 16
LOG_FORMATS = ("auto", "console", "json")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


def show_value(value: Any) -> str:
    """A value as the TOML file would spell it (strings double-quoted, control characters escaped)."""
    if value is MISSING:
        return "(missing)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{...}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Problem:
    """One reason the config cannot be used: ``key`` (dotted, e.g. ``sources[1].host``), the
    offending ``value`` (:data:`MISSING` when absent) and ``reason`` in words."""

    key: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.key} = {show_value(self.value)}: {self.reason}"


# --- single values -------------------------------------------------------------------------------


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


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, not {_type_name(value)}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_type_name(value)}"


def _positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {_type_name(value)}"
    if not value > 0 or value != value or value == float("inf"):
        return "must be a number greater than 0"
    return None


RETENTION_MAX_DAYS = 36500  # 100 years: anything longer is a typo (0 already means forever)
RETENTION_MIN_INTERVAL = 60.0  # seconds; a pass reads the series and outbox tables


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


Check = Callable[[Any], "str | None"]

# table -> key -> check. ``sources`` and ``destinations`` are arrays of tables.
SCHEMA: dict[str, dict[str, Check]] = {
    "node": {
        "ae_title": ae_title_problem,
        "host": host_problem,
        "port": port_problem,
        "data_dir": _nonempty_string,
        "series_timeout": _positive_number,
        "reject_unknown_sources": _boolean,
        "accept_other_storage": _boolean,
        "log_format": _log_format,
    },
    "model": {"weights": _nonempty_string, "device": _device},
    "tls": {
        "enabled": _boolean,
        "certificate": _nonempty_string,
        "private_key": _nonempty_string,
        "ca_certificates": _nonempty_string,
        "require_client_certificate": _boolean,
    },
    "results": {"summary_image": _boolean},
    "sender": {"retry_initial": _positive_number, "retry_max": _positive_number},
    "retention": {
        "received_days": _retention_days,
        "results_days": _retention_days,
        "check_interval": _retention_interval,
    },
    "sources": {"ae_title": ae_title_problem, "host": host_problem, "series_timeout": _positive_number},
    "destinations": {
        "name": destination_name_problem,
        "ae_title": ae_title_problem,
        "host": host_problem,
        "port": port_problem,
        "tls": _boolean,
        "tls_ca_certificates": _nonempty_string,
        "tls_certificate": _nonempty_string,
        "tls_private_key": _nonempty_string,
        "tls_verify_hostname": _boolean,
    },
}
DESTINATION_TLS_KEYS = ("tls_ca_certificates", "tls_certificate", "tls_private_key", "tls_verify_hostname")
ARRAY_TABLES = ("sources", "destinations")
REQUIRED = {"sources": ("ae_title",), "destinations": ("name", "ae_title", "host", "port")}


def _unknown(key: str, value: Any, known: list[str]) -> Problem:
    name = key.rsplit(".", 1)[-1].split("]")[-1]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return Problem(key, value, "unknown key" + hint)


def _check_table(prefix: str, table: dict, checks: dict[str, Check]) -> list[Problem]:
    problems = []
    for key, value in table.items():
        where = f"{prefix}.{key}"
        if key not in checks:
            problems.append(_unknown(where, value, list(checks)))
            continue
        reason = checks[key](value)
        if reason:
            problems.append(Problem(where, value, reason))
    return problems


def _resolve(value: str, config_dir: Path | None) -> Path:
    from dicom_node.config.model import resolve_path

    return resolve_path(value, config_dir if config_dir is not None else Path.cwd())


def _file_problem(key: str, value: Any, config_dir: Path | None) -> Problem | None:
    if not isinstance(value, str) or not value.strip():
        return None  # already reported by the type check
    path = _resolve(value, config_dir)
    if not path.exists():
        return Problem(key, value, f"file not found ({path})")
    if not path.is_file():
        return Problem(key, value, f"is not a file ({path})")
    return None


def validate_config(doc: dict, config_dir: Path | None = None, *, serving: bool = False) -> list[Problem]:
    """Every problem of the parsed config ``doc``; an empty list means it is usable.

    ``config_dir``: the folder of the config file, for relative paths (``weights``, TLS files).
    ``serving``: the config a node runs with (``run``, hot reload, ``check-config``, ``ae``/``dest``
    edits): ``[node]`` and, with ``reject_unknown_sources``, a ``[[sources]]`` are required.
    Commands that only read the state (``status``, ``purge``, ``process``) and checks of one
    table leave it False.
    """
    problems: list[Problem] = []
    for table_name, table in doc.items():
        if table_name not in SCHEMA:
            problems.append(_unknown(table_name, table, list(SCHEMA)))
            continue
        checks = SCHEMA[table_name]
        if table_name in ARRAY_TABLES:
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                problems.append(Problem(table_name, table, f"must be an array of tables ([[{table_name}]])"))
                continue
            for i, entry in enumerate(table):
                prefix = f"{table_name}[{i}]"
                problems += _check_table(prefix, entry, checks)
                problems += [
                    Problem(f"{prefix}.{key}", MISSING, "required")
                    for key in REQUIRED[table_name]
                    if key not in entry
                ]
        elif not isinstance(table, dict):
            problems.append(Problem(table_name, table, f"must be a table ([{table_name}])"))
        else:
            problems += _check_table(table_name, table, checks)
    if serving:
        problems += _required_tables(doc)
    if problems:
        # Cross-key checks only on a well-typed document: they would repeat the same problems.
        return problems
    return _cross_checks(doc, config_dir)


def _required_tables(doc: dict) -> list[Problem]:
    """An empty or comment-only file is no config: ``[node]`` is required, and at least one
    ``[[sources]]`` while ``node.reject_unknown_sources`` is true (the default), since a node that
    refuses every scanner is a broken config, not a valid one. With ``reject_unknown_sources =
    false`` (any AE may send) zero sources are fine."""
    problems: list[Problem] = []
    node = doc.get("node", MISSING)
    if node is MISSING:
        problems.append(Problem("node", MISSING, "required: the [node] table (ae_title, port, data_dir, ...)"))
    sources = doc.get("sources", [])
    reject = node.get("reject_unknown_sources", True) if isinstance(node, dict) else True
    if reject is True and isinstance(sources, list) and not sources:
        problems.append(
            Problem(
                "sources",
                MISSING,
                "at least one [[sources]] is required while node.reject_unknown_sources = true "
                "(no scanner could send); set reject_unknown_sources = false to accept any AE",
            )
        )
    return problems


def _cross_checks(doc: dict, config_dir: Path | None) -> list[Problem]:
    problems: list[Problem] = []

    seen_sources: dict[tuple[str, str | None], int] = {}
    for i, source in enumerate(doc.get("sources", [])):
        ident = (source["ae_title"].strip(" "), source.get("host") or None)
        if ident in seen_sources:
            where = f"with the same host as sources[{seen_sources[ident]}]" if ident[1] else f"as sources[{seen_sources[ident]}]"
            problems.append(Problem(f"sources[{i}].ae_title", source["ae_title"], f"duplicate source {where}"))
        else:
            seen_sources[ident] = i

    seen_names: dict[str, int] = {}
    for i, dest in enumerate(doc.get("destinations", [])):
        if dest["name"] in seen_names:
            problems.append(
                Problem(f"destinations[{i}].name", dest["name"], f"duplicate of destinations[{seen_names[dest['name']]}]")
            )
        else:
            seen_names[dest["name"]] = i

    sender = doc.get("sender", {})
    initial, cap = sender.get("retry_initial", 5.0), sender.get("retry_max", 300.0)
    if cap < initial:
        problems.append(Problem("sender.retry_max", cap, f"must not be less than sender.retry_initial ({initial})"))

    node = doc.get("node", {})
    if "data_dir" in node:
        data_dir = _resolve(node["data_dir"], config_dir)
        if data_dir.exists() and not data_dir.is_dir():
            problems.append(Problem("node.data_dir", node["data_dir"], f"exists and is not a folder ({data_dir})"))

    weights = doc.get("model", {}).get("weights")
    if weights is not None:
        problem = _file_problem("model.weights", weights, config_dir)
        if problem:
            problems.append(problem)

    tls = doc.get("tls", {})
    if tls.get("enabled", False):
        needed = ["certificate", "private_key"]
        if tls.get("require_client_certificate", True):
            needed.append("ca_certificates")
        for key in needed:
            if key not in tls:
                why = "required when tls.enabled = true"
                if key == "ca_certificates":
                    why += " and require_client_certificate = true (client certificates are verified against it)"
                problems.append(Problem(f"tls.{key}", MISSING, why))
        for key in ("certificate", "private_key", "ca_certificates"):
            if key in tls:
                problem = _file_problem(f"tls.{key}", tls[key], config_dir)
                if problem:
                    problems.append(problem)
    problems += _destination_tls_problems(doc, config_dir)
    return problems


def _destination_tls_problems(doc: dict, config_dir: Path | None) -> list[Problem]:
    """``[[destinations]]`` with ``tls = true``: the files they will use exist (their own, or the
    ``[tls]`` defaults), certificate and key come in pairs; TLS keys without ``tls = true`` are
    refused (results would go in the clear while the file looks encrypted)."""
    problems: list[Problem] = []
    tls = doc.get("tls", {})
    reported_defaults: set[str] = set()
    for i, dest in enumerate(doc.get("destinations", [])):
        prefix = f"destinations[{i}]"
        if not dest.get("tls", False):
            for key in DESTINATION_TLS_KEYS:
                if key in dest:
                    problems.append(
                        Problem(
                            f"{prefix}.{key}",
                            dest[key],
                            f"set, but {prefix}.tls is not true: results to {dest['name']!r} would go over plain TCP; "
                            "add tls = true to the entry (or remove its tls_* keys)",
                        )
                    )
            continue
        for key in ("tls_ca_certificates", "tls_certificate", "tls_private_key"):
            if key in dest:
                problem = _file_problem(f"{prefix}.{key}", dest[key], config_dir)
                if problem:
                    problems.append(problem)
        has_cert, has_key = "tls_certificate" in dest, "tls_private_key" in dest
        if has_cert != has_key:
            missing, given = ("tls_private_key", "tls_certificate") if has_cert else ("tls_certificate", "tls_private_key")
            problems.append(Problem(f"{prefix}.{missing}", MISSING, f"required with {prefix}.{given} (mutual TLS needs both)"))
        if tls.get("enabled", False):
            continue  # the [tls] files it may fall back on were checked with [tls]
        defaults = []
        if "tls_ca_certificates" not in dest and "ca_certificates" in tls:
            defaults.append("ca_certificates")
        if not has_cert and not has_key and "certificate" in tls and "private_key" in tls:
            defaults += ["certificate", "private_key"]
        for key in defaults:
            if key in reported_defaults:
                continue
            problem = _file_problem(f"tls.{key}", tls[key], config_dir)
            if problem:
                reported_defaults.add(key)
                problems.append(
                    Problem(problem.key, problem.value, f"{problem.reason}; {prefix} ({dest['name']!r}, tls = true) uses it")
                )
    return problems
