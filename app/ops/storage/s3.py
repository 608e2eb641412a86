"""S3 store: one environment's backups under `<BACKUP_S3_PREFIX>/<env>/` in one bucket.

Same interface as `LocalStorage`. A new object streams into a multipart upload of fixed-size
parts, each sent on a thread while the next fills (two buffers at most), so memory stays flat
whatever the size. S3 takes at most 10,000 parts of an object, so the part size is chosen from
the size the caller expects (`writer(name, expected_size)`, `part_size_for`): 16 MiB parts hold
156 GiB, bigger ones up to S3's 5 TiB object limit. The object exists only
once the upload completes, and a failed block aborts it, leaving no parts (a lifecycle rule
`AbortIncompleteMultipartUpload` still covers a killed process). Every object written carries
the configured server-side encryption. Credentials, region and endpoint follow boto3's own
resolution, but values in the settings (which include the .env files) are passed explicitly.
Retries are botocore's. boto3 is imported only when S3 is used.

An upload that cannot be aborted (the endpoint went away mid-upload, so the abort cannot reach
it either, even after a few quick retries) would leave its parts billed until a lifecycle rule
removes them. It is recorded in a small local file (`<BACKUP_DIR>/.unaborted-uploads/<env>/`,
one 0600 file per upload), and the next run of that env that reaches the same endpoint and
bucket aborts it. Only recorded uploads are aborted: another process's upload in progress is
never touched. `invoke status` lists what is still recorded.

Errors: configuration (no bucket, credentials missing or rejected, access denied, KMS key,
endpoint unreachable before it ever answered) -> ConfigError (exit 2); a transfer that breaks
once under way, or an endpoint that stops answering after it answered in this run ->
TransferFailed (exit 4). No botocore exception escapes. A missing key raises
FileNotFoundError, as on local disk, because callers read that as "not there".
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from app.ops.errors import BackupFailed, ConfigError, OpsError, TransferFailed
from app.ops.storage.object_lock import ObjectLock, Retained
from app.settings import Settings

PART_SIZE = 16 << 20   # 16 MiB: S3's minimum is 5 MiB; 10,000 parts of this hold ~156 GiB
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30       # S3's largest part
MAX_OBJECT_SIZE = 5 << 40     # S3's largest object: no part size takes an upload past it
MAX_PARTS = 10_000
# An expected size is an estimate (a dump may compress less than the last ones did): the parts
# are chosen to hold twice it, which costs only memory (two parts are buffered at a time).
PART_HEADROOM = 2
MiB = 1 << 20
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
# The abort of a failed upload is retried briefly, then recorded: a vanished endpoint must not
# keep a failing run waiting for minutes (4 attempts: at most ~7 s of backoff when refused).
ABORT_ATTEMPTS, ABORT_CONNECT_TIMEOUT, ABORT_READ_TIMEOUT = 4, 3, 15
# S3 error codes that mean configuration (exit 2), and the one sentence to say for them.
CLIENT_ERRORS = [
    ({"NoSuchBucket", "404", "NotFound"}, "{b} does not exist: check BACKUP_S3_BUCKET, and "
     "AWS_ENDPOINT_URL or AWS_DEFAULT_REGION"),
    ({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"},
     "access to {b} was denied while {action} {where}: check that the AWS credentials in use "
     "may list, read, write and delete objects there (and use the KMS key, with aws:kms)"),
    ({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
      "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"},
     "S3 rejected the AWS credentials for {b} ({code}): check AWS_ACCESS_KEY_ID and "
     "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    ({"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
      "IllegalLocationConstraintException"},
     "{b} is in another region than the one configured: set AWS_DEFAULT_REGION to its region"),
    ({"KMS"}, "S3 refused the KMS key for {b}: check BACKUP_S3_KMS_KEY_ID and the key's policy"),
]


def part_size_for(expected_size: int | None, floor: int = PART_SIZE) -> int:
    """The part size whose 10,000 parts hold PART_HEADROOM times `expected_size` (None:
    unknown, `floor`), in whole MiB, at least `floor`, and no bigger than the part that
    takes 10,000 parts to S3's 5 TiB object limit (a bigger one could not help: S3 refuses the
    object) nor than S3's 5 GiB part."""
    if not expected_size:
        return floor
    needed = -(-expected_size * PART_HEADROOM // MAX_PARTS)          # ceiling division
    ceiling = min(MAX_PART_SIZE, -(-MAX_OBJECT_SIZE // MAX_PARTS // MiB) * MiB)
    return max(floor, min(ceiling, -(-needed // MiB) * MiB))


class S3Storage:
    def __init__(self, bucket: str, prefix_folder: str, settings=None, *,
                 part_size: int = PART_SIZE, page_size: int = 1000, max_attempts: int = 5,
                 connect_timeout: float = 10, read_timeout: float = 120,
                 unaborted_folder: Path | None = None):
        if bucket.startswith("s3://") or "/" in bucket:
            raise ConfigError(f"BACKUP_S3_BUCKET '{bucket}' must be a bucket name alone "
                              "(no s3:// and no path): put a folder in BACKUP_S3_PREFIX")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket, self.folder, self.part_size = bucket, prefix_folder.strip("/"), part_size
        if settings is None:
            settings = Settings(env="", values={})
        self.settings = settings
        self._sse = self._sse_arguments()  # checked now, so a bad value fails before any work
        self.object_lock = ObjectLock.from_settings(settings)  # BACKUP_S3_OBJECT_LOCK
        self._applied: dict[str, str] = {}  # name -> what S3 reported (encryption_applied)
        self._config = dict(retries={"mode": "standard", "max_attempts": max_attempts},
                            connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._abort_config = dict(
            # total_max_attempts: botocore's max_attempts counts the retries alone (4 meant 5
            # attempts and up to 15 s of backoff, more than this bound promises).
            retries={"mode": "standard", "total_max_attempts": ABORT_ATTEMPTS},
            connect_timeout=min(connect_timeout, ABORT_CONNECT_TIMEOUT),
            read_timeout=min(read_timeout, ABORT_READ_TIMEOUT))
        self.page_size, self._s3, self._abort_s3 = page_size, None, None
        self._client_lock = threading.Lock()  # prepare()'s thread may be building the client
        # Whether the endpoint answered in this task: a connection refused after that means it
        # went away mid-run (exit 4), not that it was configured wrongly (exit 2).
        self._reached: set[str] = set()
        self._swept, self._sweep_lock = False, threading.Lock()
        # Where an upload that could not be aborted is recorded (None: nowhere, say so).
        self.unaborted_folder = unaborted_folder

    def _sse_arguments(self) -> dict:
        sse = self.settings.BACKUP_S3_SSE  # AES256, aws:kms, or None; else a ConfigError
        key_id = self.settings.BACKUP_S3_KMS_KEY_ID
        if key_id and sse != "aws:kms":  # the user believes the data is KMS-encrypted: it isn't
            raise ConfigError(f"BACKUP_S3_KMS_KEY_ID is set but BACKUP_S3_SSE is {sse or 'unset'}"
                              ": set BACKUP_S3_SSE=aws:kms to use the key, or unset the key id")
        # aws:kms without a key id uses the account's AWS-managed key (aws/s3), as S3 does.
        return {"ServerSideEncryption": sse, **({"SSEKMSKeyId": key_id} if key_id else {})} \
            if sse else {}

    def prepare(self) -> None:
        """Build the client on a thread now, while the dump starts: importing boto3 and
        building a client takes ~0.5 s that the first part would otherwise wait for. A failure
        here is dropped: the first real call meets it again and reports it."""
        def build() -> None:
            with contextlib.suppress(Exception):
                self.client  # the property builds and caches it
        threading.Thread(target=build, daemon=True, name="s3-client").start()

    @property
    def client(self):
        """Built once per store, and a task opens one store (app/ops/target.py)."""
        with self._client_lock:
            if self._s3 is None:
                self._s3 = self._build_client(self._config)
        return self._s3

    def _build_client(self, config: dict):
        import boto3
        import botocore.session
        from botocore.config import Config

        get = self.settings.library  # boto3's own variables, as the .env files give them
        with self._errors("connecting to"):
            core = botocore.session.Session()
            for var, key in (("AWS_CONFIG_FILE", "config_file"),
                             ("AWS_SHARED_CREDENTIALS_FILE", "credentials_file")):
                if get(var):
                    core.set_config_variable(key, get(var))
            session = boto3.session.Session(
                aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=get("AWS_SESSION_TOKEN"),
                region_name=get("AWS_DEFAULT_REGION"), profile_name=get("AWS_PROFILE"),
                botocore_session=core)
            return session.client(
                "s3", endpoint_url=get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL"),
                config=Config(**config))

    def check_object_lock(self) -> None:
        """With BACKUP_S3_OBJECT_LOCK, the bucket must have Object Lock (read once)."""
        lock = self.object_lock
        if lock is not None and lock.mode is None:
            with self._errors("checking Object Lock of"):
                lock.read_mode(self.client, self.bucket)

    def put_arguments(self) -> dict:
        """What every new object is put with: the SSE, and the Object Lock retention (dated
        from the moment of the put: the retention runs from when the object exists)."""
        if self.object_lock is None:
            return self._sse
        from datetime import datetime, timezone
        self.check_object_lock()
        return {**self._sse, **self.object_lock.arguments(datetime.now(timezone.utc))}

    def retained_until(self, name: str):
        """The retain-until date of the object's newest version, or None (no Object Lock)."""
        if self.object_lock is None:
            return None
        with self._errors("reading", name):
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        return head.get("ObjectLockRetainUntilDate")

    def key(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def free_room(self):
        return None  # a bucket does not run out of room

    def leftovers(self) -> list:
        return []  # an upload is invisible until complete; unaborted ones are recorded apart

    def remove_unheld_partials(self, stem: str) -> None:
        pass  # nothing half-written is ever named in a bucket

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def wants_estimate(self, upper_bound: int | None) -> bool:
        """Would an object of `upper_bound` bytes (None: not known) need bigger parts than the
        default? Only then is an estimate of its size (from earlier backups: a listing and a
        GET per manifest) worth reading for `writer`."""
        return upper_bound is None or part_size_for(upper_bound, self.part_size) > self.part_size

    @contextlib.contextmanager
    def writer(self, name: str, expected_size: int | None = None) -> Iterator[BinaryIO]:
        """Yields a write-only binary stream; the object appears under `name` only if the block
        succeeds. Anything else aborts the multipart upload, leaving no object and no parts.
        `expected_size` (bytes, an estimate) chooses the part size: see part_size_for."""
        upload = _Upload(self, name, part_size_for(expected_size, self.part_size))
        try:
            yield upload
            upload.finish()
        except BaseException as exc:
            left_behind = upload.abort()
            if left_behind and isinstance(exc, OpsError):
                exc.args = (f"{exc}; {left_behind}",)
            raise
        self._applied[name] = upload.server_side_encryption
        self.abort_recorded_uploads()

    def encryption_applied(self, name: str) -> str | None:
        """The server-side encryption S3 reported for the object this store wrote as `name`
        (AES256, aws:kms, aws:kms:dsse, or "none"); None if this store did not write it."""
        return self._applied.get(name)

    def put_bytes(self, name: str, data: bytes) -> None:
        with self.writer(name) as out:
            out.write(data)

    def reader(self, name: str) -> BinaryIO:
        with self._errors("reading", name):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        return io.BufferedReader(_Download(self, name, body), buffer_size=1 << 20)

    def get_bytes(self, name: str) -> bytes:
        with self.reader(name) as source:
            return source.read()

    def exists(self, name: str) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return self.size(name) >= 0
        return False

    def size(self, name: str) -> int:
        with self._errors("reading", name):
            return self.client.head_object(Bucket=self.bucket, Key=self.key(name))["ContentLength"]

    def list(self, suffix: str = "") -> list[str]:
        return sorted(name for name in self.sizes() if name.endswith(suffix))

    def sizes(self) -> dict[str, int]:
        """Every object's size, by name, from the listing itself (no HEAD per object)."""
        # The trailing "/" and the delimiter keep `backups-old/...` and nested keys out.
        prefix = f"{self.folder}/" if self.folder else ""
        sizes = {}
        self.check_object_lock()  # a bucket that cannot hold locked objects: refused at once
        with self._errors("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/",
                PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                sizes.update((o["Key"][len(prefix):], o["Size"]) for o in page.get("Contents", []))
        self.abort_recorded_uploads()
        return {n: size for n, size in sizes.items() if n and not n.startswith(".")}

    def delete(self, name: str) -> None:
        if self.object_lock is not None:
            return self._delete_versions(name)
        with self._errors("deleting", name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def _delete_versions(self, name: str) -> None:
        """Under Object Lock the bucket is versioned: a plain delete would only hide the object
        behind a delete marker. Each version is deleted, once none is under retention (else
        Retained, and nothing is deleted)."""
        from datetime import datetime, timezone

        key = self.key(name)
        until = None
        with contextlib.suppress(FileNotFoundError):
            until = self.retained_until(name)
        if until is not None and until > datetime.now(timezone.utc):
            raise Retained(self.location(name), until)
        with self._errors("deleting", name):
            listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
            for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
                if version["Key"] == key:
                    self.client.delete_object(Bucket=self.bucket, Key=key,
                                              VersionId=version["VersionId"])

    # -- uploads that could not be aborted -------------------------------------------------
    def abort_upload(self, key: str, upload_id: str) -> tuple[str | None, bool]:
        """Abort one multipart upload, with a few quick retries (botocore's, on a client of
        short timeouts). Returns why it is not aborted (None once it is gone, or was already)
        and whether the endpoint answered at all."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            with self._client_lock:
                if self._abort_s3 is None:
                    self._abort_s3 = self._build_client(self._abort_config)
                client = self._abort_s3
            client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return (None if code == "NoSuchUpload" else f"S3 answered {code or exc}"), True
        except BotoCoreError as exc:
            return _cause(exc), False
        except OpsError as exc:
            return str(exc), False
        return None, True

    def record_unaborted(self, key: str, upload_id: str, parts: int, cause: str) -> str:
        """Record an upload that could not be aborted, for the next run to abort. Returns the
        sentence that tells the user what was left behind and what happens to it."""
        what = (f"its multipart upload ({parts} part{'s' if parts != 1 else ''} stored) could "
                f"not be aborted either ({cause})")
        by_hand = (f"abort it by hand: aws s3api abort-multipart-upload --bucket {self.bucket} "
                   f"--key {key} --upload-id {upload_id}")
        folder = self.unaborted_folder
        if folder is None:
            return f"{what}: {by_hand}"
        record = {"bucket": self.bucket, "key": key, "upload_id": upload_id,
                  "endpoint": self.client.meta.endpoint_url, "parts": parts, "cause": cause}
        name = hashlib.sha256(f"{self.bucket}\n{key}\n{upload_id}".encode()).hexdigest()[:24]
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
            partial = folder / f".{name}.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(record, out, indent=2)
            os.replace(partial, folder / f"{name}.json")
        except OSError as exc:
            return f"{what}, nor recorded ({exc.strerror or exc}): {by_hand}"
        return (f"{what}: it is recorded in {folder}, and the next run that reaches the "
                "endpoint aborts it")

    def abort_recorded_uploads(self) -> None:
        """Abort the uploads that earlier runs of this env recorded for this endpoint and
        bucket, once per task, now that the endpoint has answered. One that still cannot
        be aborted stays recorded; a refused connection ends the attempt."""
        folder = self.unaborted_folder
        if folder is None or self._swept or not folder.is_dir():
            return
        with self._sweep_lock:
            if self._swept:
                return
            self._swept = True
            for path, record in read_unaborted(folder):
                if (record.get("bucket"), record.get("endpoint")) != \
                        (self.bucket, self.client.meta.endpoint_url):
                    continue  # another bucket or endpoint: not this store's to abort
                cause, answered = self.abort_upload(record["key"], record["upload_id"])
                if cause is None:
                    path.unlink(missing_ok=True)
                elif not answered:
                    return  # the endpoint is gone again: the next run tries

    # -- errors ----------------------------------------------------------------------------
    def _host(self, url: str) -> str:
        """An endpoint's host, the same for path-style and virtual-hosted (bucket.host) URLs."""
        host = urlsplit(url).netloc
        return host[len(self.bucket) + 1:] if host.startswith(f"{self.bucket}.") else host

    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None = None, midway: bool = False):
        """Turn botocore's exceptions into one sentence naming the bucket and what to check."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError,
                                         ConnectTimeoutError, EndpointConnectionError,
                                         IncompleteReadError, NoCredentialsError,
                                         ParamValidationError, PartialCredentialsError,
                                         ProfileNotFound, ReadTimeoutError,
                                         ResponseStreamingError)
        where = self.location(name) if name else f"s3://{self.bucket}/{self.key('')}"
        words = dict(b=f"S3 bucket '{self.bucket}'", action=action, where=where)
        try:
            yield
            if self._s3 is not None:
                self._reached.add(self._host(self._s3.meta.endpoint_url))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_KEY and name:
                if code != "NoSuchKey":  # HEAD answers a bare 404 for a missing bucket too
                    with self._errors("checking"):
                        self.client.head_bucket(Bucket=self.bucket)
                raise FileNotFoundError(errno.ENOENT, "no such object", where) from None
            if code.startswith("KMS") or (code == "InvalidArgument" and "KMS" in str(exc)):
                code = "KMS"
            for codes, message in CLIENT_ERRORS:
                if code in codes:
                    raise ConfigError(message.format(code=code, **words)) from None
            raise BackupFailed(f"{action} {where} failed: S3 answered {code or exc}") from None
        except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as exc:
            raise ConfigError(f"no usable AWS credentials for {words['b']} ({exc}): set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                              ) from None
        except ParamValidationError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"{words['b']}: {detail}: check BACKUP_S3_BUCKET and "
                              "BACKUP_S3_PREFIX") from None
        except EndpointConnectionError as exc:
            parts = urlsplit(exc.kwargs.get("endpoint_url", ""))  # without path and query
            url = f"{parts.scheme}://{parts.netloc}"
            if midway or self._host(url) in self._reached:
                # S3 answered before: the endpoint went away mid-run, this is no configuration.
                raise TransferFailed(f"{action} {where} failed{' midway' if midway else ''}: "
                                     f"could not connect to the S3 endpoint {url} any more "
                                     f"({_cause(exc)}); check that it is up and the network, "
                                     "then retry") from None
            raise ConfigError(f"the S3 endpoint {url} for {words['b']} cannot be reached: check "
                              "AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and the network "
                              f"({_cause(exc)})") from None
        except (ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
                ResponseStreamingError, IncompleteReadError) as exc:
            # The connection broke mid-transfer: say so, without botocore's URL and query.
            raise TransferFailed(f"{action} {where} failed midway: the connection to S3 was "
                                 f"lost ({_cause(exc)}); check the network and retry") from None
        except BotoCoreError as exc:
            raise BackupFailed(f"{action} {where} failed: {exc}; check the network and retry") \
                from None


def _cause(exc: BaseException) -> str:
    """The operating system's reason under a botocore connection error ("connection refused"),
    else the error's own words, without botocore's URL and query."""
    seen, todo = set(), [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
        if type(error).__name__ in {"IncompleteRead", "IncompleteReadError"}:  # any library's
            return "the answer broke off before its end"
        todo += [getattr(error, "kwargs", {}).get("error"), error.__cause__, error.__context__,
                 *(a for a in getattr(error, "args", ()) if isinstance(a, BaseException))]
    if "timeout" in type(exc).__name__.lower():
        return "timed out"
    return re.sub(r' ?(endpoint )?URL: "[^"]*"', "", str(exc)).strip() or type(exc).__name__


def read_unaborted(folder: Path) -> list[tuple[Path, dict]]:
    """The uploads recorded in `folder` as not aborted, oldest first; unreadable files skipped."""
    found = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
                if isinstance(record, dict) and {"bucket", "key", "upload_id"} <= set(record):
                    found.append((path, record))
    return found


class _Upload(io.RawIOBase):
    """A write-only stream into one S3 object: a single put for a small object, otherwise a
    multipart upload. A full part is sent on a thread of its own while the next one fills, so
    the dump does not wait for the network; at most two part-sized buffers exist at a time."""

    def __init__(self, store: S3Storage, name: str, part_size: int):
        self.store, self.name, self.key = store, name, store.key(name)
        self.part_size = part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []
        self.broken: BaseException | None = None
        self._sender = None     # one worker thread, made with the first part
        self._in_flight = None  # the Future of the part being sent
        self.server_side_encryption: str | None = None  # what S3 reported, once finished

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.broken is not None:
            # A part already failed (botocore retried it); the compressor flushing its last
            # bytes while the error unwinds must not send it all over again, and the error that
            # reaches the user must still be the part's own, with its cause.
            if isinstance(self.broken, OpsError):
                raise type(self.broken)(*self.broken.args) from None
            raise BackupFailed(f"{self.store.location(self.name)}: the upload already failed "
                               f"({self.broken!r})")
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            room = self.part_size - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) == self.part_size:
                self._send_part()
        return size

    def _call(self, method: str, **kwargs):
        s = self.store
        with s._errors("writing", self.name, midway=self.upload_id is not None):
            return getattr(s.client, method)(Bucket=s.bucket, Key=self.key, **kwargs)

    def _send_part(self) -> None:
        """Hand the full buffer to the sender thread, once the part before it has arrived."""
        if self.upload_id is None:
            from concurrent.futures import ThreadPoolExecutor

            # CRC32 per part, checked by S3, as boto3's own transfer manager does.
            self.upload_id = self._call("create_multipart_upload", ChecksumAlgorithm="CRC32",
                                        **self.store.put_arguments())["UploadId"]
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise BackupFailed(f"{self.store.location(self.name)} would need more than S3's "
                               f"{MAX_PARTS} parts of {self.part_size // MiB} MiB (chosen for "
                               "the size expected from the database and earlier backups): the "
                               "backup is far bigger than expected; nothing was stored")
        self._wait_for_part()
        body, self.buffer = self.buffer, bytearray()
        self.parts.append({"PartNumber": number})
        self._in_flight = self._sender.submit(self._upload_part, number, body)

    def _upload_part(self, number: int, body: bytearray) -> None:
        answer = self._call("upload_part", UploadId=self.upload_id, PartNumber=number,
                            Body=body, ChecksumAlgorithm="CRC32")
        self.parts[number - 1].update(ETag=answer["ETag"], **(
            {"ChecksumCRC32": answer["ChecksumCRC32"]} if "ChecksumCRC32" in answer else {}))

    def _wait_for_part(self) -> None:
        """Raise the failure of the part in flight, if it failed; nothing more is sent then."""
        pending, self._in_flight = self._in_flight, None
        if pending is not None:
            try:
                pending.result()
            except BaseException as exc:
                self.broken = exc
                raise

    def finish(self) -> None:
        if self.upload_id is None:
            done = self._call("put_object", Body=bytes(self.buffer),
                              **self.store.put_arguments())
        else:
            if self.buffer:
                self._send_part()
            self._wait_for_part()
            done = self._call("complete_multipart_upload", UploadId=self.upload_id,
                              MultipartUpload={"Parts": self.parts})
        # What S3 says it applied, not what was asked: a bucket's default encryption applies
        # without being asked (SSE-S3 on every new AWS object since 2023).
        self.server_side_encryption = done.get("ServerSideEncryption") or "none"
        self._stop_sender()
        self.buffer = bytearray()
        self.close()

    def abort(self) -> str | None:
        """Abort the multipart upload. None when nothing is left behind, else the sentence
        saying what is and what will happen to it (the upload is then recorded)."""
        self.buffer = bytearray()
        # A part still in flight must land (or fail) before the abort, or it would outlive it.
        with contextlib.suppress(BaseException):
            self._wait_for_part()
        self._stop_sender()
        left_behind = None
        if self.upload_id is not None:
            # The original error is the one to report; the abort's only adds to it.
            cause, _ = self.store.abort_upload(self.key, self.upload_id)
            if cause is not None:
                stored = sum(1 for part in self.parts if "ETag" in part)
                left_behind = self.store.record_unaborted(self.key, self.upload_id, stored, cause)
            self.upload_id = None
        self.close()
        return left_behind

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None


class _Download(io.RawIOBase):
    """get_object's streaming body, with its failures turned into BackupFailed."""

    def __init__(self, store: S3Storage, name: str, body):
        self.store, self.name, self.body = store, name, body

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        with self.store._errors("reading", self.name, midway=True):
            data = self.body.read(len(target))
        target[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()
