"""Every benchmark's headline ratio against its anchor, with its target, in one table.

    .venv/bin/python benchmarks/ratios.py

Each benchmark script records its ratios when it finishes (``record``) in
``benchmarks/results/ratios.json``, one entry a measurement, replaced by the next run of the
same script; ``make bench`` runs them all and ends by printing this table. A ratio is the
measured figure over its anchor from the same run; "met" says whether the target held in that
run (blank where the figure has no target).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "ratios.json"


def record(key: str, measured: str, ratio: float, target: str, met: bool | None,
           detail: str = "", command: str = "") -> None:
    """Keep one measurement (``key`` names it; a new run of it replaces the old one)."""
    RESULTS.parent.mkdir(exist_ok=True)
    entries: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entries[key] = {"measured": measured, "ratio": round(ratio, 3), "target": target,
                    "met": met, "detail": detail, "command": command,
                    "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    RESULTS.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")


def table(entries: dict[str, Any]) -> str:
    """The Markdown table of ``entries``."""
    marks = {True: "yes", False: "**no**", None: ""}
    lines = ["| measurement | ratio | target | met | detail | date (CPUs) |",
             "|---|---|---|---|---|---|"]
    for entry in entries.values():
        lines.append(f"| {entry['measured']} | {entry['ratio']:g}× | {entry['target']} | "
                     f"{marks[entry['met']]} | {entry['detail']} | "
                     f"{entry['date']} ({entry['cpus']}) |")
    return "\n".join(lines)


def main() -> None:
    if not RESULTS.exists():
        raise SystemExit(f"no {RESULTS}: run the benchmarks first (make bench)")
    print(table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
