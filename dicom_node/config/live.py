"""Hot reload: the node's config as it is now, re-read when the file changes or on SIGHUP.

``LiveConfig(path).current`` is the last good :class:`~dicom_node.config.model.NodeConfig`. A watcher
thread (``start()``/``stop()``) looks at the file about once a second and calls :meth:`reload` when
its content changed; the node also calls :meth:`reload` on SIGHUP. A file that fails validation is
refused: the reasons are logged (``config_rejected``, one ``problem`` per line) and the last good
config stays in force, so a broken hand edit never stops a receiving node.

What takes effect without a restart is whatever the stages read from ``.current`` as they work:
``[[sources]]`` (every association request), ``[[destinations]]`` and ``[sender]`` (every send),
series timeouts, ``reject_unknown_sources``, ``accept_other_storage``, ``[results]``. The listening
address, AE title, ``data_dir``, ``log_format``, ``[model]``, ``[tls]`` and the console's ``[web]``
``enabled``, ``host``, ``port`` and ``session_minutes`` are bound at start-up:
``.current`` keeps their start-up values (so no stage ever sees, say, a new ``data_dir`` while
others use the old one), and a change to them is logged as ``config_needs_restart`` naming the keys.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import fields, replace

import structlog

from dicom_node.config.model import ConfigError, NodeConfig, config_from_text, read_config_text, resolve_config_path

log = structlog.get_logger()

Subscriber = Callable[[NodeConfig], None]

# Settings read once at start-up: changing them needs a restart of `m2unet-node run`.
RESTART_KEYS = (
    ("node", "ae_title"),
    ("node", "host"),
    ("node", "port"),
    ("node", "data_dir"),
    ("node", "log_format"),
    ("model", "weights"),
    ("model", "device"),
    ("tls", None),
    ("web", "enabled"),
    ("web", "host"),
    ("web", "port"),
    ("web", "session_minutes"),
)


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_start_up_values(new: NodeConfig, start: NodeConfig) -> NodeConfig:
    """``new`` with every restart-bound key at its value in ``start``."""
    node = replace(
        new.node,
        **{key: getattr(start.node, key) for table, key in RESTART_KEYS if table == "node" and key is not None},
    )
    web = replace(
        new.web,
        **{key: getattr(start.web, key) for table, key in RESTART_KEYS if table == "web" and key is not None},
    )
    return replace(new, node=node, model=start.model, tls=start.tls, web=web)


def restart_keys_changed(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The bound-at-start-up keys whose value differs between ``old`` and ``new``."""
    changed = []
    for table, key in RESTART_KEYS:
        a, b = getattr(old, table), getattr(new, table)
        if key is None:
            changed += [f"{table}.{f.name}" for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        elif getattr(a, key) != getattr(b, key):
            changed.append(f"{table}.{key}")
    return changed


class LiveConfig:
    """The last good config of the file at ``path``; see the module's docstring.

    Raises :class:`~dicom_node.config.model.ConfigError` at construction when the file cannot be used:
    a node never starts on a bad config.
    """

    def __init__(self, path: str | os.PathLike | None = None, poll_interval: float = 1.0) -> None:
        self.path = resolve_config_path(path)
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        text = read_config_text(self.path)
        self._current = config_from_text(text, self.path, serving=True)
        self._start_up = self._current  # the restart-bound keys keep these values
        self._seen = _fingerprint(text.encode("utf-8"))  # the last content looked at, good or bad

    @property
    def current(self) -> NodeConfig:
        """The last config that passed validation (an immutable snapshot: read it once per task)."""
        return self._current

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(new_config)`` after each reload that changed the config.

        Callbacks run on the reloading thread; an exception in one is logged and does not stop the
        others. Returns a function that unsubscribes.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def reload(self) -> bool:
        """Re-read the file now. True: it is valid and in force; False: refused, the last good stays."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                log.warning("config_rejected", path=str(self.path), problem=f"cannot read: {exc.strerror or exc}")
                return False
            self._seen = _fingerprint(data)
            try:
                new = config_from_text(data.decode("utf-8"), self.path, serving=True)
            except UnicodeDecodeError as exc:
                log.warning("config_rejected", path=str(self.path), problem=f"not UTF-8 text: {exc}")
                return False
            except ConfigError as exc:
                for problem in exc.problems:
                    log.warning("config_rejected", path=str(self.path), problem=problem)
                log.warning("config_kept", path=str(self.path), reason="last good config stays in force")
                return False
            needs_restart = restart_keys_changed(self._start_up, new)
            if needs_restart:
                log.warning("config_needs_restart", path=str(self.path), keys=needs_restart)
            new = with_start_up_values(new, self._start_up)
            old = self._current
            self._current = new
            if new == old:
                return True
            log.info(
                "config_reloaded",
                path=str(self.path),
                sources=len(new.sources),
                destinations=len(new.destinations),
            )
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(new)
            except Exception:  # noqa: BLE001 - one bad subscriber must not stop the others
                log.exception("config_subscriber_failed", callback=getattr(callback, "__qualname__", repr(callback)))
        return True

    def request_reload(self) -> None:
        """Ask the watcher thread to reload soon; safe to call from a signal handler."""
        self._wake.set()

    def check_file(self) -> bool | None:
        """Reload when the file's content differs from what was last looked at.

        Returns None when nothing changed, else what :meth:`reload` returned.
        """
        try:
            data = self.path.read_bytes()
        except OSError:
            return None  # mid-rename or briefly missing: look again next time
        if _fingerprint(data) == self._seen:
            return None
        return self.reload()

    def start(self) -> None:
        """Start the watcher thread (a daemon; idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="config-watcher", daemon=True)
        self._thread.start()
        log.info("config_watching", path=str(self.path), interval_s=self.poll_interval)

    def stop(self) -> None:
        """Stop the watcher thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.poll_interval))
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll_interval)
            if self._stop.is_set():
                break
            try:
                if woken:
                    self._wake.clear()
                    self.reload()
                else:
                    self.check_file()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("config_watch_failed", path=str(self.path))

    def __enter__(self) -> LiveConfig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
