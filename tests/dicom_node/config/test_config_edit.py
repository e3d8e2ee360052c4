"""Edits of the config file keep what the admin wrote, validate first, and write atomically."""

from __future__ import annotations

import os
import shutil
import stat
import tomllib

import pytest

from dicom_node.config.model import load_config
from dicom_node.config.edit import (
    EditError,
    add_destination,
    add_source,
    remove_destination,
    remove_source,
    write_atomically,
)
from tests.support.paths import REPO

HAND_WRITTEN = """\
# Node of ward 3.  (a comment at the top)
[node]
ae_title = "M2UNET"   # what the scanners call us
port = 11112

# Scanners.

# the old scanner, going away in March
[[sources]]
ae_title = "CT_OLD"
host = "10.0.0.1"  # fixed address

[[sources]]
ae_title = "CT_NEW"
# host = "10.0.0.2"  (not fixed yet)
series_timeout = 60

# Where results go.
# [[destinations]]
# name = "pacs"

[results]
summary_image = false  # our viewer reads SEG
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(HAND_WRITTEN)
    return path


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def test_add_source_keeps_comments_and_order(config_file):
    add_source(config_file, "CT_3", host="ct3.ward.example")
    text = config_file.read_text()
    assert comments(text) == comments(HAND_WRITTEN)
    assert text.startswith(HAND_WRITTEN.split("# Where results go.")[0].rstrip("\n"))
    # the new entry follows the last [[sources]] entry, before the destinations' comments
    assert text.index('ae_title = "CT_3"') < text.index("# Where results go.")
    assert [s.ae_title for s in load_config(config_file).sources] == ["CT_OLD", "CT_NEW", "CT_3"]
    assert load_config(config_file).sources[2].host == "ct3.ward.example"


def test_add_then_remove_gives_back_the_same_bytes(config_file):
    add_source(config_file, "CT_3")
    add_destination(config_file, "pacs", "ORTHANC", "127.0.0.1", "4242")
    add_destination(config_file, "archive", "ARCHIVE", "10.9.9.9", 104)
    remove_destination(config_file, "pacs")
    remove_destination(config_file, "archive")
    remove_source(config_file, "CT_3")
    assert config_file.read_text() == HAND_WRITTEN


def test_first_destination_goes_below_the_commented_example(config_file):
    add_destination(config_file, "pacs", "ORTHANC", "127.0.0.1", "4242")
    text = config_file.read_text()
    assert text.index("# name = \"pacs\"") < text.index("[[destinations]]\nname = \"pacs\"") < text.index("[results]")
    config = load_config(config_file)
    assert [(d.name, d.ae_title, d.host, d.port) for d in config.destinations] == [("pacs", "ORTHANC", "127.0.0.1", 4242)]
    assert config.results.summary_image is False  # [results] still its own table


def test_remove_source_takes_its_own_comment_only(config_file):
    result = remove_source(config_file, "CT_OLD")
    assert result.changed == 1
    text = config_file.read_text()
    assert "going away in March" not in text and "fixed address" not in text
    assert "# Scanners." in text and "not fixed yet" in text
    assert [s.ae_title for s in result.config.sources] == ["CT_NEW"]


def test_remove_last_source_leaves_no_empty_array(config_file):
    remove_source(config_file, "CT_OLD")
    # the last source while reject_unknown_sources = true: refused (no scanner could send)
    before = config_file.read_text()
    with pytest.raises(EditError, match="at least one"):
        remove_source(config_file, "CT_NEW")
    assert config_file.read_text() == before
    config_file.write_text(before.replace("port = 11112", "port = 11112\nreject_unknown_sources = false"))
    remove_source(config_file, "CT_NEW")
    doc = tomllib.loads(config_file.read_text())
    assert "sources" not in doc
    assert load_config(config_file).sources == ()


def test_shipped_config_survives_every_edit(tmp_path):
    path = tmp_path / "node.toml"
    shutil.copy(REPO / "config" / "node.toml", path)
    original = path.read_text()
    add_source(path, "CT_1", host="10.1.2.3")
    add_destination(path, "pacs", "ORTHANC", "127.0.0.1", "4242")
    assert comments(path.read_text()) == comments(original)
    remove_source(path, "CT_1")
    remove_destination(path, "pacs")
    assert path.read_text() == original


def test_inline_arrays_are_edited_too(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('# mine\nsources = [{ ae_title = "A" }]  # inline\n[node]\nport = 104\n')
    add_source(path, "B", host="10.0.0.1")
    assert [(s.ae_title, s.host) for s in load_config(path).sources] == [("A", None), ("B", "10.0.0.1")]
    remove_source(path, "A")
    assert [s.ae_title for s in load_config(path).sources] == ["B"]
    with pytest.raises(EditError, match="at least one"):  # the last one: no scanner could send
        remove_source(path, "B")
    assert "# mine" in path.read_text()


@pytest.mark.parametrize(
    "edit,key,reason",
    [
        (lambda p: add_source(p, "A" * 17), "AE_TITLE", "at most 16"),
        (lambda p: add_source(p, "   "), "AE_TITLE", "all spaces"),
        (lambda p: add_source(p, "CT\\9"), "AE_TITLE", "backslash"),
        (lambda p: add_source(p, "CT_9", host="no such host"), "--host", "host name"),
        (lambda p: add_source(p, "CT_OLD", host="10.0.0.1"), "sources[0].ae_title", "already allowed"),
        (lambda p: remove_source(p, "CT_NONE"), "AE_TITLE", "no such source"),
        (lambda p: add_destination(p, "p", "PACS", "10.0.0.1", "0"), "PORT", "between 1 and 65535"),
        (lambda p: add_destination(p, "p", "PACS", "10.0.0.1", "4242x"), "PORT", "integer"),
        (lambda p: add_destination(p, "p q", "PACS", "10.0.0.1", "104"), "NAME", "letters"),
        (lambda p: add_destination(p, "p", "PACS", "1.2.3.999", "104"), "HOST", "IP address"),
        (lambda p: remove_destination(p, "nope"), "NAME", "no such destination"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_edits_are_refused_and_change_nothing(config_file, edit, key, reason):
    before = os.stat(config_file)
    with pytest.raises(EditError) as err:
        edit(config_file)
    assert err.value.problems[0].key == key
    assert reason in err.value.problems[0].reason
    assert config_file.read_text() == HAND_WRITTEN
    assert os.stat(config_file).st_ino == before.st_ino  # not even rewritten


def test_duplicate_destination_name_is_refused(config_file):
    add_destination(config_file, "pacs", "ORTHANC", "127.0.0.1", "4242")
    text = config_file.read_text()
    with pytest.raises(EditError, match="already exists"):
        add_destination(config_file, "pacs", "OTHER", "10.0.0.1", "104")
    assert config_file.read_text() == text


def test_edit_of_a_file_already_invalid_elsewhere_is_refused_with_its_problems(config_file):
    config_file.write_text(HAND_WRITTEN.replace("port = 11112", "port = 99999"))
    with pytest.raises(EditError) as err:
        add_source(config_file, "CT_3")
    assert [str(p) for p in err.value.problems] == ["node.port = 99999: must be between 1 and 65535"]
    assert "CT_3" not in config_file.read_text()


def test_write_is_atomic_and_keeps_the_file_mode(config_file):
    config_file.chmod(0o640)
    inode = os.stat(config_file).st_ino
    add_source(config_file, "CT_3")
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o640
    assert os.stat(config_file).st_ino != inode  # replaced by rename, never rewritten in place
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["node.toml"]  # no temp file left


def test_write_atomically_leaves_no_temp_file_on_failure(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("a = 1\n")
    with pytest.raises(TypeError):
        write_atomically(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "a = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["node.toml"]


def test_windows_line_ends_are_kept(tmp_path):
    path = tmp_path / "node.toml"
    original = HAND_WRITTEN.replace("\n", "\r\n")
    path.write_bytes(original.encode())
    add_source(path, "CT_3")
    add_destination(path, "pacs", "ORTHANC", "127.0.0.1", "4242")
    data = path.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n")
    remove_source(path, "CT_3")
    remove_destination(path, "pacs")
    assert path.read_bytes() == original.encode()


def test_remove_fixes_a_file_made_invalid_by_a_duplicate(config_file):
    duplicated = HAND_WRITTEN + '\n[[sources]]\nae_title = "CT_NEW"\n'
    config_file.write_text(duplicated)
    with pytest.raises(EditError, match="duplicate"):
        add_source(config_file, "CT_3")
    result = remove_source(config_file, "CT_NEW")  # both entries go: the file is valid again
    assert result.changed == 2
    assert [s.ae_title for s in load_config(config_file).sources] == ["CT_OLD"]


def test_a_table_where_an_array_belongs_is_refused(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[sources]\nae_title = "A"\n')
    with pytest.raises(EditError, match=r"must be an array of tables \(\[\[sources\]\]\)"):
        add_source(path, "B")
