"""app.ops.streams: hashing while writing, zstd compression, and a strict decompress_into."""
from __future__ import annotations

import hashlib
import io
import os

import pytest
import zstandard

from app.ops.streams import (CHUNK, PIPE_SIZE, BackgroundWriter, CountingWriter, HashingReader,
                             HashingWriter, TeeWriter, chunk_pipe, compressor, decompress_into,
                             pipe_size)


def payload() -> bytes:
    # Incompressible and compressible parts, several decompress_into read chunks long.
    return os.urandom(300_000) + b"patient row, " * 150_000 + os.urandom(1000)


def compress(data: bytes) -> tuple[bytes, str]:
    buf = io.BytesIO()
    hashed = HashingWriter(buf)
    with compressor(hashed) as stream:
        for start in range(0, len(data), 65536):
            stream.write(data[start:start + 65536])
    return buf.getvalue(), hashed.sha256.hexdigest()


class PieceReader:
    """A source whose reads return exactly the given pieces, one per read."""

    def __init__(self, *pieces: bytes):
        self.pieces = list(pieces)

    def read(self, n: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.fixture(scope="module")
def frame():
    data = payload()
    compressed, sha = compress(data)
    return data, compressed, sha


# -- writers -----------------------------------------------------------------------------------
def test_hashing_writer_hashes_counts_and_passes_through():
    target = io.BytesIO()
    seen = []
    writer = HashingWriter(target, progress=seen.append)
    parts = [b"abc", b"", os.urandom(5000), b"\x00" * 17]
    for part in parts:
        assert writer.write(part) == len(part)
    writer.flush()
    whole = b"".join(parts)
    assert target.getvalue() == whole
    assert writer.sha256.hexdigest() == hashlib.sha256(whole).hexdigest()
    assert writer.size == len(whole)
    assert seen == [len(p) for p in parts]


def test_hashing_writer_accepts_memoryview():
    target = io.BytesIO()
    writer = HashingWriter(target)
    writer.write(memoryview(b"hello world"))
    assert target.getvalue() == b"hello world"
    assert writer.sha256.hexdigest() == hashlib.sha256(b"hello world").hexdigest()
    assert writer.size == 11


def test_counting_and_tee_writers():
    first, second = io.BytesIO(), io.BytesIO()
    seen = []
    counted = CountingWriter(TeeWriter(first, second), progress=seen.append)
    counted.write(b"12345")
    counted.write(b"678")
    assert counted.size == 8
    assert seen == [5, 3]
    assert first.getvalue() == second.getvalue() == b"12345678"


def test_compressor_does_not_close_target():
    target = io.BytesIO()
    with compressor(target) as stream:
        stream.write(b"data")
    assert not target.closed
    target.write(b"")  # still usable
    assert zstandard.ZstdDecompressor().decompressobj().decompress(target.getvalue()) == b"data"


# -- decompress_into ---------------------------------------------------------------------------
def test_round_trip_and_sha(frame):
    data, compressed, sha = frame
    assert sha == hashlib.sha256(compressed).hexdigest()
    assert len(compressed) > CHUNK // 4  # several reads
    sink = io.BytesIO()
    seen = []
    decompress_into(io.BytesIO(compressed), sink, progress=seen.append)
    assert sink.getvalue() == data
    assert sum(seen) == len(compressed)


def test_round_trip_empty_payload():
    compressed, sha = compress(b"")
    assert sha == hashlib.sha256(compressed).hexdigest()
    sink = io.BytesIO()
    decompress_into(io.BytesIO(compressed), sink)
    assert sink.getvalue() == b""


def test_output_is_standard_zstd(frame):
    data, compressed, _ = frame
    # `zstd -d` by hand must agree: a plain decompressor reads the same bytes back.
    out = zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
    assert out == data


@pytest.mark.parametrize("cut", [1, 4, 100, "half", "header"])
def test_truncated_frame_raises(frame, cut):
    _, compressed, _ = frame
    if cut == "half":
        truncated = compressed[: len(compressed) // 2]
    elif cut == "header":
        truncated = compressed[:6]
    else:
        truncated = compressed[:-cut]
    with pytest.raises(zstandard.ZstdError):
        decompress_into(io.BytesIO(truncated), io.BytesIO())


def test_empty_source_raises():
    with pytest.raises(zstandard.ZstdError):
        decompress_into(io.BytesIO(b""), io.BytesIO())


def test_trailing_garbage_in_same_read_raises(frame):
    _, compressed, _ = frame
    with pytest.raises(zstandard.ZstdError):
        decompress_into(io.BytesIO(compressed + b"garbage"), io.BytesIO())


def test_trailing_garbage_in_a_later_read_raises():
    compressed, _ = compress(b"small payload")
    # The frame ends exactly at the end of one read; the garbage comes in the next.
    with pytest.raises(zstandard.ZstdError):
        decompress_into(PieceReader(compressed, b"X"), io.BytesIO())


def test_single_trailing_byte_raises():
    compressed, _ = compress(b"small payload")
    with pytest.raises(zstandard.ZstdError):
        decompress_into(io.BytesIO(compressed + b"\x00"), io.BytesIO())


def test_frame_split_across_many_reads_is_fine():
    data = b"0123456789" * 1000
    compressed, _ = compress(data)
    pieces = [compressed[i:i + 7] for i in range(0, len(compressed), 7)]
    sink = io.BytesIO()
    decompress_into(PieceReader(*pieces), sink)
    assert sink.getvalue() == data


def test_bit_flip_in_the_middle_is_detected(frame):
    data, compressed, sha = frame
    flipped = bytearray(compressed)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(zstandard.ZstdError):
        decompress_into(io.BytesIO(bytes(flipped)), io.BytesIO())


def test_bit_flip_anywhere_is_detected(frame):
    data, compressed, sha = frame
    step = max(1, len(compressed) // 97)
    positions = sorted({0, 4, 5, len(compressed) - 1, len(compressed) - 4,
                        *range(0, len(compressed), step)})
    for position in positions:
        flipped = bytearray(compressed)
        flipped[position] ^= 0x40
        # Hashed as read_back_stored does: a HashingReader around the stored bytes.
        hashed = HashingReader(io.BytesIO(bytes(flipped)))
        try:
            decompress_into(hashed, io.BytesIO())
        except zstandard.ZstdError:
            continue
        # Not caught by zstd: the checksum against the manifest must catch it.
        assert hashed.sha256.hexdigest() != sha, position
        assert hashed.sha256.hexdigest() == hashlib.sha256(bytes(flipped)).hexdigest(), position


def test_chunk_pipe_holds_a_whole_chunk():
    import fcntl

    read_fd, write_fd = chunk_pipe()
    try:
        assert fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ) >= CHUNK
        os.set_blocking(write_fd, False)
        assert os.write(write_fd, b"x" * CHUNK) == CHUNK  # one write, nobody reading yet
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_pipe_size_is_a_chunk_where_the_system_allows_it():
    with open("/proc/sys/fs/pipe-max-size") as limit:
        allowed = int(limit.read())
    assert pipe_size() == (PIPE_SIZE if allowed >= PIPE_SIZE else -1)
    assert PIPE_SIZE == CHUNK


def test_background_writer_writes_everything_in_order():
    out = io.BytesIO()
    chunks = [os.urandom(n) for n in (1, 1000, CHUNK, 7, 0, 3 * CHUNK)]
    buffer = bytearray()
    with BackgroundWriter(out, depth=2) as writer:
        for chunk in chunks:
            buffer[:] = chunk  # the caller reuses its buffer: what was written stays written
            assert writer.write(buffer) == len(chunk)
    assert out.getvalue() == b"".join(chunks)


class _FullDisk:
    def __init__(self, room: int):
        self.room, self.written = room, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return len(data)


def test_background_writer_raises_the_targets_failure_in_the_callers_thread():
    with pytest.raises(OSError) as raised:
        with BackgroundWriter(_FullDisk(room=10), depth=1) as writer:
            for _ in range(1000):  # never blocks for good: the failed thread drops the rest
                writer.write(b"x" * 4)
    assert raised.value.errno == 28


def test_background_writer_keeps_the_blocks_own_exception_and_ends_its_thread():
    writer = BackgroundWriter(_FullDisk(room=0))
    with pytest.raises(KeyError):
        with writer:
            writer.write(b"x")
            raise KeyError("the caller's own failure")
    assert not writer._thread.is_alive()
