"""Atomic writes leave either the old content or the new, never a half."""

import pytest

from tunesmith.atomic import atomic_dir, write_json, write_text


def test_write_text_replaces_whole_file(tmp_path):
    p = tmp_path / "a.txt"
    write_text(p, "old")
    write_text(p, "new")
    assert p.read_text() == "new"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_failed_dir_write_leaves_old_version_and_no_temp(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as d:
        (d / "w.bin").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "w.bin").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "w.bin").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_failed_file_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        f = write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
