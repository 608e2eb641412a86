"""The roles that own objects in a database, and whether a role may give objects to them: what a restore by the owner role (not a superuser) needs in
order to bring every object's owner back (toc.py plans the passes; this decides, before any
work, whether they can succeed).

A dump reads the owners in its own snapshot (`owners_in`), and the manifest records them, so a
restore refuses a backup it cannot restore before it verifies or extracts a byte of it, and
`invoke check` warns about one. The same refusal is made from the archive's own table of
contents when pg_restore lists it (for a backup recorded without its owners).
"""
from __future__ import annotations

# Every object pg_dump gives an owner (`ALTER ... OWNER TO`), outside the system's schemas;
# an extension's members are the extension's (pg_dump lists only the extension), and an object
# another one holds internally (an array type, a row type) comes with its holder.
OWNERS_SQL = """
WITH user_namespaces AS (
    SELECT oid, nspowner FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg!_%' ESCAPE '!'
), members AS (
    SELECT objid FROM pg_depend WHERE deptype IN ('e', 'i')
), owned(owner) AS (
    -- `public` owned by the bootstrap superuser is PostgreSQL 14's default (and a pg_upgrade'd
    -- cluster's): pg_dump gives it no owner there; any other owner of it is dumped.
    SELECT nspowner FROM user_namespaces WHERE oid NOT IN (SELECT objid FROM members)
        AND NOT (oid = 'public'::regnamespace AND nspowner = 10)
    UNION SELECT relowner FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_namespaces)
        AND oid NOT IN (SELECT objid FROM members)
    UNION SELECT proowner FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_namespaces)
        AND oid NOT IN (SELECT objid FROM members)
    UNION SELECT typowner FROM pg_type WHERE typnamespace IN (SELECT oid FROM user_namespaces)
        AND oid NOT IN (SELECT objid FROM members)
    UNION SELECT lomowner FROM pg_largeobject_metadata
)
SELECT DISTINCT r.rolname FROM owned JOIN pg_roles r ON r.oid = owned.owner
WHERE r.rolname <> 'pg_database_owner' ORDER BY 1
"""

MEMBERSHIP_SQL = ("SELECT o.name, r.oid IS NOT NULL, r.oid IS NOT NULL "
                  "AND pg_has_role(current_user, r.oid, 'MEMBER') "
                  "FROM unnest(CAST(:names AS text[])) o(name) "
                  "LEFT JOIN pg_roles r ON r.rolname = o.name ORDER BY 1")


def owners_in(conn) -> list[str]:
    """The roles that own objects in conn's database, in conn's snapshot (the dumping role
    among them: another role may restore the backup)."""
    from sqlalchemy import text
    return list(conn.execute(text(OWNERS_SQL)).scalars())


def owners_refusal(conn, owners) -> str | None:
    """Why conn's role may not give objects to every role of `owners` (a role missing on this
    server, or one it is no member of), with the grants that would let it; None if it may."""
    from sqlalchemy import text

    user = conn.execute(text("SELECT current_user")).scalar()
    owners = sorted(set(owners or ()) - {user})  # its own objects any role may create
    if not owners:
        return None
    rows = conn.execute(text(MEMBERSHIP_SQL), {"names": owners}).all()
    missing = [name for name, exists, _ in rows if not exists]
    barred = [name for name, exists, member in rows if exists and not member]
    if not (missing or barred):
        return None
    fixes = [f"CREATE ROLE {ident(name)}; GRANT {ident(name)} TO {ident(user)}"
             for name in missing] + [f"GRANT {ident(name)} TO {ident(user)}" for name in barred]
    return (f"the backup holds objects owned by {', '.join(sorted(owners))}, and {user} may "
            f"not give objects to {', '.join(missing + barred)} "
            f"({'missing on this server' if missing else 'not a member'}): as a superuser, "
            f"{'; '.join(fixes)}")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
