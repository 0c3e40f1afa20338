from pathlib import Path

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


def test_atomic_file_refuses_a_directory_before_writing(tmp_path):
    from emoreg.errors import ConfigError

    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ConfigError, match=r"out is a directory; give a file path for the output"):
        with atomic_file(target) as handle:
            handle.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and target.is_dir()


def test_atomic_file_leaves_nothing_behind_when_the_final_replace_fails(tmp_path, monkeypatch):
    import emoreg.utils.atomic as atomic

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        with atomic_file(tmp_path / "out.txt") as handle:
            handle.write("x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_never_replaces_what_is_not_ours(tmp_path):
    from emoreg.errors import ConfigError

    def ours(path):
        return (path / "marker").is_file()

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("code")
    with pytest.raises(ConfigError, match="non-empty directory that does not hold the thing"):
        with atomic_directory(project, is_ours=ours, what="the thing") as tmp:
            (tmp / "marker").write_text("x")
    assert (project / "src" / "main.py").read_text() == "code"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no temporary left behind
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        with atomic_directory(a_file, is_ours=ours, what="the thing"):
            pass
    assert a_file.read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, is_ours=ours) as tmp:
        (tmp / "marker").write_text("1")
    with atomic_directory(empty, is_ours=ours) as tmp:  # ours now: replaced
        (tmp / "marker").write_text("2")
    assert (empty / "marker").read_text() == "2"


def test_a_foreign_directory_appearing_during_the_work_is_not_replaced(tmp_path):
    from emoreg.errors import ConfigError

    target = tmp_path / "out"
    with pytest.raises(ConfigError, match="non-empty directory"):
        with atomic_directory(target, is_ours=lambda p: False) as tmp:
            (tmp / "result").write_text("new")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert (target / "theirs").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_locations_are_refused_before_any_work(tmp_path, monkeypatch):
    """Checked with os.access (this also holds when the tests run as root, where chmod does not stop writes)."""
    import emoreg.utils.atomic as atomic
    from emoreg.errors import ConfigError
    from emoreg.utils.atomic import check_file_target, check_replaceable

    monkeypatch.setattr(atomic.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match=r"cannot write an emoreg bundle to .*/new/bundle: .* is not writable"):
        check_replaceable(tmp_path / "new" / "bundle", lambda p: False, "an emoreg bundle")
    with pytest.raises(ConfigError, match=r"cannot write the scan output to .*scores.jsonl: .* is not writable"):
        check_file_target(tmp_path / "scores.jsonl", "the scan output")
    assert list(tmp_path.iterdir()) == []


def test_extract_refuses_an_unwritable_out_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import emoreg.utils.atomic as atomic
    from emoreg.cli.main import main
    from emoreg.models import loading

    stories = tmp_path / "s.jsonl"
    stories.write_text("".join(f'{{"emotion": "{e}", "text": "{e} story {i}."}}\n'
                               for e in ("calm", "desperate") for i in range(2)))
    neutral = tmp_path / "n.jsonl"
    neutral.write_text('{"text": "The bus comes at nine."}\n{"text": "Shops open at ten."}\n')
    readonly = tmp_path / "ro"
    readonly.mkdir()
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: Path(path) != readonly)
    monkeypatch.setattr(loading, "load_model_and_tokenizer",
                        lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    assert main(["extract", "--out", str(readonly / "b"), "--no-builtin-stories", "--stories", str(stories),
                 "--neutral", str(neutral), "--layers", "1", "--no-validate", "--threads", "1"]) == 2
    assert "is not writable" in capsys.readouterr().err
