"""prepare-data at scale: time and peak memory against reading the same CSV with pandas.

    .venv/bin/python benchmarks/prepare_scale.py [--sizes-gb 0.5 1 2 5] [--dir /tmp/mlkube-scale]

A CSV of mixed types is generated once at the largest size (20 float columns with ~1% missing
values, 8 integer columns, a 3-class text target; ~240 bytes a row), and the smaller sizes are
its leading rows. For each size, two fresh processes run in turn: the anchor,
``pandas.read_csv`` of the file, and ``mlkube.data.prepare`` (read, validate, clean, split,
digest, Parquet: the whole of the step but the MLflow logging). Each reports its wall time and
peak resident memory (``ru_maxrss``), and its CPU time (all its threads: prepare-data parses
on several), with the 1-minute load average when it started. Then a third process runs what the
train step does with the prepared data, ``mlkube.data.load_arrays`` of the train and validation
splits, for its peak memory. Results go to stdout and ``benchmarks/results/prepare_scale.json``.
Target (issue 18, item 4): at 5 GB, prepare-data within 1.5x the anchor's time, peak RSS <= 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROW_BYTES_GUESS = 240
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
what, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
start, cpu = time.perf_counter(), time.process_time()
extra = {}
if what == "pandas":
    import pandas as pd
    frame = pd.read_csv(path)
    extra["rows"] = len(frame)
elif what == "mlkube":
    from mlkube import data
    from mlkube.config import DataConfig
    directory, info, _ = data.prepare(path, DataConfig(target="label"), Path(out))
    extra = {"rows": sum(info.rows.values()), "dropped": info.dropped_rows,
             "digest": info.digest[:16], "dataset": str(directory)}
else:
    from mlkube import data
    x, y = data.load_arrays(path, "train")
    xv, yv = data.load_arrays(path, "validation")
    extra = {"train_bytes": x.nbytes + y.nbytes, "validation_bytes": xv.nbytes + yv.nbytes}
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": rss} | extra))
"""


def generate(path: Path, size: int) -> None:
    """Write a mixed-type CSV of about ``size`` bytes, in blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    rows = 200_000
    with pacsv.CSVWriter(path, _schema()) as writer:
        while path.stat().st_size < size:
            floats = rng.normal(size=(20, rows)).round(6)
            columns = [pa.array(c, mask=rng.random(rows) < 0.01) for c in floats]
            columns += [pa.array(rng.integers(0, 1000, rows)) for _ in range(8)]
            columns.append(pa.array(rng.choice(["red", "green", "blue"], rows)))
            writer.write_table(pa.Table.from_arrays(columns, schema=_schema()))


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.schema([(f"x{i}", pa.float64()) for i in range(20)]
                     + [(f"n{i}", pa.int64()) for i in range(8)] + [("label", pa.string())])


def prefix(source: Path, path: Path, size: int) -> None:
    """The header and whole rows of ``source`` up to about ``size`` bytes."""
    with source.open("rb") as src, path.open("wb") as dst:
        remaining = size
        while remaining > 0:
            block = src.read(min(remaining, 64 << 20))
            dst.write(block)
            remaining -= len(block)
        dst.write(src.readline())  # finish the row


def child(what: str, path: Path, out: Path) -> dict[str, object]:
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(path), str(out)],
                          check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1])) | {"load": load}


def main() -> None:
    """Generate, measure, print one row per size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 1, 2, 5])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mlkube-scale"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(gb * 1e9) for gb in args.sizes_gb)
    largest = args.dir / f"mixed-{sizes[-1]}.csv"
    if not largest.exists() or largest.stat().st_size < sizes[-1]:
        started = time.perf_counter()
        generate(largest, sizes[-1])
        print(f"generated {largest} ({largest.stat().st_size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    results = []
    print("| size | rows | read_csv (anchor) | its peak RSS | prepare | its peak RSS | time ratio"
          " | CPU time ratio | s per GB | train data peak RSS | load (anchor, prepare) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        path = largest if size == sizes[-1] else args.dir / f"mixed-{size}.csv"
        if not path.exists():
            prefix(largest, path, size)
        gb = path.stat().st_size / 1e9
        out = args.dir / f"out-{size}"
        anchor = child("pandas", path, out)
        ours = child("mlkube", path, out)
        train = child("train", Path(str(ours["dataset"])), out)
        row = {"gb": round(gb, 3), "anchor": anchor, "prepare": ours, "train_data": train}
        results.append(row)
        print(f"| {gb:.2f} GB | {ours['rows']:,} | {anchor['seconds']:.1f} s | "
              f"{anchor['peak_rss'] / 2**30:.2f} GiB | {ours['seconds']:.1f} s | "
              f"{ours['peak_rss'] / 2**30:.2f} GiB | {ours['seconds'] / anchor['seconds']:.2f}× | "
              f"{ours['cpu_seconds'] / anchor['cpu_seconds']:.2f}× | "
              f"{ours['seconds'] / gb:.1f} | {train['peak_rss'] / 2**30:.2f} GiB | "
              f"{anchor['load']:.1f}, {ours['load']:.1f} |", flush=True)
    target = Path(__file__).parent / "results" / "prepare_scale.json"
    target.write_text(json.dumps(results, indent=1) + "\n")
    last, per_gb = results[-1], [r["prepare"]["seconds"] / r["gb"] for r in results]
    peak = last["prepare"]["peak_rss"] / 2**30
    ratio = last["prepare"]["seconds"] / last["anchor"]["seconds"]
    from ratios import record  # benchmarks/ratios.py
    record("prepare_scale", f"prepare-data, {last['gb']:.1f} GB CSV: time / "
           "`pandas.read_csv`'s", ratio, "≤ 1.5× at 5 GB, peak RSS ≤ 1 GiB",
           ratio <= 1.5 and peak <= 1 if last["gb"] >= 4.5 else None,
           f"{peak:.2f} GiB ({last['prepare']['peak_rss'] / last['anchor']['peak_rss']:.3f}× "
           f"pandas'); {last['prepare']['seconds']:.0f} vs {last['anchor']['seconds']:.0f} s; "
           f"CPU time {last['prepare']['cpu_seconds'] / last['anchor']['cpu_seconds']:.2f}×; "
           f"load {last['anchor']['load']:.1f}/{last['prepare']['load']:.1f}; "
           f"{min(per_gb):.0f}–{max(per_gb):.0f} s/GB over {len(results)} sizes",
           "benchmarks/prepare_scale.py --sizes-gb " + " ".join(str(g) for g in args.sizes_gb))


if __name__ == "__main__":
    main()
