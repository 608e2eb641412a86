"""The watch after a change: a baseline of normal traffic before it, then the same signals
sampled after it, compared, and one verdict (`invoke watch`, `--watch` on migrate and rollback).

config.py reads the WATCH_* settings; facts.py holds what one sample read; sampler.py reads it
(PostgreSQL, read-only, one connection) and probes the health URL; baseline.py summarises the
samples before a change and keeps them in the backup store; verdict.py compares (pure
functions); session.py runs the loops and audits the outcome. Nothing here ever writes to the
database, and nothing here rolls back: the person or the pipeline decides.
"""
