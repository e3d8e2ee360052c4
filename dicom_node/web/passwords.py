"""``m2unet-node web set-password USER [--role admin|viewer]``: read a password from standard
input (one line), write its argon2id hash as the ``[[web_users]]`` entry USER of the config file
(comments kept, validated, locked and atomic: :func:`dicom_node.config.edit.set_web_user`).
A running node uses the new password at the next login (hot reload)."""

from __future__ import annotations

import os
import sys

from dicom_node.config.edit import EditError, set_web_user
from dicom_node.config.model import ConfigError, resolve_config_path
from dicom_node.web.auth import hash_password

MIN_LENGTH = 8


def set_password(config_path: str | os.PathLike | None, user: str, role: str, stdin=None) -> int:
    """0 written; 2 a refused user, role or password (nothing written); 1 the file is not writable."""
    stream = stdin if stdin is not None else sys.stdin
    if stream.isatty():
        print(f"password for {user} (one line, then Enter): ", end="", file=sys.stderr, flush=True)
    password = stream.readline().rstrip("\r\n")
    if len(password) < MIN_LENGTH:
        print(f"password: must be at least {MIN_LENGTH} characters (read from standard input, one line); nothing written",
              file=sys.stderr)
        return 2
    path = resolve_config_path(config_path)
    try:
        result = set_web_user(path, user, role, hash_password(password))
    except (EditError, ConfigError) as exc:
        lines = [str(p) for p in exc.problems] if isinstance(exc, EditError) else list(exc.problems)
        print("\n".join(lines), file=sys.stderr)
        print(f"{path}: not changed", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{path}: cannot write: {exc.strerror or exc}; not changed", file=sys.stderr)
        return 1
    replaced = "changed the password of" if result.changed > 1 else "added"
    print(f"{replaced} console user {user} ({role}) in {path}; the argon2id hash is stored, not the password")
    if not result.config.web.enabled:
        print("note: [web] enabled = false: set it to true and restart the node to serve the console")
    return 0
