"""The archive's table of contents (`pg_restore --list`), and the passes a restore by the
database's owner (not a superuser) makes over it so that it brings owners and grants back.

pg_restore gives each object its owner (`ALTER ... OWNER TO`) right after creating it, and
applies every grant (ACL entries) at the very end. PostgreSQL 15's `public` schema belongs to
pg_database_owner and grants CREATE to nobody else, so giving a table to another role that
has CREATE there only through a grant fails ("permission denied for schema public") when
that grant is restored later. So, when the archive holds objects of other roles, the schemas
and their grants are restored first (pass 1), then everything else (pass 2): each object's
owner is given it once its schema's grants are in place, as they were when it was dumped.

Grants on the server's own functions (`GRANT EXECUTE ON FUNCTION pg_catalog.pg_switch_wal()`,
which the pgBackRest set-up asks for) are dumped too, but only a superuser may give them: a
restore by another role leaves those entries out and says which statements to run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# `pg_restore --list` lines: "ID; TABLEOID OID DESC SCHEMA NAME OWNER" (schema "-" for none).
ENTRY_RE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
# Descriptions of more than one word, longest first, so the schema that follows is found.
MULTIWORD = sorted(("TABLE DATA", "FK CONSTRAINT", "DEFAULT ACL", "SEQUENCE SET",
                    "SEQUENCE OWNED BY", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW",
                    "TEXT SEARCH DICTIONARY", "TEXT SEARCH CONFIGURATION",
                    "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "FOREIGN TABLE",
                    "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "USER MAPPING",
                    "EVENT TRIGGER", "LARGE OBJECT", "BLOB METADATA", "BLOBS",
                    "SHELL TYPE", "DATABASE PROPERTIES", "PUBLICATION TABLE",
                    "PUBLICATION TABLES IN SCHEMA", "ACCESS METHOD", "OPERATOR CLASS",
                    "OPERATOR FAMILY", "POLICY", "ROW SECURITY", "CHECK CONSTRAINT",
                    "TABLE ATTACH", "INDEX ATTACH", "STATISTICS DATA"), key=len, reverse=True)
# Owners a database's owner gives objects to without being anybody's member.
OWN_ROLES = {"", "-", "pg_database_owner"}


@dataclass(frozen=True)
class TocEntry:
    line: str
    desc: str
    schema: str
    name: str
    owner: str


def parse_toc(listing: str) -> list[TocEntry]:
    entries = []
    for line in listing.splitlines():
        match = ENTRY_RE.match(line)
        if not match:
            continue  # a comment (";") or blank
        rest = match.group(4)
        desc = next((d for d in MULTIWORD if rest.startswith(d + " ")), rest.split(" ", 1)[0])
        tail = rest[len(desc) + 1:]
        schema, _, tail = tail.partition(" ")
        name, _, owner = tail.rpartition(" ")
        entries.append(TocEntry(line, desc, schema, name, owner))
    return entries


@dataclass
class RestorePasses:
    """What to restore, pass by pass (`passes` empty: the whole archive in one pass, as it
    is), what is left out, and the other roles that own objects in it."""
    passes: list[list[TocEntry]] = field(default_factory=list)
    skipped: list[TocEntry] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)


def plan_passes(entries: list[TocEntry], current_user: str, superuser: bool) -> RestorePasses:
    skipped = [] if superuser else [e for e in entries if is_catalog_grant(e)]
    kept = [e for e in entries if e not in skipped]
    owners = {e.owner for e in kept if e.desc != "ACL"} - OWN_ROLES - {current_user}
    if superuser or not owners:
        return RestorePasses([kept] if skipped else [], skipped, owners)
    first = [e for e in kept if e.desc == "SCHEMA"
             or (e.desc == "ACL" and e.name.startswith("SCHEMA "))]
    second = [e for e in kept if e not in first]
    return RestorePasses([p for p in (first, second) if p], skipped, owners)


def is_catalog_grant(entry: TocEntry) -> bool:
    """A grant on an object of the server's own (pg_catalog, information_schema)."""
    return entry.desc == "ACL" and entry.schema in ("pg_catalog", "information_schema")


def list_text(entries: list[TocEntry]) -> str:
    """A `pg_restore --use-list` file selecting `entries`."""
    return "".join(e.line + "\n" for e in entries)


def grant_statements(script: str) -> list[str]:
    """The GRANT and REVOKE statements of a pg_restore SQL script."""
    return [line.strip() for line in script.splitlines()
            if line.startswith(("GRANT ", "REVOKE "))]
