"""Client-side encryption of backups in the standard age format, as a stream transform.

With BACKUP_ENCRYPTION_RECIPIENTS (age public keys, comma-separated), the compressed stream is
encrypted before it leaves the process, so neither the disk nor the bucket ever holds patient
data in the clear; `age -d -i KEY FILE | zstd -d` undoes it by hand. Reading back (verify,
restore, and the read-back of every new backup) needs BACKUP_ENCRYPTION_IDENTITY_FILE.

pyrage (rage's Python binding) pulls from a reader and pushes to a writer; a pipe and one thread
adapt it to our push-style pipeline without holding the whole stream in memory.
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from app.ops.errors import ConfigError
from app.ops.errors import BackupFailed


@dataclass(frozen=True)
class Encryption:
    recipients: tuple[str, ...]
    identity_file: str | None

    @classmethod
    def from_settings(cls, settings) -> "Encryption | None":
        keys = settings.BACKUP_ENCRYPTION_RECIPIENTS
        identity = settings.BACKUP_ENCRYPTION_IDENTITY_FILE
        if not keys:
            return cls((), identity) if identity else None
        return cls(tuple(keys), identity)

    def parsed_recipients(self):
        from pyrage import x25519

        parsed = []
        for key in self.recipients:
            try:
                parsed.append(x25519.Recipient.from_str(key))
            except Exception:
                raise ConfigError(f"BACKUP_ENCRYPTION_RECIPIENTS holds '{key[:16]}...', which is "
                                  "not an age public key (age1...): check the setting") from None
        return parsed

    def identities(self, backup_id: str):
        if not self.identity_file:
            raise ConfigError(f"backup {backup_id} is encrypted: set "
                              "BACKUP_ENCRYPTION_IDENTITY_FILE to the age private key to read it")
        path = Path(self.identity_file).expanduser()
        try:
            mode = path.stat().st_mode
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} cannot be read: "
                              f"{exc.strerror}") from None
        if mode & 0o077:
            # As ssh does with a private key: this one opens every backup of patient data.
            raise ConfigError(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} is open to other users "
                              f"(mode {mode & 0o777:04o}): run `chmod 600 {path}` first")
        found = parse_identities(lines)
        if not found:
            raise ConfigError(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} holds no age identity "
                              "(AGE-SECRET-KEY-1...)")
        return found


def parse_identities(lines) -> list:
    """The age identities in an identity file's lines (none if any line is not one)."""
    from pyrage import x25519

    try:
        return [x25519.Identity.from_str(line.strip()) for line in lines
                if line.strip() and not line.startswith("#")]
    except Exception:
        return []


class _Pump(threading.Thread):
    def __init__(self, work):
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # re-raised in the caller's thread
            self.error = exc


@contextlib.contextmanager
def encrypting(target, recipients):
    """A writer whose bytes reach `target` age-encrypted for `recipients`."""
    import pyrage

    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        pump = _Pump(lambda: pyrage.encrypt_io(reader, target, recipients))
        pump.start()
        try:
            yield writer
        finally:
            writer.close()  # end of input: age writes its final chunk
            pump.join()
    if pump.error is not None:
        raise pump.error


@contextlib.contextmanager
def decrypting(source, identities, backup_id: str):
    """A reader of `source` decrypted. A wrong key or a damaged file is reported as such, even
    when the reader's consumer noticed the missing data first."""
    import pyrage

    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        def work():
            try:
                pyrage.decrypt_io(source, writer, identities)
            finally:
                writer.close()
        pump = _Pump(work)
        pump.start()
        try:
            yield reader
            reader.read()  # drain, so the pump never blocks on a full pipe
        except BaseException:
            reader.close()
            pump.join()
            _raise_cause(pump.error, backup_id)
            raise
        reader.close()
        pump.join()
        _raise_cause(pump.error, backup_id)


def _raise_cause(error: BaseException | None, backup_id: str) -> None:
    import pyrage


    if error is None or isinstance(error, BrokenPipeError) or \
            getattr(error, "errno", None) == errno.EPIPE:
        return  # the consumer stopped reading: its own error is the one to report
    if isinstance(error, pyrage.DecryptError):
        raise ConfigError(f"backup {backup_id} cannot be decrypted with the key in "
                          f"BACKUP_ENCRYPTION_IDENTITY_FILE ({error}): use the identity of one "
                          "of its recipients") from None
    raise BackupFailed(f"backup {backup_id} does not decrypt: it is damaged or truncated "
                       f"({error})") from None


def dump_at_rest(settings) -> str | None:
    """How a dump of this env would be encrypted at rest: "age", "sse" or None."""
    if settings.BACKUP_ENCRYPTION_RECIPIENTS:
        return "age"
    if settings.backup_storage == "s3" and settings.BACKUP_S3_SSE:
        return "sse"
    return None
