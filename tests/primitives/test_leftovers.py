"""app.ops.leftovers: what a kill -9 leaves is removed by the next run, and nothing else is.

flock locks belong to an open file description, so a lock taken here conflicts with the
module's own check exactly as another process's would.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from app.ops.leftovers import TEMP_PREFIX, private_folder
from app.ops.storage.local import LocalStorage

AN_HOUR_AGO = time.time() - 3600


def aged(path: Path) -> Path:
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    import tempfile
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def left_by_a_kill(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "restore.sqlite3").write_bytes(b"patient data")
    return aged(folder)


def test_a_private_folder_is_held_marked_and_removed_after_use(tmpdir_env):
    with private_folder("restore") as folder:
        assert folder.parent == tmpdir_env and folder.name.startswith(TEMP_PREFIX)
        fd = os.open(folder, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not folder.exists()


def test_the_next_private_folder_removes_only_abandoned_old_ones_of_its_own(tmpdir_env):
    abandoned = left_by_a_kill(tmpdir_env, f"{TEMP_PREFIX}restore-abandoned")
    not_ours = left_by_a_kill(tmpdir_env, "mida-notes")
    fresh = left_by_a_kill(tmpdir_env, f"{TEMP_PREFIX}restore-fresh")
    os.utime(fresh)  # just made: maybe being created right now
    held = left_by_a_kill(tmpdir_env, f"{TEMP_PREFIX}restore-held")
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run still working in it
        with private_folder("restore"):
            pass
    finally:
        os.close(fd)
    assert not abandoned.exists()
    assert not_ours.exists() and fresh.exists() and held.exists()


def test_a_backup_removes_abandoned_partials_but_not_one_being_written(tmp_path):
    # The store's fallback where unnamed files cannot be made: a held `.partial` name.
    store = LocalStorage(tmp_path / "dev")
    store._ensure_folder()
    with store._named_writer(store.folder / "20260101T000000.000Z-aaaaaa.sqlite3.zst") as out:
        out.write(b"half")
        being_written = aged(tmp_path / "dev" / ".20260101T000000.000Z-aaaaaa.sqlite3.zst.partial")
        abandoned = tmp_path / "dev" / ".20250101T000000.000Z-bbbbbb.sqlite3.zst.partial"
        abandoned.write_bytes(b"left by kill -9")
        aged(abandoned)
        LocalStorage(tmp_path / "dev").prepare()  # another run's backup starting
        assert being_written.exists()
        assert not abandoned.exists()
    assert store.exists("20260101T000000.000Z-aaaaaa.sqlite3.zst")


def test_without_o_tmpfile_the_unnamed_file_loses_its_name_at_once(tmp_path):
    """The fallback for a kernel or file system without O_TMPFILE (forced by a seccomp filter in
    a child, tests/no_tmpfile.py): the file it makes has no name left in the folder while it is
    written and read, so a kill -9 leaves nothing with patient data behind."""
    from no_tmpfile import run_without_tmpfile

    folder = tmp_path / "scratch"
    folder.mkdir()
    result = run_without_tmpfile(f"""
        import os
        from pathlib import Path
        from app.ops.leftovers import unnamed_file
        folder = Path({str(folder)!r})
        try:
            os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
            raise SystemExit("O_TMPFILE is still allowed: the fallback is not tested")
        except OSError as exc:
            assert exc.errno == 95, exc
        with unnamed_file(folder) as file:
            file.write(b"patient data")
            file.seek(0)
            assert file.read() == b"patient data"
            print(sorted(os.listdir(folder)))
        """, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]", result.stdout
    assert list(folder.iterdir()) == []
