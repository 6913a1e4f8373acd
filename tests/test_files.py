"""sampler.files.atomic_write: all or nothing, for a file or a folder."""

import os

import pytest

from energies.files import atomic_write


def test_a_file_is_replaced_whole_with_ordinary_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"  # the folder is made

    def private(tmp):  # as safetensors and mkstemp write
        tmp.write_text("new")
        os.chmod(tmp, 0o600)

    atomic_write(path, lambda tmp: tmp.write_text("old"))
    assert atomic_write(path, private) == path and path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("old")

    def half(tmp):
        tmp.write_text("ha")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_a_folder_replaces_the_old_folder(tmp_path):
    path = tmp_path / "model"
    (path / "stale").mkdir(parents=True)

    def write(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("w")

    atomic_write(path, write)
    assert sorted(p.name for p in path.iterdir()) == ["weights"] and [p.name for p in tmp_path.iterdir()] == ["model"]
