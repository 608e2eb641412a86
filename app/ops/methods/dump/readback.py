"""Reading a backup back whole: its checksum, its age encryption if any, its zstd frame, and
the dumper's own check of every byte inside (pg_restore reading every block, or SQLite's
integrity check).

Two ways in: `read_back_stored` re-reads an object from the store (verify, restore), and
`InlineReadBack` checks the very bytes a new backup hands to the store while they are being
written, on a thread of its own, so the check costs little extra wall time. A new backup's
stored object is then re-read once more and only hashed, which proves the store holds exactly
the bytes that were checked.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable

from app.ops.diskspace import TEMP_ADVICE, is_full, no_room, temp_folder
from app.ops.encryption import decrypting
from app.ops.errors import BackupFailed, ConfigError
from app.ops.streams import (BackgroundWriter, CountingWriter, HashingReader, TeeWriter,
                             chunk_pipe, decompress_into)

Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    pass


def _decode(source, sink, identities, name: str) -> None:
    """Decrypt (with identities) and decompress `source` into `sink`. It does not hash: the
    stored bytes are hashed once, by a HashingReader around `source` (read_back_stored) or by
    the backup's own HashingWriter (InlineReadBack)."""
    if identities is None:
        decompress_into(source, sink)
        return
    with decrypting(source, identities, name) as plain:
        decompress_into(plain, sink)


def _zstd_errors(call, name: str):
    import zstandard
    try:
        return call()
    except zstandard.ZstdError as exc:
        raise BackupFailed(f"backup {name} does not decompress: {exc}") from None


def read_back_stored(storage, dumper, artifact: str, sha256: str, raw_size: int,
                     progress: Progress | None = None, extract_to=None,
                     identities=None, archive_check: bool = True) -> None:
    """Re-read a stored artifact and check it whole. With `extract_to`, the decompressed bytes
    are also written there in the same pass (restore uses them). Without `archive_check` the
    dumper's own reader is left out: for restore, whose pg_restore reads every block of the
    extracted copy anyway, and the checksum already ties these bytes to the ones that were
    read back whole when the backup was taken."""
    result = {}

    def feed(sink) -> None:
        # sink: the dumper's reader, or None when only the copy in extract_to is wanted.
        with (BackgroundWriter(extract_to) if extract_to is not None
              else contextlib.nullcontext()) as extract:
            _feed(sink, extract)

    def _feed(sink, extract) -> None:
        if sink is None or extract is None:
            counted = CountingWriter(sink or extract)
        else:
            counted = CountingWriter(TeeWriter(sink, extract))
        with storage.reader(artifact) as source:
            hashed = HashingReader(source, progress or _no_progress)
            try:
                _decode(hashed, counted, identities, artifact)
            except ConfigError:
                # "No matching key" is also what a damaged header looks like: only a file
                # that still matches its checksum means the key is wrong.
                hashed.drain()
                if hashed.sha256.hexdigest() != sha256:
                    raise BackupFailed(f"backup {artifact} does not match its SHA-256 "
                                       "checksum: it is damaged") from None
                raise
            hashed.drain()
        result["sha256"], result["raw_size"] = hashed.sha256.hexdigest(), counted.size

    if archive_check or extract_to is None:
        _zstd_errors(lambda: dumper.read_back(feed), artifact)
    else:
        _zstd_errors(lambda: feed(None), artifact)
    check_read(artifact, sha256, raw_size, result.get("sha256"), result.get("raw_size"))


def check_read(artifact: str, sha256: str, raw_size: int, read_sha256, read_size) -> None:
    if read_sha256 != sha256:
        raise BackupFailed(f"backup {artifact} does not match its SHA-256 checksum "
                           f"(expected {sha256}, read {read_sha256})")
    if read_size != raw_size:
        raise BackupFailed(f"backup {artifact} holds {read_size} bytes, expected {raw_size}")


def stored_sha256(storage, artifact: str, progress: Progress | None = None) -> str:
    with storage.reader(artifact) as source:
        hashed = HashingReader(source, progress or _no_progress)
        hashed.drain()
    return hashed.sha256.hexdigest()


class InlineReadBack:
    """A writer that checks, on its own thread, the bytes a new backup sends to the store.

    Bytes go through a pipe to the thread, which decrypts, decompresses and feeds the dumper's
    checker. If the checker stops early, writes are dropped and `finish` reports why."""

    def __init__(self, dumper, identities, name: str):
        read_fd, write_fd = chunk_pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._writer = os.fdopen(write_fd, "wb")
        self._dumper, self._identities, self._name = dumper, identities, name
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None
        self._open = True
        self.raw_size = 0
        self._counted: CountingWriter | None = None

    def __enter__(self) -> "InlineReadBack":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._close()  # on success finish() has closed already; on failure, unblock the thread

    def _run(self) -> None:
        def feed(sink) -> None:
            counted = self._counted = CountingWriter(sink)
            _decode(self._reader, counted, self._identities, self._name)
            self.raw_size = counted.size

        try:
            _zstd_errors(lambda: self._dumper.read_back(feed), self._name)
        except BaseException as exc:  # reported by finish(), in the caller's thread
            self._error = exc
            if is_full(exc):  # the dumper's copy, in the temporary folder (not the store)
                self._error = no_room(temp_folder(), f"read back backup {self._name}",
                                      self._counted.size if self._counted else 0,
                                      more_than=True, advice=TEMP_ADVICE)
        finally:
            self._reader.close()  # a writer still writing now gets EPIPE instead of hanging

    def write(self, data) -> int:
        if self._open:
            try:
                self._writer.write(data)
            except BrokenPipeError:
                self._open = False  # the checker has stopped; finish() says why
        return len(data)

    def flush(self) -> None:
        pass

    def _close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._writer.close()
            except BrokenPipeError:
                pass
        self._thread.join()

    def finish(self) -> int:
        """Wait for the check to end; raise its failure; return the bytes it read back."""
        self._close()
        if self._error is not None:
            raise self._error
        return self.raw_size
