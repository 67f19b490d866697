"""``python -m bench``: run every benchmark and rewrite docs/benchmarks.md."""

from __future__ import annotations

import os
import sys

from bench import http_load, import_rate, search_load, security_cost
from bench.common import ROOT, Report


def main() -> None:
    """Run the benchmarks named on the command line (default: all)."""
    wanted = set(sys.argv[1:]) or {"import", "http", "search", "security"}
    report = Report()
    if "import" in wanted:
        import_rate.run(report, patients=int(os.environ.get("SALUS_BENCH_PATIENTS", "1000")))
    if "http" in wanted:
        http_load.run(report)
    if "security" in wanted:
        security_cost.run(report)
    if "search" in wanted:
        search_load.run(report, patients=int(os.environ.get("SALUS_BENCH_SEARCH_PATIENTS", "10000")))
    report.write(ROOT / "docs" / "benchmarks.md")
    print(f"\nwrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
