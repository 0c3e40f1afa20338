import pytest

from emoreg.utils.atomic import atomic_directory, atomic_file


def test_atomic_directory_replaces_on_success(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block ends
    assert (target / "new.txt").read_text() == "new"
    assert not (target / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_directory_keeps_target_on_error(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "partial.txt").write_text("x")
            raise RuntimeError("boom")
    assert (target / "keep.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_file(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(ValueError):
        with atomic_file(target) as handle:
            handle.write("partial")
            raise ValueError
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as handle:
        handle.write("done\n")
    assert target.read_text() == "done\n"


def test_outputs_get_umask_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "bundle") as tmp:
            (tmp / "f.txt").write_text("x")
        with atomic_file(tmp_path / "out.txt") as handle:
            handle.write("y")
    finally:
        os.umask(mask)
    assert oct((tmp_path / "bundle").stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "bundle" / "f.txt").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "out.txt").stat().st_mode & 0o777) == oct(0o644)


def test_atomic_file_leaves_nothing_behind_when_the_final_replace_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        with atomic_file(target) as handle:
            handle.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and target.is_dir()
