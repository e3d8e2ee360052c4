"""Edits of the config file in place: add and remove ``[[sources]]`` and ``[[destinations]]``.

What an admin wrote stays: comments, blank lines, the order of tables and keys. An entry is a
``[[sources]]`` (or ``[[destinations]]``) header with the comment lines right above it and its
key lines; removing one takes exactly those lines, adding one puts it after the last entry of its
kind (or at the end of the file when there is none). Values are rendered by tomlkit, and the edited
text is parsed back and compared with the intended document before anything is written, so an
unusual layout is refused rather than damaged.

Every edit is validated as a whole document first (:func:`~dicom_node.config.validation.validate_config`):
an edit that would leave the file unusable is refused with its problems. The write is atomic
(temporary file beside it, fsync, rename, fsync of the folder) under an exclusive lock on the
folder, so a node watching the file never reads half of it and two admins never interleave.
"""

from __future__ import annotations

import copy
import fcntl
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from dicom_node.durable import atomic_write
from dicom_node.config.model import NodeConfig, parse_config, read_config_text, resolve_path
from dicom_node.config.keys import (
    ae_title_problem,
    destination_name_problem,
    host_problem,
    port_argument_problem,
    port_problem,
)
from dicom_node.config.validation import MISSING, Problem, validate_config

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*(\]\]?)\s*(#.*)?$")


class EditError(ValueError):
    """An edit refused; ``problems`` says why, one :class:`Problem` each."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class EditResult:
    config: NodeConfig  # the config as written
    changed: int  # entries added or removed


# --- reading and writing -------------------------------------------------------------------------


@contextmanager
def _locked_folder(path: Path) -> Iterator[None]:
    """An exclusive lock on the config's folder for the whole read-modify-write."""
    fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` durably (:func:`dicom_node.durable.atomic_write`), keeping
    the file's permissions."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    atomic_write(path, text, mode=mode)


def _parse(text: str, path: Path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EditError([Problem(str(path), MISSING, f"is not valid TOML: {exc}")]) from exc


# --- text surgery on arrays of tables -------------------------------------------------------------


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _is_blank(line: str) -> bool:
    return not line.strip()


@dataclass(frozen=True)
class _Header:
    index: int  # line number of the header
    name: str  # table name, quotes removed
    is_array: bool


def _headers(lines: list[str]) -> list[_Header]:
    found = []
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m and len(m.group(1)) == len(m.group(3)):
            name = ".".join(part.strip().strip("\"'") for part in m.group(2).split("."))
            found.append(_Header(i, name, m.group(1) == "[["))
    return found


def _attached_comments_start(lines: list[str], header_line: int) -> int:
    """The first of the comment lines directly above a header (no blank line between)."""
    start = header_line
    while start > 0 and _is_comment(lines[start - 1]):
        start -= 1
    return start


def _content_end(lines: list[str], headers: list[_Header], k: int) -> int:
    """The last key (or value continuation) line of the k-th header's table."""
    stop = headers[k + 1].index if k + 1 < len(headers) else len(lines)
    end = headers[k].index
    for i in range(headers[k].index + 1, stop):
        if not _is_blank(lines[i]) and not _is_comment(lines[i]):
            end = i
    return end


def _entries(lines: list[str], array: str) -> tuple[list[_Header], list[int]]:
    headers = _headers(lines)
    return headers, [k for k, h in enumerate(headers) if h.is_array and h.name == array]


def _render_entry(array: str, entry: dict[str, Any], nl: str = "\n") -> list[str]:
    rendered = [f"[[{array}]]{nl}"]
    for key, value in entry.items():
        rendered.append(f"{key} = {tomlkit.item(value).as_string()}{nl}")
    return rendered


def _commented_example_end(lines: list[str], array: str) -> int | None:
    """After the last commented-out ``# [[array]]`` example block: where a first entry reads best."""
    example = re.compile(r"^\s*#\s*\[\[\s*" + re.escape(array) + r"\s*\]\]")
    hits = [i for i, line in enumerate(lines) if example.match(line)]
    if not hits:
        return None
    at = hits[-1]
    while at < len(lines) and _is_comment(lines[at]):
        at += 1
    return at


def _text_append(text: str, array: str, entry: dict[str, Any], near_example: bool = True) -> str:
    nl = "\r\n" if "\r\n" in text else "\n"  # the file's own line ends
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += nl
    headers, mine = _entries(lines, array)
    block = _render_entry(array, entry, nl)
    example_end = _commented_example_end(lines, array) if near_example and not mine else None
    if mine:
        at = _content_end(lines, headers, mine[-1]) + 1
        lines[at:at] = [nl, *block]
    elif example_end is not None:
        after = [] if example_end >= len(lines) or _is_blank(lines[example_end]) else [nl]
        lines[example_end:example_end] = [nl, *block, *after]
    else:
        if lines and not _is_blank(lines[-1]):
            lines.append(nl)
        lines += block
    return "".join(lines)


def _text_remove(text: str, array: str, position: int) -> str:
    lines = text.splitlines(keepends=True)
    headers, mine = _entries(lines, array)
    k = mine[position]
    start = _attached_comments_start(lines, headers[k].index)
    end = _content_end(lines, headers, k) + 1
    # Keep the spacing: drop one of the blank lines that would now meet.
    if end < len(lines) and _is_blank(lines[end]) and (start == 0 or _is_blank(lines[start - 1])):
        end += 1
    elif end >= len(lines) and start > 0 and _is_blank(lines[start - 1]):
        start -= 1  # the entry ended the file: so does the line before it now
    del lines[start:end]
    return "".join(lines)


def _reads_back(text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _tomlkit_edit(text: str, array: str, edit: Callable[[list], None]) -> str:
    """For arrays written inline (``sources = [{...}]``): let tomlkit edit the array in place."""
    doc = tomlkit.parse(text)
    edit(doc[array])
    return tomlkit.dumps(doc)


def _apply(text: str, doc: dict, array: str, *, add: dict | None = None, remove: list[int] | None = None) -> str:
    lines = text.splitlines(keepends=True)
    _, mine = _entries(lines, array)
    count = len(doc.get(array, []))
    if count and not mine:
        def edit(arr: list) -> None:
            for position in sorted(remove or [], reverse=True):
                del arr[position]
            if add is not None:
                arr.append(add)

        return _tomlkit_edit(text, array, edit)
    if len(mine) != count:
        raise EditError([Problem(array, MISSING, "the file's layout is unusual here; edit it by hand")])
    for position in sorted(remove or [], reverse=True):
        text = _text_remove(text, array, position)
    if add is not None:
        candidate = _text_append(text, array, add)
        if not mine and _reads_back(candidate).get(array) != [add]:
            # The commented example sits inside another table: a header there would capture its
            # keys, so the first entry goes to the end of the file instead.
            candidate = _text_append(text, array, add, near_example=False)
        text = candidate
    return text


# --- the edits ------------------------------------------------------------------------------------


def _edit(path: str | os.PathLike, array: str, plan: Callable[[dict], tuple[dict | None, list[int]]]) -> EditResult:
    """Read, plan, edit the text, check it reads back as planned, validate, write atomically."""
    path = Path(path)
    with _locked_folder(path):
        text = read_config_text(path)
        doc = _parse(text, path)
        entries = doc.get(array, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise EditError([Problem(array, entries, f"must be an array of tables ([[{array}]]); fix it by hand first")])
        add, remove = plan(doc)
        expected = copy.deepcopy(doc)
        entries = [e for i, e in enumerate(expected.get(array, [])) if i not in set(remove)]
        if add is not None:
            entries.append(add)
        if entries:
            expected[array] = entries
        else:
            expected.pop(array, None)
        new_text = _apply(text, doc, array, add=add, remove=remove)
        written = _parse(new_text, path)
        if written.get(array) == []:
            written.pop(array)  # an inline array emptied by tomlkit: "sources = []" means none
        if written != expected:
            raise EditError([Problem(array, MISSING, "the file's layout is unusual here; edit it by hand")])
        # the checks of a config a node runs with, once the file meets them: an edit may not
        # remove the last source, but a destination can be added before the first source is
        serving = not validate_config(doc, config_dir=path.parent, serving=True)
        problems = validate_config(expected, config_dir=path.parent, serving=serving)
        if problems:
            raise EditError(problems)
        write_atomically(path, new_text)
    return EditResult(parse_config(expected, path), (1 if add is not None else 0) + len(remove))


def _argument_problems(checks: list[tuple[str, Any, Callable[[Any], str | None]]]) -> None:
    problems = [Problem(key, value, why) for key, value, check in checks if (why := check(value))]
    if problems:
        raise EditError(problems)


def add_source(path: str | os.PathLike, ae_title: str, host: str | None = None) -> EditResult:
    """Allow ``ae_title`` (from ``host`` only, when given) to send to the node."""
    checks: list = [("AE_TITLE", ae_title, ae_title_problem)]
    if host is not None:
        checks.append(("--host", host, host_problem))
    _argument_problems(checks)

    def plan(doc: dict) -> tuple[dict, list[int]]:
        for i, s in enumerate(doc.get("sources", [])):
            if str(s.get("ae_title", "")).strip(" ") == ae_title.strip(" ") and (s.get("host") or None) == host:
                where = f" from host {host}" if host else ""
                raise EditError([Problem(f"sources[{i}].ae_title", ae_title, f"already allowed{where}")])
        entry = {"ae_title": ae_title}
        if host is not None:
            entry["host"] = host
        return entry, []

    return _edit(path, "sources", plan)


def remove_source(path: str | os.PathLike, ae_title: str) -> EditResult:
    """Remove every ``[[sources]]`` entry with this AE title (whatever its host)."""

    def plan(doc: dict) -> tuple[None, list[int]]:
        hits = [
            i for i, s in enumerate(doc.get("sources", [])) if str(s.get("ae_title", "")).strip(" ") == ae_title.strip(" ")
        ]
        if not hits:
            raise EditError([Problem("AE_TITLE", ae_title, "no such source in [[sources]]")])
        return None, hits

    return _edit(path, "sources", plan)


def add_destination(
    path: str | os.PathLike,
    name: str,
    ae_title: str,
    host: str,
    port: str | int,
    *,
    tls: bool = False,
    tls_ca_certificates: str | os.PathLike | None = None,
    tls_certificate: str | os.PathLike | None = None,
    tls_private_key: str | os.PathLike | None = None,
    tls_verify_hostname: bool | None = None,
) -> EditResult:
    """Add a ``[[destinations]]`` entry; ``port`` may be the text typed on the command line.

    With ``tls``, the entry gets ``tls = true`` and the TLS keys that are given (``None``: left
    out, so the defaults apply; ``tls_verify_hostname`` is written only when false is asked for).
    File paths are written absolute, resolved as the config resolves them (the current folder,
    then the config's folder), so the node finds them whatever folder it runs in; validation
    refuses a file that is not there."""
    number, port_why = port_argument_problem(port) if isinstance(port, str) else (port, port_problem(port))
    problems = [
        Problem(key, value, why)
        for key, value, why in (
            ("NAME", name, destination_name_problem(name)),
            ("AE_TITLE", ae_title, ae_title_problem(ae_title)),
            ("HOST", host, host_problem(host)),
            ("PORT", port, port_why),
        )
        if why
    ]
    tls_files = {
        "tls_ca_certificates": tls_ca_certificates,
        "tls_certificate": tls_certificate,
        "tls_private_key": tls_private_key,
    }
    for key, value in tls_files.items():
        if value is not None and not str(value).strip():
            problems.append(Problem(f"--{key.replace('_', '-')}", str(value), "must not be empty"))
    if not tls and (any(v is not None for v in tls_files.values()) or tls_verify_hostname is not None):
        problems.append(Problem("--tls", False, "the TLS options need tls (--tls)"))
    if problems:
        raise EditError(problems)
    config_dir = Path(path).parent

    def plan(doc: dict) -> tuple[dict, list[int]]:
        for i, d in enumerate(doc.get("destinations", [])):
            if d.get("name") == name:
                raise EditError([Problem(f"destinations[{i}].name", name, "already exists; remove it first")])
        entry: dict[str, Any] = {"name": name, "ae_title": ae_title, "host": host, "port": number}
        if tls:
            entry["tls"] = True
            for key, value in tls_files.items():
                if value is not None:
                    entry[key] = str(resolve_path(str(value), config_dir).absolute())
            if tls_verify_hostname is not None and not tls_verify_hostname:
                entry["tls_verify_hostname"] = False
        return entry, []

    return _edit(path, "destinations", plan)


def remove_destination(path: str | os.PathLike, name: str) -> EditResult:
    """Remove the ``[[destinations]]`` entry called ``name``."""

    def plan(doc: dict) -> tuple[None, list[int]]:
        hits = [i for i, d in enumerate(doc.get("destinations", [])) if d.get("name") == name]
        if not hits:
            raise EditError([Problem("NAME", name, "no such destination in [[destinations]]")])
        return None, hits

    return _edit(path, "destinations", plan)


def set_web_user(path: str | os.PathLike, name: str, role: str, password_hash: str) -> EditResult:
    """Add the ``[[web_users]]`` entry ``name`` with ``role`` and ``password_hash``, replacing the
    entry of that name when there is one (its attached comments go with it)."""
    from dicom_node.config.keys import web_role_problem, web_user_problem

    _argument_problems([("USER", name, web_user_problem), ("--role", role, web_role_problem)])

    def plan(doc: dict) -> tuple[dict, list[int]]:
        hits = [i for i, u in enumerate(doc.get("web_users", [])) if u.get("name") == name]
        return {"name": name, "role": role, "password_hash": password_hash}, hits

    return _edit(path, "web_users", plan)
