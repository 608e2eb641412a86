"""SQLite, the embedded default: `database` (`SqliteDatabase`: a file, its flock, copying a
file over it with SQLite's backup API) and `dumper` (the online backup API to a stream and
back). An adapter: it never imports the catalog, a method or a workflow.
"""
