"""The dump method: `take` (dumper -> zstd -> [age] -> SHA-256 -> store, read back on the way),
`verify`, `readback`, `estimate` (the size of the next dump), `describe` (its lines in the
output), and the restore's sequence per kind of database: `postgres_swap` (a copy built beside
the live database, then a swap of names) and `sqlite_copy` (a verified copy over the file).
`method` is the `DumpMethod` object that chooses among them.
"""
