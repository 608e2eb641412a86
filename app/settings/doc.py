"""docs/settings.md, generated from the table of settings (app/settings/table.py).

    python -m app.settings.doc > docs/settings.md

tests/settings/test_settings_table.py fails when the file is not what this prints.
"""
from __future__ import annotations

import sys

from app.settings.table import LIBRARY_PREFIXES_DOC, TABLE, Setting

COMMAND = "python -m app.settings.doc > docs/settings.md"

INTRO = f"""# Settings

<!-- Generated from app/settings/table.py by `{COMMAND}`: edit the table, not this file. -->

Every setting the tool reads, declared once in `app/settings/table.py`. Settings are read,
highest first, from the process environment, `.env.NAME` (for `--env NAME`), then `.env`; an
empty value means unset. A value is checked when a step first needs it: a malformed one stops
that step with exit 2 and a message naming the setting. `.env.example` shows each one.

A key in a `.env` or `.env.NAME` file that is no setting below is named by every task, on
stderr, as `WARNING: KEY: not a setting; did you mean NAME?` (the closest declared name, when
one is close), and by `invoke check` as a WARNING (exit 1). Not checked: the process
environment (it holds everything), and the variables of the libraries: {LIBRARY_PREFIXES_DOC}.

Types: `bool` is true for `1`, `true`, `yes` or `on` (any case), else false; `duration` is a
whole number and a unit, the units each setting's examples show; `seconds` is a number of
seconds (a trailing `s` allowed); `list` is comma-separated; `command` is split into words like
a shell would, never run through one; `path` is relative to the project root where its meaning
says so. A `secret` is never shown: not by status, check, messages, manifests or the audit trail.
"""


def default_cell(setting: Setting) -> str:
    if setting.default_doc:
        return setting.default_doc
    return f"`{setting.default}`" if setting.default is not None else ""


def render() -> str:
    lines = [INTRO]
    group = None
    for setting in TABLE:
        if setting.group != group:
            group = setting.group
            lines += [f"## {group}", "", "| setting | type | default | secret | meaning |",
                      "|---|---|---|---|---|"]
        example = getattr(setting.parse, "example", None)
        kind = f"{setting.kind} (e.g. {example})" if example else setting.kind
        cells = [f"`{setting.name}`", kind, default_cell(setting),
                 "yes" if setting.secret else "", setting.doc]
        lines.append("| " + " | ".join(cells) + " |")
        if setting is TABLE[-1] or TABLE[TABLE.index(setting) + 1].group != group:
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
