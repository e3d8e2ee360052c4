"""Validation of the whole config document: one :class:`Problem` (key, value, why) per bad value.

Pure checks over the parsed TOML (a ``dict``), run before anything is parsed into the
dataclasses of :mod:`dicom_node.config.model`. Every table and key the node knows, and the check
of each value, is in :data:`dicom_node.config.keys.TABLES`; anything else is reported as unknown,
with the closest known key when there is one (typo protection: ``serie_timeout`` must not
silently fall back to the default). Here: the walk over the document and the checks across keys.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.config.keys import PATH, TABLES, Check, resolve_path


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


_DESTINATION_TLS_KEYS = tuple(k for k in TABLES["destinations"].keys if k.startswith("tls_"))


def _path_keys(table: str) -> tuple[str, ...]:
    return tuple(k.name for k in TABLES[table].keys.values() if k.kind is PATH)


def _default(table: str, key: str) -> Any:
    return TABLES[table].default(key)


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
        if table_name not in TABLES:
            problems.append(_unknown(table_name, table, list(TABLES)))
            continue
        known = TABLES[table_name]
        checks = {key.name: key.check for key in known.keys.values()}
        if known.array:
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                problems.append(Problem(table_name, table, f"must be an array of tables ([[{table_name}]])"))
                continue
            for i, entry in enumerate(table):
                prefix = f"{table_name}[{i}]"
                problems += _check_table(prefix, entry, checks)
                problems += [
                    Problem(f"{prefix}.{key}", MISSING, "required")
                    for key in known.required
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
    default = _default("node", "reject_unknown_sources")
    reject = node.get("reject_unknown_sources", default) if isinstance(node, dict) else default
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


def _duplicate_names(doc: dict, array: str) -> list[Problem]:
    """``[[array]]`` entries whose ``name`` an earlier entry already has."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(doc.get(array, [])):
        if entry["name"] in seen:
            problems.append(Problem(f"{array}[{i}].name", entry["name"], f"duplicate of {array}[{seen[entry['name']]}]"))
        else:
            seen[entry["name"]] = i
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

    problems += _duplicate_names(doc, "destinations") + _duplicate_names(doc, "web_users")

    sender = doc.get("sender", {})
    initial = sender.get("retry_initial", _default("sender", "retry_initial"))
    cap = sender.get("retry_max", _default("sender", "retry_max"))
    if cap < initial:
        problems.append(Problem("sender.retry_max", cap, f"must not be less than sender.retry_initial ({initial})"))

    pipeline = doc.get("pipeline", {})
    if pipeline.get("executor", _default("pipeline", "executor")) == "celery" and not pipeline.get("broker_url"):
        problems.append(Problem("pipeline.broker_url", MISSING, 'required when pipeline.executor = "celery"'))

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
    if tls.get("enabled", _default("tls", "enabled")):
        needed = ["certificate", "private_key"]
        if tls.get("require_client_certificate", _default("tls", "require_client_certificate")):
            needed.append("ca_certificates")
        for key in needed:
            if key not in tls:
                why = "required when tls.enabled = true"
                if key == "ca_certificates":
                    why += " and require_client_certificate = true (client certificates are verified against it)"
                problems.append(Problem(f"tls.{key}", MISSING, why))
        for key in _path_keys("tls"):
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
        if not dest.get("tls", _default("destinations", "tls")):
            for key in _DESTINATION_TLS_KEYS:
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
        for key in _path_keys("destinations"):
            if key in dest:
                problem = _file_problem(f"{prefix}.{key}", dest[key], config_dir)
                if problem:
                    problems.append(problem)
        has_cert, has_key = "tls_certificate" in dest, "tls_private_key" in dest
        if has_cert != has_key:
            missing, given = ("tls_private_key", "tls_certificate") if has_cert else ("tls_certificate", "tls_private_key")
            problems.append(Problem(f"{prefix}.{missing}", MISSING, f"required with {prefix}.{given} (mutual TLS needs both)"))
        if tls.get("enabled", _default("tls", "enabled")):
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
