"""The node's configuration: the TOML file read into frozen dataclasses (config/node.toml explains each key).

Where the file lives: ``--config PATH``, else ``$M2UNET_CONFIG``, else ``config/node.toml``.
Relative paths in the file (``data_dir``, ``weights``) are taken relative to the current directory
(the repository root under ``make run``), then to the config file's folder.

The settings classes (:class:`NodeSettings`, :class:`Source`, ...) are made from the table of
keys, :data:`dicom_node.config.keys.TABLES`: one attribute per key, with its name, kind and
default. A key is added there, not here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from dicom_node.config.keys import PATH, TABLES, Key, resolve_path
from dicom_node.config.validation import validate_config

DEFAULT_CONFIG_PATH = Path("config/node.toml")
CONFIG_ENV = "M2UNET_CONFIG"


class ConfigError(ValueError):
    """The config file cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _settings_class(name: str, table: str, doc: str = "") -> type:
    """A frozen dataclass with one attribute per key of ``table`` in :data:`TABLES`, in its
    order: the key's name, its kind (``| None`` when it has no default) and its default (none
    for the keys an entry must give)."""
    keys = TABLES[table].keys.values()
    spec = [
        (k.name, k.attribute_type) if k.required else (k.name, k.attribute_type, field(default=k.attribute_default))
        for k in keys
    ]
    header = f"[[{table}]]" if TABLES[table].array else f"[{table}]"
    notes = "".join(f"\n    {k.name}: {k.note}" for k in keys if k.note)
    text = f"{doc or f'The settings of {header}.'}\n\nKeys (checks and defaults: dicom_node.config.keys):{notes}"
    cls = make_dataclass(name, spec, frozen=True, namespace={"__doc__": text})
    cls.__module__ = __name__
    return cls


NodeSettings = _settings_class("NodeSettings", "node")
ModelSettings = _settings_class("ModelSettings", "model")
TlsSettings = _settings_class("TlsSettings", "tls")
ResultsSettings = _settings_class("ResultsSettings", "results")
SenderSettings = _settings_class("SenderSettings", "sender")
RetentionSettings = _settings_class(
    "RetentionSettings",
    "retention",
    "What the node deletes, and when (see :mod:`dicom_node.ops.retention`). 0 days: keep forever.",
)
PipelineSettings = _settings_class(
    "PipelineSettings", "pipeline", "Where the pipeline runs (see :mod:`dicom_node.pipeline.celery_executor`)."
)
WebSettings = _settings_class("WebSettings", "web", "The web console and REST API (see :mod:`dicom_node.web`).")
WebUser = _settings_class("WebUser", "web_users", "A login of the web console: one ``[[web_users]]`` entry.")
Source = _settings_class("Source", "sources", "A scanner (or other sender) allowed to send: one ``[[sources]]`` entry.")
Destination = _settings_class(
    "Destination",
    "destinations",
    "A C-STORE destination for results. The ``tls_*`` paths are as the entry gives them (None:\n"
    "not set); :func:`dicom_node.delivery.tls.destination_tls_files` fills in the ``[tls]`` defaults.",
)


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    sources: tuple[Source, ...] = ()
    destinations: tuple[Destination, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    web: WebSettings = field(default_factory=WebSettings)
    web_users: tuple[WebUser, ...] = ()
    path: Path | None = None  # the file it was read from
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the whole parsed TOML


# The settings class of each table of keys.TABLES (a table there needs one here and a NodeConfig field).
_SETTINGS: dict[str, type] = {
    "node": NodeSettings,
    "model": ModelSettings,
    "tls": TlsSettings,
    "results": ResultsSettings,
    "sender": SenderSettings,
    "retention": RetentionSettings,
    "pipeline": PipelineSettings,
    "sources": Source,
    "destinations": Destination,
    "web": WebSettings,
    "web_users": WebUser,
}
if not set(_SETTINGS) == set(TABLES) == {f.name for f in fields(NodeConfig)} - {"path", "raw"}:
    raise ImportError("dicom_node.config: keys.TABLES, model._SETTINGS and NodeConfig's fields name other tables")


def resolve_config_path(cli_path: str | os.PathLike | None) -> Path:
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _read(key: Key, entry: dict, config_dir: Path) -> Any:
    """The attribute's value of ``key`` in one table (or entry) of a validated document."""
    value = entry[key.name] if key.required else entry.get(key.name, key.default)
    if key.default is None and (value is None or value == ""):
        return None  # unset; an empty string too (``host = ""`` is no host)
    return resolve_path(value, config_dir) if key.kind is PATH else key.kind.convert(value)


def parse_config(doc: dict, path: Path | None = None) -> NodeConfig:
    """Build a :class:`NodeConfig` from a parsed TOML document (values assumed validated)."""
    config_dir = path.parent if path else Path.cwd()

    def settings(table: str, entry: dict) -> Any:
        return _SETTINGS[table](**{key.name: _read(key, entry, config_dir) for key in TABLES[table].keys.values()})

    sections = {
        name: tuple(settings(name, e) for e in doc.get(name, [])) if table.array else settings(name, doc.get(name, {}))
        for name, table in TABLES.items()
    }
    return NodeConfig(**sections, path=path, raw=doc)


def config_from_text(text: str, path: Path | None = None, *, serving: bool = False) -> NodeConfig:
    """Validate and parse the text of a config file; raise :class:`ConfigError` listing every problem.
    ``serving=True``: the config a node runs with (``[node]`` and a ``[[sources]]`` required; see
    :func:`dicom_node.config.validation.validate_config`)."""
    where = path if path is not None else "config"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {where} is not valid TOML: {exc}"]) from exc
    problems = validate_config(doc, config_dir=path.parent if path is not None else None, serving=serving)
    if problems:
        raise ConfigError([str(problem) for problem in problems])
    return parse_config(doc, path)


def read_config_text(path: Path) -> str:
    """The file's text; :class:`ConfigError` when it cannot be read."""
    try:
        with open(path, encoding="utf-8", newline="") as f:  # line ends as they are (edits keep them)
            return f.read()
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config: {path} is not UTF-8 text: {exc}"]) from exc


def load_config(path: str | os.PathLike | None = None, *, serving: bool = False) -> NodeConfig:
    """Read, validate and parse the config file; raise :class:`ConfigError` listing every problem.
    For reading commands by default; ``serving=True`` adds the checks of a config a node runs with
    (``[node]`` present, a ``[[sources]]`` while ``reject_unknown_sources``)."""
    p = resolve_config_path(path)
    return config_from_text(read_config_text(p), p, serving=serving)
