"""Part 4: `invoke backup` of the reference database to local disk, to S3 (moto's server, a
thread of this process, SSE AES256) and to local disk age-encrypted (a fresh pyrage x25519 key).
Needs moto[server], boto3 and pyrage (the project's dev requirements)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .postgres import MIB, database_size, ensure_reference_db, warm_cache
from .project import Backup, invoke_backup, invoke_environment
from .report import Check, biggest_kib, med, median_seconds, ratio_check, report_commands, rss_check
from .rounds import Case, Outcome, make_folder, remove_folder, run_rounds

S3_RATIO_TARGET = 1.3
ENCRYPTION_RATIO_TARGET = 1.10
BUCKET = "mida-bench"
LOCAL = "invoke backup (local)"
S3 = "invoke backup (S3, SSE AES256)"
AGE = "invoke backup (local, age)"


class MotoBucket:
    """A bucket on moto's server, and what one `invoke backup` left in it."""

    def __init__(self, boto3, endpoint: str):
        self.endpoint = endpoint
        self.client = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint)
        self.client.create_bucket(Bucket=BUCKET)

    def environment(self, folder: Path) -> dict[str, str]:
        """The settings that send `invoke backup` here, with no AWS configuration of the host's."""
        return dict(BACKUP_STORAGE="s3", BACKUP_S3_BUCKET=BUCKET, BACKUP_S3_SSE="AES256",
                    AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="test",
                    AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                    AWS_CONFIG_FILE=str(folder / "no-aws-config"),
                    AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"),
                    AWS_EC2_METADATA_DISABLED="true")

    def keys(self) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def only_manifest(self) -> tuple[dict, int]:
        """The one manifest in the bucket and its artifact's stored size, which must be
        encrypted at rest with SSE AES256."""
        keys = self.keys()
        names = [k for k in keys if k.endswith(".manifest.json")]
        if len(names) != 1:
            raise SystemExit(f"invoke backup left {len(names)} manifests in s3://{BUCKET}: {keys}")
        manifest = json.loads(self.client.get_object(Bucket=BUCKET, Key=names[0])["Body"].read())
        artifact_key = names[0].rsplit("/", 1)[0] + "/" + manifest["artifact"]
        head = self.client.head_object(Bucket=BUCKET, Key=artifact_key)
        sse = head.get("ServerSideEncryption")
        if sse != "AES256":
            raise SystemExit(f"{artifact_key} has ServerSideEncryption={sse}, not AES256")
        return manifest, head["ContentLength"]

    def empty(self) -> None:
        """Every object and unfinished upload goes, so that moto's memory does not fill up."""
        for key in self.keys():
            self.client.delete_object(Bucket=BUCKET, Key=key)
        for upload in self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"],
                                               UploadId=upload["UploadId"])


def run(args, tmp: Path) -> list[Check]:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
        from pyrage import x25519
    except ImportError as exc:
        raise SystemExit(f"part 4 needs moto[server], boto3 and pyrage ({exc}): "
                         "pip install -r requirements-dev.txt, or leave it out with --parts")
    ensure_reference_db(args)
    folder = tmp / "s3"
    folder.mkdir()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        bucket = MotoBucket(boto3, f"http://{host}:{port}")
        cases = backup_cases(args, folder, bucket, x25519.Identity.generate())
        print(f"\n== Part 4: backup of {args.database} "
              f"({database_size(args, args.database) / MIB:.0f} MiB on disk) to local disk, to "
              f"S3 (moto at {bucket.endpoint}, a thread of this process) and encrypted, "
              f"{args.rounds} alternating rounds ==", flush=True)
        warm_cache(args)
        results = run_rounds(cases, args.rounds, folder, name_width=32)
    finally:
        server.stop()
    report_commands(results, LOCAL, args.sample_interval)
    return checks(results)


def backup_cases(args, folder: Path, bucket: MotoBucket, identity) -> list[Case]:
    key_file = folder / "age-identity.txt"
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(str(identity) + "\n")
    age_env = dict(BACKUP_ENCRYPTION_RECIPIENTS=str(identity.to_public()),
                   BACKUP_ENCRYPTION_IDENTITY_FILE=str(key_file))

    def backup_case(name: str, extra_env: dict, s3: bool = False) -> Case:
        wanted = "age" if "BACKUP_ENCRYPTION_RECIPIENTS" in extra_env else None

        def backup(scratch: Path) -> Backup:
            env = dict(invoke_environment(args, args.database, scratch), **extra_env)
            taken = invoke_backup(args, env, what="invoke backup" + (" to S3" if s3 else ""),
                                  find=bucket.only_manifest if s3 else None,
                                  sample_interval=args.sample_interval)
            if taken.manifest.get("encryption") != wanted:
                raise SystemExit(f"manifest encryption {taken.manifest.get('encryption')!r}, "
                                 f"expected {wanted!r}")
            return taken

        def cleanup(scratch: Path) -> None:
            remove_folder(scratch)
            if s3:
                bucket.empty()

        def note(outcome: Backup) -> str:
            return (f", manifest duration {outcome.manifest['duration_seconds']:.1f} s"
                    + (f", this process (moto + sampler) CPU {outcome.run.own_cpu_seconds:.1f} s"
                       if s3 else ""))

        return Case(name, backup, setup=make_folder, cleanup=cleanup, note=note)

    return [backup_case(LOCAL, {}), backup_case(S3, bucket.environment(folder), s3=True),
            backup_case(AGE, age_env)]


def checks(results: dict[str, list[Outcome]]) -> list[Check]:
    local, s3, age = (median_seconds(results[name]) for name in (LOCAL, S3, AGE))
    print(f"\n  S3: moto serves from this process, which used a median "
          f"{med([o.run.own_cpu_seconds for o in results[S3]]):.1f} s of CPU per S3 backup "
          "(with the RSS sampler's; not counted in the tree's CPU or RSS above, but on 2 cores "
          "it competes with the backup).\n  moto keeps the objects in this process's memory: "
          "wait4's ru_maxrss counts that image (forked before exec), the sampled VmHWM does not.")
    return [
        ratio_check("S3 backup time", s3, local, S3_RATIO_TARGET, base_label="local "),
        rss_check("S3 backup peak RSS", biggest_kib(results[S3])),
        ratio_check("encryption", age, local, ENCRYPTION_RATIO_TARGET, ours_label="encrypted ",
                    base_label="local ",
                    limit=f"<= {ENCRYPTION_RATIO_TARGET:.2f}x, i.e. at most 10% more"),
    ]
