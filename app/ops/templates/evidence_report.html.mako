## The page of `invoke report --html` (app/ops/commands/evidence_html.py): self-contained, no script,
## no external style or font; every value is escaped (default filter h), the SVG charts are
## drawn in Python and passed through with | n.
<%
    trail = report["trail"]
    def verdict(t):
        return "met" if t["met"] else "MISSED"
    names = {"rpo": "Recovery point (RPO)", "rto": "Recovery time (RTO)",
             "drill_age": "Newest restore drill"}
%>\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Backup and recovery evidence: env ${report["env"]}</title>
<style>
  @page { size: A4; margin: 14mm; }
  body { font-family: system-ui, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 10pt;
         color: #111; background: #fff; max-width: 182mm; margin: 0 auto; padding: 8mm 0; }
  h1 { font-size: 16pt; margin: 0 0 2mm; }
  h2 { font-size: 12pt; margin: 7mm 0 2mm; border-bottom: 1px solid #999; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 1mm 2mm; border-bottom: 1px solid #ddd;
           vertical-align: top; overflow-wrap: break-word; }
  th { background: #eee; }
  tr { page-break-inside: avoid; }
  .met { color: #0a6b2d; font-weight: bold; }
  .missed { color: #b00020; font-weight: bold; }
  .small { font-size: 8.5pt; color: #444; }
  svg { width: 100%; height: auto; page-break-inside: avoid; font-size: 10px; }
  svg .axis { stroke: #333; stroke-width: 1; }
  svg .target { stroke: #b00020; stroke-width: 1.5; stroke-dasharray: 6 4; }
  svg .target-label { fill: #b00020; }
  svg .series { fill: none; stroke: #1f5fa8; stroke-width: 2; }
  svg .bar { fill: #1f5fa8; }
  svg .bar.failed { fill: #999; }
</style>
</head>
<body>
<h1>Backup and recovery evidence: env ${report["env"]}</h1>
<p>Period ${report["period"]["from"]} to ${report["period"]["to"]}.
Made by <code>invoke report</code> from the tool's own records: backup manifests, drill
records and the audit trail.</p>

<h2>Verdict</h2>
<table>
<tr><th>target</th><th>objective</th><th>achieved</th><th>verdict</th><th>evidence</th></tr>
% for t in report["targets"]:
<tr><td>${names.get(t["name"], t["name"])}</td><td>${hours(t["target_seconds"])}</td>
<td>${hours(t["achieved_seconds"])}</td>
<td class="${'met' if t['met'] else 'missed'}">${verdict(t)}</td><td>${t["evidence"]}</td></tr>
% endfor
<tr><td>Audit trail</td><td>intact</td><td>${trail["events"]} events</td>
<td class="${'met' if trail['intact'] else 'missed'}">${"intact" if trail["intact"] else "BROKEN"}</td>
<td>${len(trail["problems"])} problem(s), ${trail["unchained"]} event(s) from before the chain</td></tr>
</table>

<h2>Backup age against the RPO target</h2>
${backup_chart | n}

<h2>Restore drills against the RTO target</h2>
${drill_chart | n}

<h2>Backups (${len(report["backups"])})</h2>
<table>
<tr><th>id</th><th>taken</th><th>reason</th><th>size</th><th>encryption</th><th>verified</th></tr>
% for b in report["backups"]:
<tr><td>${b["id"]}</td><td>${b["created_at"]}</td><td>${b["reason"]}</td><td>${b["size"]}</td>
<td>${b["encryption"]}</td>
<td>${("yes, " + (b["verified_at"] or "")) if b["verified"] else ("NO: " + (b["verify_error"] or ""))}${"" if b["artifact"] == "present" else ", artifact " + b["artifact"]}</td></tr>
% endfor
</table>

<h2>Restore drills (${len(report["drills"])})</h2>
<table>
<tr><th>kind</th><th>at</th><th>backup</th><th>time</th><th>outcome</th><th>checks</th></tr>
% for d in report["drills"]:
<tr><td>${d["kind"]}</td><td>${d["at"]}</td><td>${d["backup"] or "-"}</td>
<td>${hours(d["rto_seconds"])} (whole ${hours(d["seconds"])})</td><td>${d["outcome"]}</td>
<td>${"; ".join(c["name"] + (": ok" if c["ok"] else ": FAILED") for c in d["checks"])}</td></tr>
% endfor
</table>

<h2>Changes (${len(report["changes"])})</h2>
<table>
<tr><th>when</th><th>action</th><th>outcome</th><th>from &rarr; to</th><th>backup</th><th>who</th><th>break glass</th></tr>
% for e in report["changes"]:
<tr><td>${e.get("at", "?")}</td><td>${e.get("action", "?")}</td><td>${e.get("outcome", "?")}</td>
<td>${e.get("from_revision") or "base"} &rarr; ${e.get("to_revision") or "base"}</td>
<td>${e.get("backup_id") or "-"}</td><td>${e.get("user", "?")}@${e.get("host", "?")}</td>
<td>${e.get("break_glass") or ""}</td></tr>
% endfor
</table>

<h2>Audit trail integrity</h2>
<p>${"Intact" if trail["intact"] else "NOT intact"}: ${trail["events"]} events, each naming the
SHA-256 of the one before it.
% if trail["newest"]:
Newest event seen: ${trail["newest"]["name"]} (sha256 ${trail["newest"]["sha256"]}).
% endif
</p>
% if trail["problems"]:
<table><tr><th>problem</th><th>detail</th></tr>
% for p in trail["problems"]:
<tr><td>${p["kind"]}</td><td>${p["detail"]}</td></tr>
% endfor
</table>
% endif
<p class="small">${trail["note"]}. This report proves what the tool did and recorded; it does
not prove what was done by hand, outside the tool.</p>
</body>
</html>
