"""Part 2: the start-up cost of `invoke status` and `invoke --list` on the SQLite default, in a
fresh copy of the project, each against importing what it cannot do without."""
from __future__ import annotations

import sys
from pathlib import Path

from .measure import fail_if, measure
from .project import copy_project, invoke, project_environment
from .report import Check, med
from .rounds import Case, Outcome, run_rounds

STARTUP_RATIO_TARGET = 1.5
# (invoke's words, the baseline's name, the baseline's Python code)
PAIRS = ((("status",), 'python -c "import invoke, sqlalchemy, alembic.command"',
          "import invoke, sqlalchemy, alembic.command"),
         (("--list",), 'python -c "import invoke"', "import invoke"))


def run(args, tmp: Path) -> list[Check]:
    project = copy_project(args.repo, tmp / "project")
    env = project_environment()
    print(f"\n== Part 2: start-up on the SQLite default ({project}), "
          f"{args.status_runs} alternating runs ==", flush=True)
    run = measure(invoke("migrate"), cwd=project, env=env)
    fail_if(run, "invoke migrate (set-up)")
    if not (project / "dev.db").is_file():
        raise SystemExit("invoke migrate did not create dev.db in the copy")

    def timed(name: str, argv: list[str]) -> Case:
        def run_once(scratch: Path) -> Outcome:
            run = measure(argv, cwd=project, env=env)   # stdout and stderr piped, as cron would
            fail_if(run, name)
            return Outcome(run)
        return Case(name, run_once)

    cases = []
    for words, base_name, code in PAIRS:
        cases += [timed(base_name, [sys.executable, "-c", code]),
                  timed("invoke " + " ".join(words), invoke(*words))]
    # Two warm-up rounds: they write the copy's .pyc files and fill the page cache.
    run_rounds(cases, 2, tmp, show=False)
    results = run_rounds(cases, args.status_runs, tmp, show=False)
    return report(results)


def report(results: dict[str, list[Outcome]]) -> list[Check]:
    checks = []
    print(f"\n{'command':<58} {'median ms':>10} {'min ms':>8} {'ratio':>7}")
    for words, base_name, _ in PAIRS:
        name = "invoke " + " ".join(words)
        ours = [o.run.seconds for o in results[name]]
        base = [o.run.seconds for o in results[base_name]]
        ratio = med(ours) / med(base)
        print(f"{base_name:<58} {med(base) * 1000:10.0f} {min(base) * 1000:8.0f} {'1.00x':>7}")
        print(f"{'python -m ' + name:<58} {med(ours) * 1000:10.0f} {min(ours) * 1000:8.0f} "
              f"{ratio:6.2f}x")
        checks.append(Check(name, f"{med(ours) * 1000:.0f} ms / {med(base) * 1000:.0f} ms = "
                                  f"{ratio:.3f}x", f"<= {STARTUP_RATIO_TARGET}x",
                            ratio <= STARTUP_RATIO_TARGET))
    return checks
