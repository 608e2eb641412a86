"""PostgreSQL: `database` (`PostgresDatabase`, what the rest of the app holds), `server` (a
database's properties, creating one like it, sessions, the swap), `dumper` (pg_dump and
pg_restore) with `toc` (the archive's table of contents), `row_counts`, `locks` (room in the
server's lock table), `owners` (the other roles a backup's objects belong to),
`maintenance` (the maintenance database),
`server_settings`, `sequences`.
An adapter: it does steps (create, load, swap, drop) and never imports the catalog, a method
or a workflow.
"""
