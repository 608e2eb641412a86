"""Part 1: `invoke backup` of the reference database against bare `pg_dump -Fc` (the
`pg_dump -Fc -Z0 | zstd -1` pipeline measured beside them for reference only)."""
from __future__ import annotations

from pathlib import Path

from .measure import fail_if, measure
from .postgres import MIB, database_size, ensure_reference_db, pg_env, warm_cache
from .project import Backup, invoke_backup, invoke_environment
from .report import (Check, biggest_kib, med, median_seconds, ratio_check, report_commands,
                     rss_check)
from .rounds import Case, Outcome, make_folder, mib, remove_folder, run_rounds

BACKUP_RATIO_TARGET = 0.40   # issue 17 (was 0.5)
BARE = "pg_dump -Fc (bare)"
INVOKE = "invoke backup"
PIPELINE = "pg_dump -Fc -Z0 | zstd -1"


def run(args, tmp: Path) -> list[Check]:
    ensure_reference_db(args)
    print(f"\n== Part 1: backup of {args.database} "
          f"({database_size(args, args.database) / MIB:.0f} MiB on disk), "
          f"{args.rounds} alternating rounds ==", flush=True)
    warm_cache(args)
    results = run_rounds(cases(args), args.rounds, tmp)
    report_commands(results, BARE, args.sample_interval)
    return checks(results)


def cases(args) -> list[Case]:
    def archive_written_by(name: str, argv_for) -> Case:
        def run_dump(scratch: Path) -> Outcome:
            archive = scratch / "archive.dump"
            run = measure(argv_for(archive), env=pg_env(args), sample_interval=args.sample_interval)
            fail_if(run, name)
            return Outcome(run, archive.stat().st_size)
        return Case(name, run_dump, setup=make_folder, cleanup=remove_folder)

    def bare(archive: Path) -> list[str]:
        return ["pg_dump", "-Fc", "-f", str(archive), args.database]

    def pipeline(archive: Path) -> list[str]:
        return ["bash", "-c",
                f"set -o pipefail; pg_dump -Fc -Z0 {args.database} | zstd -1 -q -o {archive}"]

    def backup(scratch: Path) -> Backup:
        return invoke_backup(args, invoke_environment(args, args.database, scratch),
                             sample_interval=args.sample_interval)

    def manifest_note(outcome: Backup) -> str:
        return (f", manifest duration {outcome.manifest['duration_seconds']:.1f} s, "
                f"raw {outcome.manifest['raw_size'] / MIB:.0f} MiB")

    return [archive_written_by(BARE, bare),
            Case(INVOKE, backup, setup=make_folder, cleanup=remove_folder, note=manifest_note),
            archive_written_by(PIPELINE, pipeline)]


def checks(results: dict[str, list[Outcome]]) -> list[Check]:
    invoke, bare = results[INVOKE], results[BARE]
    invoke_seconds, bare_seconds = median_seconds(invoke), median_seconds(bare)
    invoke_size, bare_size = max(o.size for o in invoke), min(o.size for o in bare)
    python_peak = max((kib for o in invoke for comm, kib in o.run.peak_by_name().items()
                       if comm.startswith("python")), default=0)
    durations = [o.manifest["duration_seconds"] for o in invoke]
    print(f"\n  invoke backup: median {invoke_seconds:.1f} s of which take_backup (dump + "
          f"read-back) {med(durations):.1f} s; Python process peak {mib(python_peak)}")
    return [
        ratio_check("backup time", invoke_seconds, bare_seconds, BACKUP_RATIO_TARGET,
                    ours_label="invoke ", base_label="bare pg_dump -Fc "),
        Check("archive size", f"invoke {invoke_size / MIB:.1f} MiB vs bare pg_dump -Fc "
              f"{bare_size / MIB:.1f} MiB", "no larger", invoke_size <= bare_size),
        rss_check("peak RSS", biggest_kib(invoke)),
    ]
