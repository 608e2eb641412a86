"""S3 Object Lock (BACKUP_S3_OBJECT_LOCK=DURATION, e.g. `35d`): every object the tool writes is
put with a retain-until date that far ahead, so nobody holding the bucket's credentials (an
intruder, a mistaken operator, this tool) can delete a backup early.

The mode is the bucket's default retention mode, or GOVERNANCE when the bucket has no default
rule (COMPLIANCE cannot be shortened by anyone, so it is only used when the bucket asks for it).
A bucket without Object Lock is refused at once, with the command that makes one: Object Lock
can only be enabled when a bucket is created. Object Lock implies versioning: a manifest that
verify or rekey rewrites becomes a new version, and a GET reads the newest.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.ops.errors import ConfigError, OpsError

DEFAULT_MODE = "GOVERNANCE"


class Retained(OpsError):
    """An object is under Object Lock retention: it cannot be deleted before `until`."""

    def __init__(self, location: str, until: datetime):
        super().__init__(f"{location} is under Object Lock retention until {iso(until)}")
        self.location, self.until = location, until


@dataclass
class ObjectLock:
    text: str
    seconds: float
    mode: str | None = None   # read from the bucket on first use

    @classmethod
    def from_settings(cls, settings) -> "ObjectLock | None":
        value = settings.BACKUP_S3_OBJECT_LOCK  # a Duration: not one is a ConfigError
        if value is None:
            return None
        return cls(value.text.strip(), value.seconds)

    def read_mode(self, client, bucket: str) -> str:
        """The bucket's default mode; ConfigError when the bucket has no Object Lock."""
        from botocore.exceptions import ClientError

        try:
            answer = client.get_object_lock_configuration(Bucket=bucket)
            config = answer.get("ObjectLockConfiguration") or {}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                raise
            config = {}
        if config.get("ObjectLockEnabled") != "Enabled":
            raise ConfigError(
                f"BACKUP_S3_OBJECT_LOCK is set but S3 bucket '{bucket}' has no Object Lock, "
                "which can only be enabled on a new bucket: create one with `aws s3api "
                f"create-bucket --bucket {bucket}-locked --object-lock-enabled-for-bucket` and "
                "set BACKUP_S3_BUCKET to it, or unset BACKUP_S3_OBJECT_LOCK")
        rule = (config.get("Rule") or {}).get("DefaultRetention") or {}
        self.mode = rule.get("Mode") or DEFAULT_MODE
        return self.mode

    def arguments(self, now: datetime) -> dict:
        return {"ObjectLockMode": self.mode,
                "ObjectLockRetainUntilDate": now + timedelta(seconds=self.seconds)}

    def describe(self) -> str:
        return f"{self.text} per object, Object Lock mode {self.mode or 'unknown yet'}"


def iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
