"""Who this run is: the user, host and process, and a random id for this process's run. Every
audit event names it, and so does a lock's holder, so a stuck lock says whose it is."""
from __future__ import annotations

import getpass
import os
import secrets
import socket

# This process's run, named in each of its events: a run that finishes another's interrupted
# restore says which run it was ("completed by run RUN_ID").
RUN_ID = secrets.token_hex(4)


def who() -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(), "run": RUN_ID}
