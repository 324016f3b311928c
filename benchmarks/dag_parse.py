"""Cold parse time of dags/ml_lifecycle.py against the same DAG of bare KubernetesPodOperators.

Each sample is a fresh Python process that imports Airflow (as a DAG processor has), then
times executing one DAG file: its imports (the cncf provider, kubernetes, mlkube) and the
operators' construction, as Airflow's DagBag does it. The two files alternate, samples are
repeated, and the medians are compared. Also reported: the whole process's wall time.

    .venv/bin/python benchmarks/dag_parse.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = {"mlkube": REPO / "dags" / "ml_lifecycle.py", "bare KPO": REPO / "benchmarks" / "bare_kpo_dag.py"}
HEAVY = ("mlflow", "torch", "optuna", "hera", "pandas", "sklearn")

PROBE = """
import json, sys, time
import airflow.sdk  # loaded in any DAG processor before DAG files are parsed
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(sys.argv[1])
parse = time.perf_counter() - start
assert not bag.import_errors, bag.import_errors
assert bag.dags, "no DAG found"
print(json.dumps({"parse": parse, "heavy": [m for m in sys.argv[2:] if m in sys.modules]}))
"""


def sample(path: Path, env: dict[str, str]) -> tuple[float, float, list[str]]:
    """One cold parse of ``path``: (file parse seconds, process wall seconds, heavy modules)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), *HEAVY], env=env,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["parse"], wall, data["heavy"]


def main() -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="mlkube-bench-airflow-")
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONDONTWRITEBYTECODE": "0"}
    for path in FILES.values():  # warm the bytecode caches and the OS page cache once
        sample(path, env)
    parse: dict[str, list[float]] = {k: [] for k in FILES}
    wall: dict[str, list[float]] = {k: [] for k in FILES}
    for _ in range(args.repeat):
        for name, path in FILES.items():
            seconds, process, heavy = sample(path, env)
            if heavy:
                raise SystemExit(f"{path} imported {heavy} at parse time")
            parse[name].append(seconds)
            wall[name].append(process)
    med = {k: statistics.median(v) for k, v in parse.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    print("| DAG file | median parse (ms) | min–max (ms) | median process wall (ms) |")
    print("|---|---|---|---|")
    for name, path in FILES.items():
        print(f"| {path.relative_to(REPO)} ({name}) | {med[name] * 1000:.0f} | "
              f"{min(parse[name]) * 1000:.0f}–{max(parse[name]) * 1000:.0f} | "
              f"{med_wall[name] * 1000:.0f} |")
    print(f"\nratio mlkube / bare KPO: parse {med['mlkube'] / med['bare KPO']:.2f}×, "
          f"process wall {med_wall['mlkube'] / med_wall['bare KPO']:.2f}× "
          f"({args.repeat} samples each, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs); "
          f"ML libraries imported at parse time: none")
    ratio = med["mlkube"] / med["bare KPO"]
    from ratios import record  # benchmarks/ratios.py
    record("dag_parse", "DAG parse: dags/ml_lifecycle.py / the same DAG of bare KPOs", ratio,
           "≤ 1.1×, no ML library imported", ratio <= 1.1,
           f"{med['mlkube'] * 1000:.0f} vs {med['bare KPO'] * 1000:.0f} ms, {args.repeat} samples",
           f"benchmarks/dag_parse.py --repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
