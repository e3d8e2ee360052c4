"""Structured logs for the node: JSON lines for services, readable lines on a terminal.

Everyone logs through ``structlog.get_logger()`` with short verbs and key-values, binding
``study_uid``, ``series_uid`` and ``calling_ae``; :func:`configure_logging` decides how the lines
look. Python's standard ``logging`` (pynetdicom's own messages) goes through the same processors
and renderer, so one process writes one format.

Patient identity never reaches a log line: as a defence in depth behind the rule "UIDs and counts
only", :func:`redact_patient_identity` replaces the value of any key that names a patient's identity
(``patient_name``, ``PatientID``, ``birth_date``...), any pydicom person name whatever its key,
and any pydicom dataset passed as a value (replaced by its SOP Instance UID). Quoted values in
pydicom's and highdicom's value errors ("Invalid value for VR DA: '...'") are replaced too, also
in the traceback of a logged exception (``log.exception`` / ``exc_info``), which is rendered as
plain text (no frame's local variables) into ``exception`` before that redaction.

Python ``warnings`` (pydicom's, highdicom's, numpy's...) are logged as ``python_warning`` events
(``category``, ``message``, ``where``) in the same format, never written raw between the lines.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import structlog

LOG_FORMATS = ("auto", "console", "json")
LEVEL_ENV = "M2UNET_LOG_LEVEL"  # debug | info (default) | warning | error
REDACTED = "[redacted]"

# Keys are compared after lower-casing and dropping everything but letters and digits, so
# ``patient_name``, ``PatientName``, ``patient-name`` and ``patients_name`` are all one key.
_IDENTITY_KEYS = frozenset(
    {
        "patientname",
        "patientsname",
        "patientid",
        "patientsid",
        "otherpatientids",
        "otherpatientnames",
        "otherpatientidssequence",
        "issuerofpatientid",
        "birthdate",
        "dateofbirth",
        "dob",
        "patientbirthdate",
        "patientsbirthdate",
        "patientbirthtime",
        "patientsbirthtime",
        "patientbirthname",
        "patientsbirthname",
        "patientmothersbirthname",
        "patientaddress",
        "patientsaddress",
        "patienttelephonenumbers",
        "patientstelephonenumbers",
    }
)
_NOT_ALNUM = re.compile(r"[^0-9a-z]")

# Libraries whose INFO/DEBUG messages are chatter in a service log (highdicom narrates every module
# it copies; pynetdicom can dump DIMSE content at DEBUG): their warnings and errors still show.
_QUIET_LOGGERS = {name: logging.WARNING for name in ("pynetdicom", "highdicom", "apscheduler", "PIL", "matplotlib")}

# The handler configure_logging() installed on the root logger, replaced on the next call.
_installed_handler: logging.Handler | None = None
_original_showwarning = warnings.showwarning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` replacement: one structured ``python_warning`` event."""
    structlog.get_logger("py.warnings").warning(
        "python_warning",
        category=getattr(category, "__name__", str(category)),
        message=redact_quoted_values(str(message)),  # "Invalid value for VR DA: '[redacted]'."
        where=f"{Path(str(filename)).name}:{lineno}",
    )


def is_identity_key(key: str) -> bool:
    """True when ``key`` names a patient's identity (name, ID, birth date, address...)."""
    return _NOT_ALNUM.sub("", str(key).lower()) in _IDENTITY_KEYS


def _is_dataset(value: Any) -> bool:
    # Duck-typed so this module needs no pydicom import: Dataset and FileDataset.
    return type(value).__name__ in {"Dataset", "FileDataset"} and hasattr(value, "dir")


def _scrub(value: Any) -> Any:
    if type(value).__name__ == "PersonName":  # pydicom's PN value: a name, whatever the key says
        return REDACTED
    if _is_dataset(value):
        uid = getattr(value, "SOPInstanceUID", None)
        return f"<Dataset SOPInstanceUID={uid}>" if uid else "<Dataset>"
    if isinstance(value, dict):
        return {k: (REDACTED if is_identity_key(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


# pydicom: "Invalid value for VR DA: '1961-02-03'." (the value's repr: "..." when it holds a quote,
# b'...' for bytes); "Unable to convert '...' to 'DA'", "Unable to convert non-conformant value
# '...'"; pynetdicom: "Non-conformant 'Affected SOP Instance UID' value '...'"
_QUOTED_VALUE = re.compile(
    r"""(Invalid value for VR \w+: |Unable to convert (?:non-conformant value )?|[Vv]alue )"""
    r"""b?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
)


def redact_quoted_values(text: str) -> str:
    """``text`` with the quoted attribute values of pydicom's, highdicom's and pynetdicom's value
    messages replaced by ``'[redacted]'`` (such a value may be a birth date or a name)."""
    return _QUOTED_VALUE.sub(r"\1'[redacted]'", text)


def redact_patient_identity(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: no value under a patient-identity key and no dataset is ever emitted."""
    for key in list(event_dict):
        if isinstance(event_dict[key], str):
            event_dict[key] = redact_quoted_values(event_dict[key])
        if key == "event":
            continue
        if is_identity_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _lead_with_time_level_event(logger: Any, method_name: str, event_dict: dict) -> dict:
    """Put ``timestamp``, ``level``, ``event`` first so JSON lines read left to right."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event", "logger") if k in event_dict}
    return {**head, **event_dict}


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` becomes ``json`` under systemd or when ``stream`` is no terminal, else ``console``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log_format: {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    if fmt != "auto":
        return fmt
    if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"):
        return "json"  # started by systemd: the journal wants one record per line
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure_logging(fmt: str = "auto", level: str | int | None = None, stream: TextIO | None = None) -> str:
    """Set up structlog and the standard ``logging`` module; returns the format chosen.

    ``fmt``: ``auto`` | ``console`` | ``json``. ``level``: a logging level name or number; default
    ``$M2UNET_LOG_LEVEL``, else ``info``.
    ``stream``: where lines go (default: standard error). Safe to call again: the previous handler
    is replaced.
    """
    global _installed_handler
    stream = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, stream)
    if level is None:
        level = os.environ.get(LEVEL_ENV) or "info"
    level_no = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(level_no, int):
        raise ValueError(f"log level: {level!r} is not a logging level (debug, info, warning, error)")

    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if chosen == "json":
        renderer: Any = structlog.processors.JSONRenderer(sort_keys=False)
        final = [
            structlog.processors.UnicodeDecoder(),
            _lead_with_time_level_event,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=bool(getattr(stream, "isatty", lambda: False)()))
        final = []

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # the traceback as plain text (no frame's locals) in ``exception``, before the
            # redaction: its messages may quote a dataset's values ("Invalid value for VR DA: ...")
            structlog.processors.format_exc_info,
            redact_patient_identity,
            *final,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(level_no)
    _installed_handler = handler
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, level_no))
    warnings.showwarning = _log_warning

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            redact_patient_identity,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: loggers fetched at import time follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )
    return chosen


def reset_logging() -> None:
    """Undo :func:`configure_logging` (structlog's defaults, our handler removed); for tests."""
    global _installed_handler
    if _installed_handler is not None:
        logging.getLogger().removeHandler(_installed_handler)
        _installed_handler = None
    warnings.showwarning = _original_showwarning
    structlog.reset_defaults()
