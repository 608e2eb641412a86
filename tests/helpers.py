"""Assertions shared by the end-to-end tests: how a finished `invoke` run must look, and what
an SQLite database holds afterwards."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import quote, quote_plus

from conftest import AWKWARD_PASSWORD


def _password_forms(pw: str) -> tuple[str, ...]:
    """Every form the test password could leak in: plain, cut at a `#` (a URL fragment), each
    way a URL library percent-encodes it (SQLAlchemy's URL renders `quote(pw, safe=" +")`), and
    each way a string escaper writes it (JSON, Python's repr, libpq's conninfo and .pgpass)."""
    forms = {
        pw,
        pw.split("#")[0],
        quote_plus(pw),
        quote(pw, safe=""),
        quote(pw),                   # urllib's default keeps `/`
        quote(pw, safe=" +"),        # sqlalchemy URL.render_as_string(hide_password=False)
        json.dumps(pw)[1:-1],
        repr(pw)[1:-1],
        pw.replace("\\", "\\\\").replace("'", "\\'"),     # libpq conninfo value
        pw.replace("\\", "\\\\").replace(":", "\\:"),     # .pgpass field
    }
    return tuple(sorted(forms))


PASSWORD_FORMS = _password_forms(AWKWARD_PASSWORD)


def shown(result) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_no_password(*texts: str) -> None:
    for text_ in texts:
        for form in PASSWORD_FORMS:
            assert form not in text_, f"the password leaked ({form!r}) into:\n{text_}"


def ok(result):
    """Exit 0, no traceback, no password anywhere in the output."""
    assert result.returncode == 0, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_no_password(result.stdout, result.stderr)
    return result


def failed(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one `ERROR:` line on stderr holding every fragment, no traceback,
    no password."""
    assert result.returncode == code, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_no_password(result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, shown(result)
    for fragment in fragments:
        assert fragment in errors[0], shown(result)
    return errors[0]


def sqlite_state(path: Path) -> dict | None:
    """Revision and {table: [columns]} of an SQLite file, read-only; None if it is absent."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        tables = {n: [c[1] for c in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return {"revision": revision, "tables": tables}
    finally:
        conn.close()
