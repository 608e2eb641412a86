"""The pgBackRest method: `command` (running pgbackrest, a restore point, status), `archiver`
(the server's WAL archiver and `.ready` backlog), `verify`, `point_in_time` (a whole-cluster
recovery to a restore point), `describe` (its lines in the output); `method` is the
`PgBackRestMethod` object.
"""
