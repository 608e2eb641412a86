"""A throwaway archiving cluster whose pgBackRest repository is S3, for the S3-repository end-to-end
tests: moto's server (plain HTTP, a process of its own) behind stunnel (Debian's stunnel4, in
server mode) that terminates TLS with a self-signed certificate made for the run, and a cluster
as tests/clusters.py builds it with `repo1-type=s3` on that endpoint.

pgBackRest 2.45 speaks only https to S3, and moto's own TLS mode (`-s`) ends its connections in
a way pgBackRest refuses; stunnel in front is what production teams do with a plain-HTTP S3
gateway too. Every process listens on 127.0.0.1 on a free port; readiness is a connection that
succeeds (for stunnel: a TLS handshake), never a fixed sleep.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from clusters import ClusterUnavailable
from helpers import free_port

STUNNEL = os.environ.get("TEST_STUNNEL", "/usr/bin/stunnel4")
REPO_PATH = "/mida-repo"          # the repository's prefix in the bucket
S3_KEY, S3_SECRET = "MIDAPGBRS3KEY", "mida-pgbr-s3-secret-5f1c9e"  # moto takes any


class EndpointUnavailable(ClusterUnavailable):
    """What is missing for the TLS endpoint (stunnel4, openssl)."""


def s3_repository(bucket: str, port: int) -> str:
    """pgBackRest's repo1 lines for `bucket` behind the TLS endpoint on `port`. The key and its
    secret are in the config file (0600, the cluster owner's), never on a command line."""
    return (f"repo1-type=s3\nrepo1-path={REPO_PATH}\nrepo1-s3-bucket={bucket}\n"
            f"repo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={port}\n"
            "repo1-s3-region=us-east-1\nrepo1-s3-uri-style=path\n"
            "repo1-storage-verify-tls=n\n"
            f"repo1-s3-key={S3_KEY}\nrepo1-s3-key-secret={S3_SECRET}")


def wait_listening(port: int, process: subprocess.Popen, what: str, timeout: float = 30,
                   tls: bool = False) -> None:
    """Until a connection to the port succeeds (with `tls`, a TLS handshake too); fails at once
    when the process has ended, and after `timeout`."""
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    last = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} ended with {process.returncode} before it listened: "
                               f"{read_log(process)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if tls:
                    with context.wrap_socket(sock, server_hostname="localhost"):
                        pass
                return
        except OSError as exc:  # refused while it starts; each attempt is a real connect
            last = exc
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s: {last}")


def read_log(process: subprocess.Popen) -> str:
    log = getattr(process, "log_path", None)
    return Path(log).read_text(errors="replace")[-2000:] if log else ""


def end(process: subprocess.Popen | None) -> None:
    """Stop a process this module started (its own process group), then reap it."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_logged(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=env)
    process.log_path = log
    return process


class Moto:
    """moto's server as a process of its own, serving S3 over plain HTTP."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = start_logged([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                     "-p", str(self.port)], self.folder / "moto.log", env)
        wait_listening(self.port, self.process, "moto's server")

    def stop(self) -> None:
        end(self.process)


class Stunnel:
    """stunnel4 in server mode: TLS on `port` (a self-signed certificate for localhost and
    127.0.0.1), forwarded as plain TCP to `target_port`. stop() and start() again keep the port,
    so a test can make the endpoint unreachable and bring it back."""

    def __init__(self, folder: Path, target_port: int):
        if not Path(STUNNEL).exists():
            raise EndpointUnavailable(f"no {STUNNEL} (apt-get install -y stunnel4)")
        if shutil.which("openssl") is None:
            raise EndpointUnavailable("openssl is not installed")
        self.folder, self.target_port, self.port = folder, target_port, free_port()
        self.process = None
        self.cert, self.key = folder / "stunnel-cert.pem", folder / "stunnel-key.pem"
        self.config = folder / "stunnel.conf"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        os.chmod(self.key, 0o600)
        self.config.write_text(
            "foreground = yes\npid =\nsyslog = no\ndebug = notice\n\n"
            "[s3]\n"
            f"accept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{target_port}\n"
            f"cert = {self.cert}\nkey = {self.key}\n")

    def start(self) -> None:
        self.process = start_logged([STUNNEL, str(self.config)], self.folder / "stunnel.log")
        wait_listening(self.port, self.process, "stunnel", tls=True)

    def stop(self) -> None:
        end(self.process)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
