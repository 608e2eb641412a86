"""app.ops.storage.local: atomic writes, private permissions, listing, deleting."""
from __future__ import annotations

import os
import stat

import pytest

from app.ops.errors import ConfigError
from app.ops.storage import open_storage
from app.ops.storage.local import LocalStorage
from app.settings import load_settings


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_object_appears_only_when_the_block_succeeds(tmp_path):
    store = LocalStorage(tmp_path / "store" / "dev")
    with store.writer("b1.sqlite3.zst") as out:
        out.write(b"first half ")
        out.flush()
        assert not store.exists("b1.sqlite3.zst")
        assert not (store.folder / "b1.sqlite3.zst").exists()
        assert store.list() == []
        out.write(b"second half")
    assert store.exists("b1.sqlite3.zst")
    assert store.get_bytes("b1.sqlite3.zst") == b"first half second half"
    assert sorted(os.listdir(store.folder)) == ["b1.sqlite3.zst"]


def test_partial_is_removed_on_exception(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    with pytest.raises(RuntimeError, match="dump died"):
        with store.writer("b2.sqlite3.zst") as out:
            out.write(b"x" * 10000)
            raise RuntimeError("dump died")
    assert not store.exists("b2.sqlite3.zst")
    assert os.listdir(store.folder) == []


def test_failed_write_keeps_the_previous_object(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("obj", b"old")
    with pytest.raises(KeyboardInterrupt):
        with store.writer("obj") as out:
            out.write(b"new but incomplete")
            raise KeyboardInterrupt
    assert store.get_bytes("obj") == b"old"
    assert os.listdir(store.folder) == ["obj"]


def test_successful_write_replaces_the_previous_object(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("obj", b"old")
    store.put_bytes("obj", b"new")
    assert store.get_bytes("obj") == b"new"
    assert store.size("obj") == 3


def test_file_0600_and_folder_0700_with_umask_022(tmp_path, umask_022):
    store = LocalStorage(tmp_path / "a" / "b" / "dev")
    store.put_bytes("secret.zst", b"patient data")
    assert mode(store.folder / "secret.zst") == 0o600
    assert mode(store.folder) == 0o700
    with store.writer("other.zst") as out:
        out.write(b"more")
        # Being written, it has no name: the file the writer holds is 0600 all the same.
        assert stat.S_IMODE(os.fstat(out.fileno()).st_mode) == 0o600
        assert sorted(os.listdir(store.folder)) == ["secret.zst"]
    assert mode(store.folder / "other.zst") == 0o600


def test_existing_open_folder_is_tightened_to_0700(tmp_path, umask_022):
    folder = tmp_path / "dev"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert mode(folder) == 0o755
    LocalStorage(folder).put_bytes("x", b"1")
    assert mode(folder) == 0o700
    assert mode(folder / "x") == 0o600


def test_list_ignores_hidden_partial_and_folders_and_filters_suffix(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("b.manifest.json", b"{}")
    store.put_bytes("a.manifest.json", b"{}")
    store.put_bytes("a.sqlite3.zst", b"z")
    (store.folder / ".c.sqlite3.zst.partial").write_bytes(b"partial")
    (store.folder / ".gitkeep").write_bytes(b"")
    (store.folder / "sub.manifest.json").mkdir()
    assert store.list() == ["a.manifest.json", "a.sqlite3.zst", "b.manifest.json"]
    assert store.list(".manifest.json") == ["a.manifest.json", "b.manifest.json"]


def test_list_of_missing_folder_is_empty_and_creates_nothing(tmp_path):
    store = LocalStorage(tmp_path / "nothing" / "dev")
    assert store.list() == []
    assert not (tmp_path / "nothing").exists()


def test_delete(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("one", b"1")
    store.put_bytes("two", b"2")
    store.delete("one")
    assert not store.exists("one")
    assert store.list() == ["two"]
    store.delete("one")  # deleting what is gone is not an error
    store.delete("never-existed")
    assert store.list() == ["two"]


def test_reader_size_location(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("obj", b"0123456789")
    with store.reader("obj") as f:
        assert f.read() == b"0123456789"
    assert store.size("obj") == 10
    assert store.location("obj") == str(tmp_path / "dev" / "obj")


def test_open_storage_uses_backup_dir_per_env(tmp_path):
    settings = load_settings("dev", environ={"BACKUP_DIR": "bk"}, root=tmp_path)
    store = open_storage(settings)
    assert isinstance(store, LocalStorage)
    assert store.folder == tmp_path / "bk" / "dev"


def test_open_storage_unknown_kind_is_config_error(tmp_path):
    settings = load_settings("dev", environ={"BACKUP_STORAGE": "tape"}, root=tmp_path)
    with pytest.raises(ConfigError, match="tape"):
        open_storage(settings)


# -- written without a name until complete; only regular files are objects -----------------


def test_an_object_being_written_has_no_name_in_the_folder(tmp_path):
    """The file being written is unnamed (O_TMPFILE): a kill -9 at this point leaves nothing."""
    store = LocalStorage(tmp_path / "dev")
    with store.writer("b1.pgdump.zst") as out:
        out.write(b"x" * (2 << 20))  # past the 1 MiB buffer: bytes are on disk
        out.flush()
        assert os.listdir(store.folder) == []
        held = os.readlink(f"/proc/self/fd/{out.fileno()}")
        assert held.startswith(str(store.folder)) and held.endswith("(deleted)")
    assert os.listdir(store.folder) == ["b1.pgdump.zst"]
    assert store.size("b1.pgdump.zst") == 2 << 20


def test_rewriting_an_existing_name_replaces_it_and_leaves_no_hidden_name(tmp_path):
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("m.manifest.json", b"old")
    inode = os.stat(store.folder / "m.manifest.json").st_ino
    with store.writer("m.manifest.json") as out:
        out.write(b"new")
        assert store.get_bytes("m.manifest.json") == b"old"
    assert store.get_bytes("m.manifest.json") == b"new"
    assert os.stat(store.folder / "m.manifest.json").st_ino != inode  # a new file, renamed in
    assert os.listdir(store.folder) == ["m.manifest.json"]


def test_the_fallback_without_unnamed_files_writes_a_held_partial(tmp_path):
    """Where O_TMPFILE is not supported the writer falls back to a `.partial` name, renamed
    into place (held under an flock meanwhile: test_leftovers.py shows the sweep spares it)."""
    store = LocalStorage(tmp_path / "dev")
    store._ensure_folder()
    with store._named_writer(store.folder / "b2.zst") as out:
        out.write(b"data")
        assert mode(store.folder / ".b2.zst.partial") == 0o600
        assert not store.exists("b2.zst")
    assert os.listdir(store.folder) == ["b2.zst"]
    assert store.get_bytes("b2.zst") == b"data"


def test_a_symbolic_link_is_not_an_object(tmp_path):
    outside = tmp_path / "outside.pgdump.zst"
    outside.write_bytes(b"not the store's")
    store = LocalStorage(tmp_path / "dev")
    store.put_bytes("real.zst", b"real")
    (store.folder / "linked.zst").symlink_to(outside)
    assert store.sizes() == {"real.zst": 4}
    assert store.list() == ["real.zst"]
    assert not store.exists("linked.zst")
    for read in (store.size, store.get_bytes, store.reader):
        with pytest.raises(OSError, match=f"symbolic link \\(to {outside}\\)"):
            read("linked.zst")
    assert outside.read_bytes() == b"not the store's"
