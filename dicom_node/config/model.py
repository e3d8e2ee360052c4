"""The node's configuration: the TOML file of INTERFACES.md read into frozen dataclasses.

Where the file lives: ``--config PATH``, else ``$M2UNET_CONFIG``, else ``config/node.toml``.
Relative paths in the file (``data_dir``, ``weights``) are taken relative to the current directory
(the repository root under ``make run``), then to the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("config/node.toml")
CONFIG_ENV = "M2UNET_CONFIG"


class ConfigError(ValueError):
    """The config file cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "M2UNET"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = Path("var")
    series_timeout: float = 30.0
    reject_unknown_sources: bool = True
    accept_other_storage: bool = False  # non-CT storage classes: False refuses them, True stores and ignores
    log_format: str = "auto"  # auto (console on a terminal, JSON otherwise) | console | json


@dataclass(frozen=True)
class ModelSettings:
    weights: Path | None = None  # None: the shipped weights
    device: str = "auto"


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None  # peers' certificates are verified against these
    require_client_certificate: bool = True


@dataclass(frozen=True)
class ResultsSettings:
    summary_image: bool = True  # a Secondary Capture with key slices for viewers without SEG/SR


@dataclass(frozen=True)
class SenderSettings:
    retry_initial: float = 5.0  # seconds before the first retry; doubles after each failure
    retry_max: float = 300.0  # cap of the delay between retries


@dataclass(frozen=True)
class RetentionSettings:
    """What the node deletes, and when (see :mod:`dicom_node.ops.retention`). 0 days: keep forever."""

    received_days: float = 7.0  # received instances: days after the series is final and delivered
    results_days: float = 30.0  # result folders and outbox copies: days after creation / delivery
    check_interval: float = 3600.0  # seconds between two passes (one also runs at start-up)


@dataclass(frozen=True)
class Source:
    ae_title: str
    host: str | None = None
    series_timeout: float | None = None  # per-source override of [node] series_timeout


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination for results. The ``tls_*`` paths are as the entry gives them (None:
    not set); :func:`dicom_node.delivery.tls.destination_tls_files` fills in the ``[tls]`` defaults."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False  # DICOM TLS (PS3.15 B.1) for the associations to this destination
    tls_ca_certificates: Path | None = None  # the destination's certificate is verified against these
    tls_certificate: Path | None = None  # this node's client certificate (mutual TLS)
    tls_private_key: Path | None = None
    tls_verify_hostname: bool = True  # the certificate must name ``host``


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
    path: Path | None = None  # the file it was read from
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the whole parsed TOML


def resolve_config_path(cli_path: str | os.PathLike | None) -> Path:
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def resolve_path(value: str, config_dir: Path) -> Path:
    """A path as the config gives it: absolute as is; relative to the current folder when it
    exists there (or exists nowhere), else relative to the config's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or (Path.cwd() / p).exists() or not (config_dir / p).exists():
        return p if p.is_absolute() else Path.cwd() / p
    return config_dir / p


def parse_config(doc: dict, path: Path | None = None) -> NodeConfig:
    """Build a :class:`NodeConfig` from a parsed TOML document (values assumed validated)."""
    config_dir = path.parent if path else Path.cwd()

    def optional_path(entry: dict, key: str) -> Path | None:
        return resolve_path(entry[key], config_dir) if entry.get(key) else None

    n = doc.get("node", {})
    node = NodeSettings(
        ae_title=n.get("ae_title", NodeSettings.ae_title),
        host=n.get("host", NodeSettings.host),
        port=int(n.get("port", NodeSettings.port)),
        data_dir=resolve_path(n.get("data_dir", "var"), config_dir),
        series_timeout=float(n.get("series_timeout", NodeSettings.series_timeout)),
        reject_unknown_sources=bool(n.get("reject_unknown_sources", True)),
        accept_other_storage=bool(n.get("accept_other_storage", False)),
        log_format=n.get("log_format", "auto"),
    )
    t = doc.get("tls", {})
    tls = TlsSettings(
        enabled=bool(t.get("enabled", False)),
        certificate=optional_path(t, "certificate"),
        private_key=optional_path(t, "private_key"),
        ca_certificates=optional_path(t, "ca_certificates"),
        require_client_certificate=bool(t.get("require_client_certificate", True)),
    )
    r = doc.get("results", {})
    results = ResultsSettings(summary_image=bool(r.get("summary_image", True)))
    snd = doc.get("sender", {})
    sender = SenderSettings(
        retry_initial=float(snd.get("retry_initial", SenderSettings.retry_initial)),
        retry_max=float(snd.get("retry_max", SenderSettings.retry_max)),
    )
    ret = doc.get("retention", {})
    retention = RetentionSettings(
        received_days=float(ret.get("received_days", RetentionSettings.received_days)),
        results_days=float(ret.get("results_days", RetentionSettings.results_days)),
        check_interval=float(ret.get("check_interval", RetentionSettings.check_interval)),
    )
    m = doc.get("model", {})
    model = ModelSettings(
        weights=optional_path(m, "weights"),
        device=m.get("device", "auto"),
    )
    sources = tuple(
        Source(
            ae_title=s["ae_title"],
            host=s.get("host") or None,
            series_timeout=float(s["series_timeout"]) if s.get("series_timeout") is not None else None,
        )
        for s in doc.get("sources", [])
    )
    destinations = tuple(
        Destination(
            name=d["name"],
            ae_title=d["ae_title"],
            host=d["host"],
            port=int(d["port"]),
            tls=bool(d.get("tls", False)),
            tls_ca_certificates=optional_path(d, "tls_ca_certificates"),
            tls_certificate=optional_path(d, "tls_certificate"),
            tls_private_key=optional_path(d, "tls_private_key"),
            tls_verify_hostname=bool(d.get("tls_verify_hostname", True)),
        )
        for d in doc.get("destinations", [])
    )
    return NodeConfig(
        node=node,
        model=model,
        sources=sources,
        destinations=destinations,
        tls=tls,
        results=results,
        sender=sender,
        retention=retention,
        path=path,
        raw=doc,
    )


def config_from_text(text: str, path: Path | None = None, *, serving: bool = False) -> NodeConfig:
    """Validate and parse the text of a config file; raise :class:`ConfigError` listing every problem.
    ``serving=True``: the config a node runs with (``[node]`` and a ``[[sources]]`` required; see
    :func:`dicom_node.config.validation.validate_config`)."""
    where = path if path is not None else "config"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {where} is not valid TOML: {exc}"]) from exc
    from dicom_node.config.validation import validate_config

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
