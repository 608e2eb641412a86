"""Dumpers: one per kind of database. Each dumps the database to a byte stream and reads such a
stream back to prove it whole; none knows where the bytes are stored. The database's class
(app/ops/databases/) makes the one it needs.
"""
