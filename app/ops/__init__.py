"""Release-safety operations: backups, migrations and their guards. Library code: it never prints.

Imports: a module imports the modules of this package it uses at its top (they only go down the
layers: README, Layout). Third-party libraries (SQLAlchemy, Alembic, boto3, rich, zstandard,
pyrage, Mako) are imported inside the functions that use them, so that `invoke --list` and
`invoke status` load only what they use (`python -X importtime -m invoke status` shows it).
"""
