"""app.ops.databases.postgres.server_settings: where a server setting came from, worded for a DBA."""
from __future__ import annotations

import pytest

from app.ops.databases.postgres.server_settings import describe


@pytest.mark.parametrize("source,said", [
    ("user", "statement_timeout = 1s set for role api (ALTER ROLE api SET statement_timeout)"),
    ("database", "statement_timeout = 1s set for database mida (ALTER DATABASE mida SET "
                 "statement_timeout)"),
    ("database user", "statement_timeout = 1s set for role api in database mida (ALTER ROLE api "
                      "IN DATABASE mida SET statement_timeout)"),
    ("configuration file", "statement_timeout = 1s set in the server's configuration "
                           "(postgresql.conf)"),
    ("client", "statement_timeout = 1s set by the connection's options (the database URL's "
               "`options`)"),
    ("override", "statement_timeout = 1s from override"),
])
def test_each_source_names_where_the_setting_was_made(source, said):
    assert describe(source, name="statement_timeout", value="1s", role="api",
                    database="mida") == said


def test_a_visible_configuration_file_is_named_with_its_line():
    assert describe("configuration file", name="statement_timeout", value="30s", role="api",
                    database="mida", sourcefile="/etc/postgresql/15/main/conf.d/api.conf",
                    sourceline=3) == ("statement_timeout = 30s set in the server's "
                                      "configuration (/etc/postgresql/15/main/conf.d/api.conf:3)")
