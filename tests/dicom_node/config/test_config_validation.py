"""Each validation rule of the config document rejects its bad value, and only that value."""

from __future__ import annotations

import copy
import tomllib

import pytest

from dicom_node.config.model import ConfigError, config_from_text, load_config
from dicom_node.config.validation import MISSING, Problem, validate_config
from tests.support.paths import REPO

GOOD = {
    "node": {
        "ae_title": "M2UNET",
        "host": "0.0.0.0",
        "port": 11112,
        "data_dir": "var",
        "series_timeout": 30,
        "reject_unknown_sources": True,
        "accept_other_storage": False,
        "log_format": "auto",
    },
    "model": {"device": "auto"},
    "results": {"summary_image": True},
    "sender": {"retry_initial": 5, "retry_max": 300},
    "tls": {"enabled": False, "require_client_certificate": True},
    "sources": [{"ae_title": "CT_1", "host": "10.1.2.3", "series_timeout": 12.5}, {"ae_title": "CT_2"}],
    "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "pacs.example.org", "port": 4242}],
}


def with_value(path: tuple, value) -> dict:
    """GOOD with one value replaced (path like ("node", "port") or ("sources", 0, "host"))."""
    doc = copy.deepcopy(GOOD)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def keys(problems: list[Problem]) -> list[str]:
    return [p.key for p in problems]


def test_good_document_has_no_problems(tmp_path):
    assert validate_config(GOOD, config_dir=tmp_path) == []


def test_shipped_config_is_valid_and_has_the_newcomer_defaults():
    path = REPO / "config" / "node.toml"
    doc = tomllib.loads(path.read_text())
    assert validate_config(doc, config_dir=path.parent) == []
    config = config_from_text(path.read_text(), path)
    assert config.node.port == 11112
    assert [(s.ae_title, s.host) for s in config.sources] == [("DEMO_SCANNER", "127.0.0.1")]
    assert config.destinations == ()
    assert config.model.weights is None  # the shipped weights


BAD_VALUES = [
    # AE titles: 1-16 characters, no backslash, no control characters, not all spaces
    (("node", "ae_title"), "", "empty"),
    (("node", "ae_title"), "A" * 17, "at most 16"),
    (("node", "ae_title"), "    ", "all spaces"),
    (("node", "ae_title"), "CT\\1", "backslash"),
    (("node", "ae_title"), "CT\n1", "control"),
    (("node", "ae_title"), "CT\t1", "control"),
    (("node", "ae_title"), "CTÉ", "ASCII"),
    (("node", "ae_title"), 12, "string"),
    (("sources", 0, "ae_title"), "X" * 17, "at most 16"),
    (("destinations", 0, "ae_title"), "A\\B", "backslash"),
    # ports 1-65535, integers
    (("node", "port"), 0, "between 1 and 65535"),
    (("node", "port"), 65536, "between 1 and 65535"),
    (("node", "port"), -1, "between 1 and 65535"),
    (("node", "port"), "11112", "integer"),
    (("node", "port"), True, "integer"),
    (("node", "port"), 11112.0, "integer"),
    (("destinations", 0, "port"), 70000, "between 1 and 65535"),
    # hosts: names or IP addresses
    (("node", "host"), "", "empty"),
    (("node", "host"), "not a host", "host name"),
    (("node", "host"), "999.1.1.1", "IP address"),
    (("node", "host"), "-bad.example", "host name"),
    (("sources", 0, "host"), "10.1.2.3/24", "host name"),
    (("destinations", 0, "host"), "pacs_example", "host name"),
    (("destinations", 0, "host"), 4242, "string"),
    # timeouts > 0
    (("node", "series_timeout"), 0, "greater than 0"),
    (("node", "series_timeout"), -5, "greater than 0"),
    (("node", "series_timeout"), "30", "number"),
    (("sources", 0, "series_timeout"), 0, "greater than 0"),
    (("sender", "retry_initial"), 0, "greater than 0"),
    # enumerations and booleans
    (("model", "device"), "gpu", "auto, cpu, cuda or cuda:N"),
    (("model", "device"), "cuda:x", "auto, cpu, cuda or cuda:N"),
    (("node", "log_format"), "text", "auto, console, json"),
    (("node", "reject_unknown_sources"), "yes", "true or false"),
    (("node", "accept_other_storage"), 1, "true or false"),
    (("results", "summary_image"), "true", "true or false"),
    (("tls", "enabled"), "no", "true or false"),
    # names and folders
    (("destinations", 0, "name"), "my pacs", "letters, digits"),
    (("destinations", 0, "name"), "", "letters, digits"),
    (("node", "data_dir"), "  ", "empty"),
]


@pytest.mark.parametrize("path,value,reason", BAD_VALUES, ids=lambda v: repr(v)[:30])
def test_each_rule_rejects_its_bad_value(tmp_path, path, value, reason):
    problems = validate_config(with_value(path, value), config_dir=tmp_path)
    key = path[0] + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
    assert keys(problems) == [key]
    assert problems[0].value == value
    assert reason in problems[0].reason


@pytest.mark.parametrize(
    "path,value",
    [
        (("node", "ae_title"), "A" * 16),
        (("node", "ae_title"), "CT SCANNER 1"),
        (("node", "host"), "::"),
        (("node", "host"), "fe80::1"),
        (("node", "host"), "localhost"),
        (("destinations", 0, "host"), "orthanc"),
        (("destinations", 0, "host"), "pacs-1.hospital.example."),
        (("node", "port"), 1),
        (("node", "port"), 65535),
        (("model", "device"), "cuda:3"),
        (("model", "device"), "cpu"),
        (("node", "series_timeout"), 0.5),
        (("node", "log_format"), "json"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_good_values_pass(tmp_path, path, value):
    assert validate_config(with_value(path, value), config_dir=tmp_path) == []


def test_unknown_keys_are_reported_with_the_closest_known_key(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["node"]["serie_timeout"] = 10
    doc["sources"][1]["hots"] = "10.0.0.1"
    doc["destination"] = [{"name": "x"}]
    problems = {p.key: p for p in validate_config(doc, config_dir=tmp_path)}
    assert set(problems) == {"node.serie_timeout", "sources[1].hots", "destination"}
    assert "did you mean 'series_timeout'" in problems["node.serie_timeout"].reason
    assert "did you mean 'host'" in problems["sources[1].hots"].reason
    assert "did you mean 'destinations'" in problems["destination"].reason


def test_required_keys_of_entries(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["sources"].append({"host": "10.0.0.9"})
    del doc["destinations"][0]["port"]
    problems = validate_config(doc, config_dir=tmp_path)
    assert [(p.key, p.value, p.reason) for p in problems] == [
        ("sources[2].ae_title", MISSING, "required"),
        ("destinations[0].port", MISSING, "required"),
    ]
    assert str(problems[0]) == "sources[2].ae_title = (missing): required"


def test_tables_of_the_wrong_shape(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["sources"] = {"ae_title": "CT_1"}  # [sources] instead of [[sources]]
    doc["node"] = 5
    assert keys(validate_config(doc, config_dir=tmp_path)) == ["node", "sources"]


def test_duplicate_sources_with_the_same_host_and_duplicate_destination_names(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["sources"] += [
        {"ae_title": "CT_1", "host": "10.1.2.3"},  # duplicate of sources[0]
        {"ae_title": "CT_1", "host": "10.1.2.4"},  # same title, other host: allowed
        {"ae_title": "CT_2 "},  # trailing spaces are not significant in AE titles
    ]
    doc["destinations"].append({"name": "pacs", "ae_title": "OTHER", "host": "10.0.0.1", "port": 104})
    problems = validate_config(doc, config_dir=tmp_path)
    assert keys(problems) == ["sources[2].ae_title", "sources[4].ae_title", "destinations[1].name"]
    assert "same host as sources[0]" in problems[0].reason
    assert "duplicate" in problems[1].reason
    assert "duplicate of destinations[0]" in problems[2].reason


def test_retry_max_not_below_retry_initial(tmp_path):
    problems = validate_config(with_value(("sender", "retry_max"), 2), config_dir=tmp_path)
    assert keys(problems) == ["sender.retry_max"]


def test_weights_file_must_exist(tmp_path):
    doc = with_value(("model", "weights"), "missing.pt")
    problems = validate_config(doc, config_dir=tmp_path)
    assert keys(problems) == ["model.weights"] and "not found" in problems[0].reason
    (tmp_path / "folder.pt").mkdir()
    assert "not a file" in validate_config(with_value(("model", "weights"), str(tmp_path / "folder.pt")))[0].reason
    (tmp_path / "w.pt").write_bytes(b"x")
    assert validate_config(with_value(("model", "weights"), str(tmp_path / "w.pt")), config_dir=tmp_path) == []


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("")
    problems = validate_config(with_value(("node", "data_dir"), str(tmp_path / "state")), config_dir=tmp_path)
    assert keys(problems) == ["node.data_dir"]


def test_tls_files_must_exist_when_enabled(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["tls"] = {"enabled": True, "certificate": str(tmp_path / "node.crt")}
    problems = validate_config(doc, config_dir=tmp_path)
    assert keys(problems) == ["tls.private_key", "tls.ca_certificates", "tls.certificate"]
    assert problems[0].value is MISSING and "not found" in problems[2].reason
    for name in ("node.crt", "node.key", "ca.crt"):
        (tmp_path / name).write_text("pem")
    doc["tls"].update(private_key="node.key", ca_certificates="ca.crt")  # relative to the config's folder
    assert validate_config(doc, config_dir=tmp_path) == []
    # not required to verify clients: no CA file needed
    doc["tls"] = {"enabled": True, "certificate": "node.crt", "private_key": "node.key", "require_client_certificate": False}
    assert validate_config(doc, config_dir=tmp_path) == []
    # disabled: files not checked
    doc["tls"] = {"enabled": False, "certificate": "nowhere.crt"}
    assert validate_config(doc, config_dir=tmp_path) == []


def test_load_config_lists_every_problem(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = 0\nae_title = "A\\\\B"\n[[sources]]\nhost = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        "node.port = 0: must be between 1 and 65535",
        'node.ae_title = "A\\\\B": must not contain a backslash',
        "sources[0].ae_title = (missing): required",
    ]


def test_load_config_reports_toml_syntax_and_unreadable_files(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[node\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_the_shipped_config_documents_every_key_with_its_default():
    from dicom_node.config.keys import documentation_problems

    shipped = (REPO / "config" / "node.toml").read_text()
    assert documentation_problems(shipped) == []
    # a key the file stops documenting, and a documented line naming no key, are both reported
    without = shipped.replace("# visibility_timeout = 3600", "")
    assert any(p.startswith("pipeline.visibility_timeout") for p in documentation_problems(without))
    typo = shipped.replace("# queue = \"m2unet\"", "# queues = \"m2unet\"")
    assert any("queues" in p for p in documentation_problems(typo))
