"""Run Python code in a child process whose kernel refuses O_TMPFILE, as a file system without
it (NFS, FAT, some FUSE mounts) or a container's seccomp profile does: a seccomp filter, put
on the child alone, makes every openat() asking for O_TMPFILE fail with EOPNOTSUPP.

A filter cannot be taken off again, hence the child. Linux on x86_64 or aarch64."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

# (AUDIT_ARCH_*, the number of openat) per machine.
ARCHES = {"x86_64": (0xC000003E, 257), "aarch64": (0xC00000B7, 56)}
__O_TMPFILE = 0o20000000     # O_TMPFILE is this | O_DIRECTORY
EOPNOTSUPP = 95

INSTALL = """
import ctypes, struct
def _no_tmpfile(arch, openat, flag, errno):
    LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    program = [(LD_ABS, 0, 0, 4), (JEQ, 0, 4, arch),        # seccomp_data.arch
               (LD_ABS, 0, 0, 0), (JEQ, 0, 2, openat),      # .nr
               (LD_ABS, 0, 0, 32), (JSET, 1, 0, flag),      # low word of args[2]: the flags
               (RET, 0, 0, ALLOW), (RET, 0, 0, ERRNO | errno)]
    code = b"".join(struct.pack("HBBI", *op) for op in program)
    filters = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # a pointer must not be cut
    prog = ctypes.create_string_buffer(fprog)
    assert libc.prctl(38, 1, 0, 0, 0) == 0, ctypes.get_errno()      # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP
"""


def run_without_tmpfile(code: str, cwd) -> subprocess.CompletedProcess:
    """`code` run by a Python child whose openat() refuses O_TMPFILE; raises if it fails."""
    arch, openat = ARCHES[platform.machine()]
    script = (INSTALL + f"_no_tmpfile({arch}, {openat}, {__O_TMPFILE}, {EOPNOTSUPP})\n"
              + textwrap.dedent(code))
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result
