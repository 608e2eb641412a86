"""The benchmark's pieces: measure.py runs one command and measures it, rounds.py runs cases in
alternating rounds, report.py prints medians, ratios and the targets' checks; project.py drives
the project under test (`invoke` in a subprocess), postgres.py the server (psql); one module per
part of bench/benchmark.py."""
