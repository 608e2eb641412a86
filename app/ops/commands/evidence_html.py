"""`invoke report --html FILE`: the report as one self-contained page, for an email attachment
or an air-gapped laptop, that prints on A4.

The page comes from a Mako template (Mako is installed with Alembic) with every value escaped;
it holds no script, and its styles are inline and its fonts the reader's own, so it references
nothing outside itself. The two charts (backup age over the period against the RPO line, drill
durations against the RTO line) are plain inline SVG drawn here, not pygal: pygal would be a new
dependency whose pages load a tooltip script from the web unless told not to, and two charts of
a line and some bars are a few dozen lines of SVG that print crisply and need no script.
"""
from __future__ import annotations

import contextlib
import os
from datetime import datetime
from html import escape
from pathlib import Path

from app.ops.errors import ConfigError

TEMPLATE = Path(__file__).parent.parent / "templates" / "evidence_report.html.mako"
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 640, 220, 56, 16, 14, 34


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _frame(y_max: float, y_label: str, line: float, line_label: str) -> list[str]:
    """Axes, a few y gridlines and the dashed target line, in a plot of height 0..y_max."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" class="axis"/>',
             f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" '
             f'y2="{HEIGHT - BOTTOM}" class="axis"/>']
    for i in range(5):
        value = y_max * i / 4
        y = HEIGHT - BOTTOM - plot_h * i / 4
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(hours(value))}</text>')
    y = HEIGHT - BOTTOM - plot_h * line / y_max
    parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                 'class="target"/>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{y - 4:.1f}" text-anchor="end" '
                 f'class="target-label">{escape(line_label)}</text>')
    parts.append(f'<text x="12" y="{TOP + plot_h / 2:.0f}" transform="rotate(-90 12 '
                 f'{TOP + plot_h / 2:.0f})" text-anchor="middle">{escape(y_label)}</text>')
    return parts


def _svg(parts: list[str], title: str) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(parts) + "</svg>")


def backup_age_chart(report: dict, rpo_seconds: float) -> str:
    """The age of the newest verified backup over the period: it rises, drops to zero at each
    backup, and should stay under the RPO line."""
    start, end = _time(report["period"]["from"]), _time(report["period"]["to"])
    points = []
    for s in report["rpo_stretches"]:
        a, b = max(_time(s["from"]), start), _time(s["to"])
        base = _time(s["from"])
        points += [(a, (a - base).total_seconds()), (b, (b - base).total_seconds())]
    span = max((end - start).total_seconds(), 1.0)
    y_max = max([rpo_seconds * 1.2] + [age * 1.05 for _, age in points])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    xy = " ".join(f"{LEFT + plot_w * (t - start).total_seconds() / span:.1f},"
                  f"{HEIGHT - BOTTOM - plot_h * age / y_max:.1f}" for t, age in points)
    parts = _frame(y_max, "backup age", rpo_seconds, f"RPO target {hours(rpo_seconds)}")
    parts.append(f'<polyline points="{xy}" class="series"/>')
    for x, text in ((LEFT, report["period"]["from"][:10]),
                    (WIDTH - RIGHT, report["period"]["to"][:10])):
        anchor = "start" if x == LEFT else "end"
        parts.append(f'<text x="{x}" y="{HEIGHT - 12}" text-anchor="{anchor}">'
                     f'{escape(text)}</text>')
    return _svg(parts, "Backup age over the period against the RPO target")


def drill_chart(report: dict, rto_seconds: float) -> str:
    """One bar per drill, oldest first, against the RTO line; a failed drill is hatched grey."""
    drills = sorted(report["drills"], key=lambda d: d["at"])
    y_max = max([rto_seconds * 1.2] + [d["rto_seconds"] * 1.05 for d in drills])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(y_max, "drill time", rto_seconds, f"RTO target {hours(rto_seconds)}")
    slot = plot_w / max(len(drills), 1)
    for i, d in enumerate(drills):
        h = plot_h * d["rto_seconds"] / y_max
        x = LEFT + slot * i + slot * 0.15
        kind = "bar" if d["outcome"] == "succeeded" else "bar failed"
        parts.append(f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{max(h, 1):.1f}" class="{kind}"><title>{escape(d["kind"])} '
                     f'{escape(d["at"])}: {escape(hours(d["rto_seconds"]))}</title></rect>')
        if len(drills) <= 16:
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - 12}" '
                         f'text-anchor="middle">{escape(d["kind"])}</text>')
    if not drills:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no drill '
                     'in the period</text>')
    return _svg(parts, "Drill durations against the RTO target")


def render(report: dict) -> str:
    from mako.template import Template

    targets = {t["name"]: t for t in report["targets"]}
    template = Template(filename=str(TEMPLATE), default_filters=["h"],
                        strict_undefined=True)
    return template.render(
        report=report, targets=targets, hours=hours,
        backup_chart=backup_age_chart(report, targets["rpo"]["target_seconds"]),
        drill_chart=drill_chart(report, targets["rto"]["target_seconds"]))


def write_html(report: dict, path: str) -> Path:
    """Written to a temporary name beside FILE and renamed, so a reader never sees half."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_text(render(report), encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(f"the report could not be written to {path}: "
                          f"{exc.strerror or exc}: give a FILE in a folder you may write")
    return target
