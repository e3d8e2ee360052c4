"""The spool: hashed paths (no UID escapes data_dir), atomic durable writes, sweeping leftovers."""

from pathlib import Path

from dicom_node.ingest.spool import PART_SUFFIX, Spool, uid_key


def test_hostile_uids_stay_inside_data_dir(tmp_path):
    spool = Spool(tmp_path / "data")
    path = spool.instance_path("../../x", "/etc/passwd", "..\\..\\y")
    assert path.resolve().is_relative_to((tmp_path / "data" / "spool").resolve())
    assert all(len(part) == 32 and part.isalnum() for part in path.relative_to(spool.root).with_suffix("").parts)
    spool.write(path, [b"abc"])
    assert path.read_bytes() == b"abc"
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_uid_key_is_stable_and_distinct():
    assert uid_key("1.2.3") == uid_key("1.2.3")
    assert uid_key("1.2.3") != uid_key("1.2.30")


def test_write_replaces_atomically_and_leaves_no_temporary_files(tmp_path):
    spool = Spool(tmp_path)
    path = spool.instance_path("1", "1.2", "1.2.3")
    spool.write(path, [b"first ", memoryview(b"copy")])
    spool.write(path, [b"second"])
    assert path.read_bytes() == b"second"
    assert list(path.parent.iterdir()) == [path]


def test_sweep_removes_leftovers_of_interrupted_writes(tmp_path):
    spool = Spool(tmp_path)
    path = spool.instance_path("1", "1.2", "1.2.3")
    spool.write(path, [b"kept"])
    leftover = path.with_name(path.name + ".123.abc" + PART_SUFFIX)
    leftover.write_bytes(b"torn")
    assert spool.sweep() == 1
    assert not leftover.exists() and path.read_bytes() == b"kept"


def test_write_error_raises_oserror_and_leaves_nothing(tmp_path):
    spool = Spool(tmp_path)
    blocker = spool.root / uid_key("1")
    blocker.write_bytes(b"a file where a folder should be")
    path = spool.instance_path("1", "1.2", "1.2.3")
    try:
        spool.write(path, [b"x"])
    except OSError:
        pass
    else:
        raise AssertionError("write into a non-folder should fail")
    assert blocker.read_bytes().startswith(b"a file")
    assert Path(path).exists() is False
