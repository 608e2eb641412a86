"""S3 store: one environment's backups under `<BACKUP_S3_PREFIX>/<env>/` in one bucket.

Same interface as `LocalStorage`. A new object streams into a multipart upload of fixed-size
parts, each sent on a thread while the next fills (two buffers at most), so memory stays flat
whatever the size; the object exists only
once the upload completes, and a failed block aborts it, leaving no parts (a lifecycle rule
`AbortIncompleteMultipartUpload` still covers a killed process). Every object written carries
the configured server-side encryption. Credentials, region and endpoint follow boto3's own
resolution, but values in the settings (which include the .env files) are passed explicitly.
Retries are botocore's. boto3 is imported only when S3 is used.

Errors: configuration (no bucket, credentials missing or rejected, access denied, KMS key,
endpoint unreachable before any data moved) -> ConfigError (exit 2); a transfer that breaks once
under way -> BackupFailed (exit 4). No botocore exception escapes. A missing key raises
FileNotFoundError, as on local disk, because callers read that as "not there".
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from app.ops.errors import BackupFailed, ConfigError

PART_SIZE = 16 << 20   # 16 MiB: S3's minimum is 5 MiB; 10,000 parts of this hold ~156 GiB
MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000
SSE_VALUES = {"AES256": "AES256", "AWS:KMS": "aws:kms"}
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
AWS_SETTINGS = ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CLIENTS: dict[tuple, object] = {}  # see S3Storage.client
_CLIENTS_LOCK = threading.Lock()
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


class S3Storage:
    def __init__(self, bucket: str, prefix_folder: str, settings=None, *,
                 part_size: int = PART_SIZE, page_size: int = 1000, max_attempts: int = 5,
                 connect_timeout: float = 10, read_timeout: float = 120):
        if bucket.startswith("s3://") or "/" in bucket:
            raise ConfigError(f"BACKUP_S3_BUCKET '{bucket}' must be a bucket name alone "
                              "(no s3:// and no path): put a folder in BACKUP_S3_PREFIX")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket, self.folder, self.part_size = bucket, prefix_folder.strip("/"), part_size
        self._get = settings.get if settings is not None else (lambda name, default=None: default)
        self._sse = self._sse_arguments()  # checked now, so a bad value fails before any work
        self._config = dict(retries={"mode": "standard", "max_attempts": max_attempts},
                            connect_timeout=connect_timeout, read_timeout=read_timeout)
        self.page_size, self._s3 = page_size, None

    def _sse_arguments(self) -> dict:
        value, key_id = self._get("BACKUP_S3_SSE"), self._get("BACKUP_S3_KMS_KEY_ID")
        sse = SSE_VALUES.get(value.strip().upper(), "?") if value else None
        if sse == "?":
            raise ConfigError(f"BACKUP_S3_SSE '{value}' is not supported: use AES256 or aws:kms")
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
        """One client per distinct configuration and process: building one costs ~0.2 s, and
        a single run opens the store several times (backup, manifest, audit)."""
        if self._s3 is None:
            with _CLIENTS_LOCK:  # prepare()'s thread may be building it right now
                self._s3 = self._build_client()
        return self._s3

    def _build_client(self):
        get = self._get
        wanted = (tuple(get(v) for v in AWS_SETTINGS), repr(self._config),
                  tuple(sorted((k, v) for k, v in os.environ.items() if k[:4] == "AWS_")))
        if wanted not in _CLIENTS:
            import boto3
            import botocore.session
            from botocore.config import Config
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
                _CLIENTS[wanted] = session.client(
                    "s3", endpoint_url=get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL"),
                    config=Config(**self._config))
        return _CLIENTS[wanted]

    def key(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """Yields a write-only binary stream; the object appears under `name` only if the block
        succeeds. Anything else aborts the multipart upload, leaving no object and no parts."""
        upload = _Upload(self, name)
        try:
            yield upload
            upload.finish()
        except BaseException:
            upload.abort()
            raise

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
        with self._errors("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/",
                PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                sizes.update((o["Key"][len(prefix):], o["Size"]) for o in page.get("Contents", []))
        return {n: size for n, size in sizes.items() if n and not n.startswith(".")}

    def delete(self, name: str) -> None:
        with self._errors("deleting", name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    # -- errors ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None = None, midway: bool = False):
        """Turn botocore's exceptions into one sentence naming the bucket and what to check."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError,
                                         ConnectTimeoutError, EndpointConnectionError,
                                         NoCredentialsError, ParamValidationError,
                                         PartialCredentialsError, ProfileNotFound,
                                         ReadTimeoutError)
        where = self.location(name) if name else f"s3://{self.bucket}/{self.key('')}"
        words = dict(b=f"S3 bucket '{self.bucket}'", action=action, where=where)
        try:
            yield
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
            if midway:  # S3 answered before: this is a transfer that broke, not configuration
                raise BackupFailed(f"{action} {where} failed midway: the connection to {url} "
                                   "was lost; check the network and retry") from None
            raise ConfigError(f"the S3 endpoint {url} for {words['b']} cannot be reached: check "
                              "AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and the network") from None
        except (ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError) as exc:
            # The connection broke mid-transfer: say so, without botocore's URL and query.
            raise BackupFailed(f"{action} {where} failed midway: the connection to S3 was "
                               f"lost ({type(exc).__name__}); check the network and retry") from None
        except BotoCoreError as exc:
            raise BackupFailed(f"{action} {where} failed: {exc}; check the network and retry") \
                from None


class _Upload(io.RawIOBase):
    """A write-only stream into one S3 object: a single put for a small object, otherwise a
    multipart upload. A full part is sent on a thread of its own while the next one fills, so
    the dump does not wait for the network; at most two part-sized buffers exist at a time."""

    def __init__(self, store: S3Storage, name: str):
        self.store, self.name, self.key = store, name, store.key(name)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []
        self.broken: BaseException | None = None
        self._sender = None     # one worker thread, made with the first part
        self._in_flight = None  # the Future of the part being sent

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.broken is not None:
            # A part already failed (botocore retried it); the compressor flushing its last
            # bytes while the error unwinds must not send it all over again.
            raise BackupFailed(f"{self.store.location(self.name)}: the upload already failed")
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            room = self.store.part_size - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) == self.store.part_size:
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
                                        **self.store._sse)["UploadId"]
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise BackupFailed(f"{self.store.location(self.name)} would need more than "
                               f"{MAX_PARTS} parts of {self.store.part_size} bytes")
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
            self._call("put_object", Body=bytes(self.buffer), **self.store._sse)
        else:
            if self.buffer:
                self._send_part()
            self._wait_for_part()
            self._call("complete_multipart_upload", UploadId=self.upload_id,
                       MultipartUpload={"Parts": self.parts})
        self._stop_sender()
        self.buffer = bytearray()
        self.close()

    def abort(self) -> None:
        self.buffer = bytearray()
        # A part still in flight must land (or fail) before the abort, or it would outlive it.
        with contextlib.suppress(BaseException):
            self._wait_for_part()
        self._stop_sender()
        if self.upload_id is not None:
            # Best effort: the original error is the one to report, not the abort's.
            with contextlib.suppress(Exception):
                self._call("abort_multipart_upload", UploadId=self.upload_id)
            self.upload_id = None
        self.close()

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
