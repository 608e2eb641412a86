"""Release-safety operations: backups, migrations and their guards. Library code: it never prints."""
