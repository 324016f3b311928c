"""prepare-data on wide tables: time against reading the same CSV with pandas, in one run.

    .venv/bin/python benchmarks/prepare_wide.py [--rows 569] [--columns 1000 5000 10000]

For each width, a CSV of random floats (and a 0/1 target) is written once; then the anchor,
``pandas.read_csv`` of that file, and ``mlkube.data.prepare`` (read, validate, clean, split,
digest, write Parquet: everything but logging to MLflow) are timed in this process. The ratio
prepare / read is what mlkube adds to reading the data; it should stay
flat as the width grows (linear in cells, no per-column inserts).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    """Print one row per width."""
    import numpy as np
    import pandas as pd

    from mlkube import data
    from mlkube.config import DataConfig

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=569)
    parser.add_argument("--columns", type=int, nargs="+", default=[1000, 5000, 10000])
    args = parser.parse_args()
    print("| columns | cells | read_csv (anchor) | prepare + write | ratio | per M cells |"
          " PerformanceWarnings |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.columns:
            rng = np.random.default_rng(0)
            frame = pd.DataFrame(rng.normal(size=(args.rows, width)),
                                 columns=[f"f{i}" for i in range(width)])
            frame["target"] = rng.integers(0, 2, args.rows)
            path = Path(tmp) / f"wide-{width}.csv"
            frame.to_csv(path, index=False)
            anchor, _ = _timed(lambda p=path: pd.read_csv(p))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")

                def prepare(p: Path = path, out: Path = Path(tmp) / f"out-{width}") -> None:
                    data.prepare(str(p), DataConfig(), out)

                seconds, _ = _timed(prepare)
            slow = sum(issubclass(w.category, pd.errors.PerformanceWarning) for w in caught)
            cells = args.rows * (width + 1)
            print(f"| {width} | {cells:,} | {anchor:.2f} s | {seconds:.2f} s | "
                  f"{seconds / anchor:.2f}× | {seconds / cells * 1e6:.2f} s | {slow} |")
    from ratios import record  # benchmarks/ratios.py
    record("prepare_wide", f"prepare-data, {width:,} columns × {args.rows} rows / "
           "`pandas.read_csv`", seconds / anchor, "10,000 columns in seconds (< 30 s)",
           seconds < 30 if width >= 10_000 else None, f"{seconds:.1f} s vs {anchor:.2f} s",
           "benchmarks/prepare_wide.py")


if __name__ == "__main__":
    main()
