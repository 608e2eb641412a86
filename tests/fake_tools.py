"""Fake client tools for the end-to-end tests: a PG_BIN_DIR of bash scripts around the real
pg_dump and pg_restore that log, fail, lie or park, and the `invoke` runs parked in them (started,
waited for through a FIFO, and ended whatever the test does)."""
from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
from pathlib import Path

REAL_PG_DUMP = shutil.which("pg_dump") or "/usr/bin/pg_dump"
REAL_PG_RESTORE = shutil.which("pg_restore") or "/usr/bin/pg_restore"


def fake_pg_bin(folder: Path, *, pg_dump: str | None = None,
                pg_restore: str | None = None) -> Path:
    """A PG_BIN_DIR of bash scripts: each of pg_dump and pg_restore runs the body given for it
    (with $REAL set to the real tool), or just execs the real tool."""
    folder.mkdir()
    for tool, real, body in (("pg_dump", REAL_PG_DUMP, pg_dump),
                             ("pg_restore", REAL_PG_RESTORE, pg_restore)):
        script = folder / tool
        script.write_text(f"#!/bin/bash\nREAL='{real}'\n"
                          + (body if body is not None else 'exec "$REAL" "$@"\n'))
        script.chmod(0o755)
    return folder


def wrapped_pg_dump(tmp_path: Path, pg_dump_body: str, *, version: str | None = None) -> Path:
    """A PG_BIN_DIR (tmp_path/pg-bin): pg_dump answers --version (really, or with `version`)
    and otherwise logs its call to tmp_path/dump.log (dump_calls) and runs `pg_dump_body`
    ($REAL is the real pg_dump, $LOG the log); pg_restore is the real one."""
    answer = f"echo 'pg_dump (PostgreSQL) {version}'; exit 0" if version else 'exec "$REAL" "$@"'
    return fake_pg_bin(tmp_path / "pg-bin", pg_dump=f"""LOG='{tmp_path / "dump.log"}'
if [ "$1" = "--version" ]; then {answer}; fi
echo "dump $*" >> "$LOG"
{pg_dump_body}
""")


def dump_calls(tmp_path: Path) -> list[str]:
    """The calls wrapped_pg_dump logged, other than --version."""
    log = tmp_path / "dump.log"
    return log.read_text().splitlines() if log.exists() else []


def started_and_parked(project, fifo: Path, *args: str, env: dict) -> tuple:
    """`invoke *args`, started (Project.start) and waited for until a fake tool of its writes a
    line to `fifo` (it is parked there): the run and that line. A run that ends first fails the
    test."""
    fifo_fd = os.open(fifo, os.O_RDWR)  # Linux: never blocks, and never reads EOF
    run = project.start(*args, env=env)
    try:
        while not select.select([fifo_fd], [], [], 1)[0]:
            assert run.poll() is None, f"{args[0]} ended early:\n{run.communicate()}"
        said = os.read(fifo_fd, 100)
    finally:
        os.close(fifo_fd)
    return run, said


@contextlib.contextmanager
def ended_afterwards(run):
    """Whatever happens in the block, the run and all it started are ended after it."""
    try:
        yield run
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        run.stdout.close()
        run.stderr.close()


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # dead, not yet reaped by init


def unnamed_files(pid: int, folder: Path) -> list[str]:
    """The /proc paths of the files without a name in `folder` that process `pid` holds open
    (O_TMPFILE: /proc shows each as `FOLDER/#INODE (deleted)`); opening one reaches the file."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(f"{folder}/") and target.endswith(" (deleted)"):
            found.append(str(fd))
    return found


def size_of_handed_file(pid: int, handed: str, folder: Path) -> int | None:
    """The size of the file process `pid` was handed as `/proc/self/fd/N` in its arguments
    `handed` (pg_restore's archive), when it holds it open, without a name, in `folder`;
    None when it does not."""
    match = re.search(r"/proc/self/fd/(\d+)", handed)
    if match is None:
        return None
    fd = Path(f"/proc/{pid}/fd/{match[1]}")
    try:
        target = os.readlink(fd)
        size = os.stat(fd).st_size
    except OSError:
        return None
    if target.startswith(f"{folder}/") and target.endswith(" (deleted)"):
        return size
    return None


def fifo_pair(folder: Path) -> tuple[Path, Path]:
    """Two named pipes, `started.fifo` and `go.fifo`: a fake tool says it got somewhere on
    the first and waits for the test's line on the second."""
    started, go = folder / "started.fifo", folder / "go.fifo"
    os.mkfifo(started)
    os.mkfifo(go)
    return started, go
