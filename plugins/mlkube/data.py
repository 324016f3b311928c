"""Datasets: read, validate against the declared schema, clean, split, digest, write.

A prepared dataset is a directory holding ``train``, ``validation`` and ``test`` Parquet
files and ``schema.json``; its URI is the directory. The directory's name is the content
digest, and it appears only once complete (written aside, then renamed), so a later step never
reads a half-written dataset and preparing the same data twice writes nothing new. Input is
read in blocks, never whole (:mod:`mlkube.inputs`), so files larger than memory prepare in
bounded memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkube import inputs
from mlkube.config import DataConfig
from mlkube.errors import MlkubeError
from mlkube.inputs import local_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SPLITS = ("train", "validation", "test")
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"  # the train split's profile, see mlkube.profile


@dataclass(kw_only=True)
class DatasetInfo:
    """What ``schema.json`` records about a prepared dataset."""

    digest: str
    source: str
    target: str
    features: list[str]
    task: str
    classes: list[Any] | None
    rows: dict[str, int]
    dropped_rows: int


def demo_data(state_dir: Path) -> Path:
    """Export scikit-learn's bundled breast-cancer data set to CSV (no download)."""
    path = state_dir / "demo" / "breast_cancer.csv"
    if not path.exists():
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return path


SAMPLE_VALUES = 4_000_000  # train cells sampled for the quartiles and the profile's edges


@dataclass
class _Pass:
    """What the first pass learns: rows read, kept and with a target, the class labels seen."""

    read: int = 0
    with_target: int = 0
    kept: int = 0
    labels: set[str] = field(default_factory=set)


def _clean(batch: Any, features: list[str], cfg: DataConfig, uri: str, row0: int,
           seen: _Pass) -> Any:
    """One chunk validated and cleaned in Arrow (no pandas frame): features and target numeric,
    incomplete rows dropped. Features the reader parsed as float64 are used as they are; any
    other column goes through pandas' ``to_numeric`` as before."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: list[Any] = []
    target = batch.column(cfg.target)
    keep = target.is_valid()  # then null where a value is missing, false where not finite
    for column in features:
        values = batch.column(column)
        if values.type != pa.float64():
            values = pa.array(inputs.numeric(values.to_pandas(), row0, functools.partial(
                inputs.not_numeric, uri, column, cfg=cfg)).to_numpy(), pa.float64())
        columns.append(values)
        if cfg.types.get(column) == "int":
            whole = values.to_numpy(zero_copy_only=False)
            whole = whole[np.isfinite(whole)]
            if (whole != np.round(whole)).any():
                raise MlkubeError(f"{uri}: column {column!r} is declared int but has fractions")
        keep = pc.and_(keep, pc.is_finite(values))
    seen.read += batch.num_rows
    seen.with_target += len(target) - target.null_count
    if cfg.task == "regression":
        numbers = inputs.numeric(target.to_pandas(), row0, lambda v, r: MlkubeError(
            f"{uri}: regression target {cfg.target!r} holds {v!r} in row {r}; a regression "
            "target must be numeric (or use data.task: classification)")).to_numpy()
        target = pa.array(numbers, pa.float64())
        keep = pc.and_(keep, pc.is_finite(target))
    elif target.type != pa.string():
        target = target.cast(pa.string())
    kept = pa.record_batch([*columns, target], names=[*features, cfg.target])
    if keep.null_count or not pc.all(keep).as_py():
        kept = kept.filter(keep, null_selection_behavior="drop")
    seen.kept += kept.num_rows
    if cfg.task != "regression":
        seen.labels.update(kept.column(len(features)).unique().to_pylist())
    return kept


def _classes(labels: set[str]) -> tuple[list[Any], dict[str, int]]:
    """The class values (numbers where every label is one) and each label's index."""
    values: dict[str, Any] = {label: label for label in labels}
    for kind in (int, float):
        try:
            values = {label: kind(label) for label in labels}
        except ValueError:
            continue
        break
    classes = sorted(set(values.values()), key=str)
    index = {value: i for i, value in enumerate(classes)}
    return classes, {label: index[value] for label, value in values.items()}


def split_labels(n: int, cfg: DataConfig, uri: str) -> tuple[Any, Any]:
    """Each kept row's split (0 train, 1 validation, 2 test), deterministic from the seed, and
    the train rows in random order (a uniform sample is a prefix)."""
    import numpy as np

    n_test = int(round(n * cfg.split.test))
    n_val = int(round(n * cfg.split.validation))
    sizes = {"train": n - n_test - n_val, "validation": n_val, "test": n_test}
    empty = [name for name, size in sizes.items() if size <= 0]
    if empty:
        raise MlkubeError(
            f"{uri}: splitting {n} rows by validation={cfg.split.validation}, "
            f"test={cfg.split.test} leaves an empty {', '.join(empty)} set; use more rows or "
            "larger fractions"
        )
    order = np.random.default_rng(cfg.split.seed).permutation(n)
    labels = np.full(n, 2, dtype=np.int8)
    labels[order[:sizes["train"]]] = 0
    labels[order[sizes["train"]:sizes["train"] + n_val]] = 1
    return labels, order[:sizes["train"]]


class _Sample:
    """A uniform sample of at most ``size`` kept rows, gathered in the first pass, the same
    however the input is cut into blocks: each kept row gets a key, a hash (splitmix64) of
    its number and the split seed, and the rows with the ``size`` smallest keys are kept
    (bottom-k sampling). Rows are held while their key is below a bound, which halves whenever
    more than ``2 * size`` rows are held and at least ``size`` of them lie below the new bound:
    the ``size`` smallest keys are always held. After the split, its train rows are the train
    split's sample."""

    def __init__(self, size: int, seed: int):
        import numpy as np

        self.size = size
        self.salt = np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        self.shift = 0  # rows are held while key >> (64 - shift) == 0, i.e. key < 2**(64-shift)
        self.held = 0
        self.pieces: list[tuple[Any, Any, Any, Any]] = []  # keys, row numbers, values, targets

    def _keys(self, rows: Any) -> Any:
        import numpy as np

        with np.errstate(over="ignore"):
            z = rows.astype(np.uint64) + self.salt + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    def _below(self, keys: Any, shift: int) -> Any:
        import numpy as np

        return keys >> np.uint64(64 - shift) == 0 if shift else np.ones(len(keys), dtype=bool)

    def add(self, kept: Any, start: int) -> None:
        """Offer the rows of ``kept`` (Arrow; features, then the target), numbered from
        ``start`` among the kept rows."""
        import numpy as np
        import pyarrow as pa

        rows = np.arange(start, start + kept.num_rows, dtype=np.int64)
        keys = self._keys(rows)
        chosen = np.flatnonzero(self._below(keys, self.shift))
        if not len(chosen):
            return
        values = np.stack([c.to_numpy(zero_copy_only=False)[chosen] for c in kept.columns[:-1]])
        target = kept.column(kept.num_columns - 1).take(pa.array(chosen))
        self.pieces.append((keys[chosen], rows[chosen], values, target))
        self.held += len(chosen)
        while self.held > 2 * self.size and self.shift < 63:
            below = [self._below(piece[0], self.shift + 1) for piece in self.pieces]
            if sum(int(b.sum()) for b in below) < self.size:
                break
            self.shift += 1
            self.pieces = [(k[b], r[b], v[:, b], t.filter(pa.array(b)))
                           for (k, r, v, t), b in zip(self.pieces, below, strict=True)]
            self.held = sum(len(piece[0]) for piece in self.pieces)

    def train(self, labels: Any, index: dict[str, int]) -> Any:
        """The sampled train rows (features, then the target as class index or value), in row
        order; all sampled rows if none is a train row (a sample of a few rows only)."""
        import numpy as np
        import pyarrow as pa

        keys = np.concatenate([piece[0] for piece in self.pieces])
        numbers = np.concatenate([piece[1] for piece in self.pieces])
        best = (np.argpartition(keys, self.size - 1)[:self.size] if len(keys) > self.size
                else np.arange(len(keys)))
        best = best[np.argsort(numbers[best])]
        chosen = best[labels[numbers[best]] == 0]
        if not len(chosen):
            chosen = best
        values = np.concatenate([piece[2] for piece in self.pieces], axis=1)[:, chosen]
        target = pa.concat_arrays([piece[3] for piece in self.pieces]).take(pa.array(chosen))
        if index:
            target = np.array([index[label] for label in target.to_pylist()], dtype=np.float64)
        else:
            target = target.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.column_stack([values.T, target])


class _Statistics:
    """count, mean, std, min, quartiles and max of every column of the train split, streamed:
    exact moments (Chan's parallel update), min and max; quartiles of ``sample``, a uniform
    sample of the train rows (:class:`_Sample`: all of them when every kept row fits in it, as
    for the demo data). Also the profile's histogram: edges at the sample's quantiles, and
    exact counts of every train row on them."""

    def __init__(self, columns: list[str], sample: Any, classes: list[Any] | None):
        import numpy as np

        from mlkube import profile as profilemod

        self.columns = columns
        self.count = 0
        self.mean = np.zeros(len(columns))
        self.m2 = np.zeros(len(columns))
        self.min = np.full(len(columns), np.inf)
        self.max = np.full(len(columns), -np.inf)
        self.sample = sample
        self.edges = [profilemod.quantile_edges(sample[:, i]) for i in range(len(columns))]
        self.counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in self.edges]
        self.labels = classes
        if classes is not None:  # the target is a class index: counted per class instead
            self.edges[-1] = []
            self.counts[-1] = np.zeros(len(classes), dtype=np.int64)

    def add(self, columns: list[Any]) -> None:
        """Add train rows given as one 1-D array per column (the last may be a class index)."""
        import numpy as np

        n = len(columns[0])
        if n == 0:
            return
        total = self.count + n
        for i, values in enumerate(columns):
            mean = values.mean(dtype=np.float64)
            delta = mean - self.mean[i]
            centred = values - mean  # (not np.dot: BLAS threads cost 20x more than this)
            self.m2[i] += np.square(centred).sum() + delta ** 2 * self.count * n / total
            self.mean[i] += delta * n / total
            self.min[i] = min(self.min[i], values.min())
            self.max[i] = max(self.max[i], values.max())
            if self.edges[i]:
                self.counts[i] += _bin_counts(self.edges[i], values)
        self.count = total
        if self.labels is not None:
            self.counts[-1] += np.bincount(columns[-1], minlength=len(self.labels))

    def profile(self) -> dict[str, Any]:
        """The train split's profile (``profile.json``, see :mod:`mlkube.profile`): per feature
        quantile edges from the sample, exact bin counts, the exact mean and (sample) variance;
        the target's class counts or value histogram. ``missing`` is 0: rows missing a value
        are dropped before the split."""
        import numpy as np

        from mlkube import profile as profilemod

        var = self.m2 / (self.count - 1) if self.count > 1 else np.zeros(len(self.columns))
        features = {column: {"edges": self.edges[i],
                             "counts": [int(c) for c in self.counts[i]],
                             "missing": 0, "mean": float(self.mean[i]), "var": float(var[i])}
                    for i, column in enumerate(self.columns[:-1])}
        counts = [int(c) for c in self.counts[-1]]
        target: dict[str, Any] = (
            {"kind": "classes", "labels": list(self.labels), "counts": counts}
            if self.labels is not None else
            {"kind": "values", "edges": self.edges[-1], "counts": counts})
        return {"version": profilemod.PROFILE_VERSION, "rows": int(self.count),
                "features": features, "target": target}

    def table(self) -> dict[str, dict[str, float]]:
        import numpy as np

        quartiles = np.percentile(self.sample, [25, 50, 75], axis=0)
        std = np.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else np.full(len(self.m2), np.nan)
        rows = {"count": np.full(len(self.columns), float(self.count)), "mean": self.mean,
                "std": std, "min": self.min, "25%": quartiles[0], "50%": quartiles[1],
                "75%": quartiles[2], "max": self.max}
        return {column: {stat: float(row[i]) for stat, row in rows.items()}
                for i, column in enumerate(self.columns)}


def _bin_counts(edges: list[float], values: Any) -> Any:
    """:func:`mlkube.profile.bin_counts` of finite ``values``, by one comparison per inner edge
    (``x >= e``) rather than a binary search per value: the same counts, 14x less CPU."""
    import numpy as np

    above = [len(values), *(int(np.count_nonzero(values >= e)) for e in edges[1:-1]), 0]
    return np.array([a - b for a, b in zip(above, above[1:], strict=False)], dtype=np.int64)


def prepare(uri: str, cfg: DataConfig, root: Path) -> tuple[Path, DatasetInfo, dict[str, Any]]:
    """Read, validate, clean, split, digest and write the dataset under ``root/datasets``.

    Streamed, so memory does not grow with the file: a first pass reads the input in blocks
    (a CSV's blocks parsed by pyarrow on several threads), validates and cleans each in Arrow,
    stages the kept rows (Arrow IPC, beside the output; the split needs their count) and keeps
    a seeded uniform sample of them (:class:`_Sample`). A second pass routes each staged row to
    its split's Parquet file, hashes it (:func:`row_hashes`) and adds the train rows to the
    statistics and the profile's bin counts, on edges from the sample's train rows. Rows with a
    missing or non-finite (±inf) target or feature value are dropped and counted. The result
    is the dataset directory, its info and the train split's statistics. The directory appears
    only once complete; preparing the same data again reuses it. It also holds
    ``profile.json``, the train split's profile (histogram edges and counts, see
    :meth:`_Statistics.profile`); a dataset prepared before profiles existed gets one when it
    is prepared again.
    """
    path, kind, names, block = inputs.open_input(uri)
    features = inputs.feature_columns(names, cfg, uri)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=root))
    try:
        seen, staged, sample = _first_pass(path, kind, names, block, features, cfg, uri, tmp)
        classes, index = _classes(seen.labels) if cfg.task == "classification" else (None, {})
        header = {"target": cfg.target, "features": features, "task": cfg.task, "classes": classes}
        labels = split_labels(seen.kept, cfg, uri)[0]  # (not the train order: 8 bytes a row)
        profiled = _Statistics([*features, cfg.target], sample.train(labels, index), classes)
        hasher, rows = _second_pass(staged, labels, index, header, tmp, profiled)
        staged.unlink()
        stats = profiled.table()
        profile = json.dumps(profiled.profile(), indent=1)
        (tmp / PROFILE_FILE).write_text(profile)
        info = DatasetInfo(digest=hasher.hexdigest(), source=uri, target=cfg.target,
                           features=features, task=cfg.task, classes=classes, rows=rows,
                           dropped_rows=seen.read - seen.kept)
        (tmp / SCHEMA_FILE).write_text(json.dumps(asdict(info), indent=2, sort_keys=True))
        final = root / "datasets" / info.digest[:16]
        final.parent.mkdir(exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:  # prepared before, or another process finished the same dataset first
            if not (final / SCHEMA_FILE).is_file():
                raise
            if not (final / PROFILE_FILE).is_file():  # prepared before profiles existed
                from mlkube.result import atomic_write_text

                atomic_write_text(final / PROFILE_FILE, profile)
        return final, info, stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chunks(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """``batches`` gathered into record batches of at least ``rows`` rows (the last fewer):
    the CSV is parsed in small blocks, but per-chunk costs are paid per chunk."""
    import pyarrow as pa

    held: list[Any] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield held[0] if len(held) == 1 else pa.concat_batches(held)
            held, count = [], 0
    if held:
        yield held[0] if len(held) == 1 else pa.concat_batches(held)


def _first_pass(path: Path, kind: str, names: list[str], block: int, features: list[str],
                cfg: DataConfig, uri: str, tmp: Path) -> tuple[_Pass, Path, _Sample]:
    import pyarrow as pa

    batches = (inputs.csv_batches(path, uri, names, features, cfg, block) if kind == "csv"
               else inputs.parquet_batches(path, uri, features, cfg))
    staged = tmp / "staged.arrow"
    seen = _Pass()
    train = 1 - cfg.split.validation - cfg.split.test  # the train share of the rows
    sample = _Sample(int((max(1, SAMPLE_VALUES // (len(features) + 1)) + 2) / max(train, 0.01)) + 1,
                     cfg.split.seed)
    writer = None
    try:
        for chunk in _chunks(batches, inputs.batch_rows(features)):
            start = seen.kept
            kept = _clean(chunk, features, cfg, uri, seen.read + 2, seen)
            sample.add(kept, start)
            if writer is None:
                writer = pa.ipc.new_stream(pa.OSFile(str(staged), "wb"), kept.schema)
            writer.write_batch(kept)
    finally:
        if writer is not None:
            writer.close()
    if seen.read == 0:
        raise MlkubeError(f"input file {uri} has no data rows")
    if seen.with_target == 0:
        raise MlkubeError(f"{uri}: target column {cfg.target!r} has no values (all {seen.read} "
                          "rows are empty)")
    if seen.kept == 0:
        raise MlkubeError(f"{uri}: every row misses the target or a feature value (or holds "
                          "inf); nothing is left")
    if cfg.task == "classification" and len(seen.labels) < 2:
        raise MlkubeError(f"{uri}: classification target {cfg.target!r} has one class: "
                          f"{_classes(seen.labels)[0]}")
    return seen, staged, sample


def row_hashes(columns: list[Any]) -> Any:
    """Each row's 64-bit hash (uint64) over ``columns`` (1-D float64 or int64 arrays, floats
    finite): the value ``pandas.util.hash_pandas_object(frame, index=False)`` gives for the
    frame of these columns (pandas' splitmix-style mix of each value's bits, -0.0 as 0.0,
    combined column by column), computed in place, twice as fast. The digest is made of these,
    so it does not change with the pandas version (tests/test_data.py checks it against
    pandas)."""
    import numpy as np

    n = len(columns[0])
    out = np.full(n, 0x345678, dtype=np.uint64)
    h = np.empty(n, dtype=np.uint64)
    t = np.empty(n, dtype=np.uint64)
    mult = 1000003
    with np.errstate(over="ignore"):
        for i, values in enumerate(columns):
            np.copyto(h, values.view(np.uint64))
            if values.dtype.kind == "f":
                h[h == np.uint64(0x8000000000000000)] = 0  # -0.0
            np.right_shift(h, np.uint64(30), out=t)
            np.bitwise_xor(h, t, out=h)
            np.multiply(h, np.uint64(0xBF58476D1CE4E5B9), out=h)
            np.right_shift(h, np.uint64(27), out=t)
            np.bitwise_xor(h, t, out=h)
            np.multiply(h, np.uint64(0x94D049BB133111EB), out=h)
            np.right_shift(h, np.uint64(31), out=t)
            np.bitwise_xor(h, t, out=h)
            np.bitwise_xor(out, h, out=out)
            np.multiply(out, np.uint64(mult), out=out)
            mult = (mult + 82520 + 2 * (len(columns) - i)) & 0xFFFFFFFFFFFFFFFF
        out += np.uint64(97531)
    return out


def _second_pass(staged: Path, labels: Any, index: dict[str, int], header: dict[str, Any],
                 tmp: Path, stats: _Statistics) -> tuple[Any, dict[str, int]]:
    """Route the staged rows to their splits' Parquet files; hash them; add train to ``stats``.

    Each row's hash is :func:`row_hashes` of its values (float64 features, then the int64
    class index or float64 target): pandas' ``hash_pandas_object`` of the row, as when the
    splits were pandas frames, so the digest of the same data is the same. The Parquet files
    are written without dictionary encoding for the float columns (measured 4x faster to
    write, and no larger: their values rarely repeat). A thread hashes a chunk and writes its
    splits while this one gathers the next (pyarrow's writer and numpy release the GIL).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    target = header["target"]
    if index:
        keys = pa.array(list(index), pa.string())
        codes = np.array(list(index.values()), dtype=np.int64)
    schema = pa.schema([*((c, pa.float64()) for c in header["features"]),
                        (target, pa.int64() if index else pa.float64())])
    hashes: dict[str, list[Any]] = {name: [] for name in SPLITS}
    writers = {name: pq.ParquetWriter(tmp / f"{name}.parquet", schema,
                                      use_dictionary=[target] if index else False)
               for name in SPLITS}

    def write(columns: list[Any], part: Any, parts: dict[str, list[Any]]) -> None:
        every = row_hashes(columns)
        for i, name in enumerate(SPLITS):
            if name in parts:
                hashes[name].append(every[part == i])
                writers[name].write_table(pa.Table.from_arrays(parts[name], schema=schema))

    offset = 0
    pending: Future[None] | None = None
    try:
        with pa.OSFile(str(staged), "rb") as source, ThreadPoolExecutor(1) as pool:
            for batch in pa.ipc.open_stream(source):
                n = batch.num_rows
                columns = [c.to_numpy(zero_copy_only=False) for c in batch.columns[:-1]]
                if index:
                    columns.append(codes[pc.index_in(batch.column(target), value_set=keys)
                                         .to_numpy(zero_copy_only=False)])
                else:
                    columns.append(batch.column(target).to_numpy(zero_copy_only=False))
                part = labels[offset:offset + n]
                parts = _split(columns, part)
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, columns, part, parts)
                if "train" in parts:
                    stats.add(parts["train"])
                offset += n
            if pending is not None:
                pending.result()
    finally:
        for writer in writers.values():
            writer.close()
    hasher = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in SPLITS:
        hasher.update(name.encode())
        hasher.update(np.concatenate(hashes[name]).tobytes())
    return hasher, {name: int(sum(len(h) for h in hashes[name])) for name in SPLITS}


def _split(columns: list[Any], part: Any) -> dict[str, list[Any]]:
    """The rows of ``columns`` of each split (``part``: each row's split), by split name."""
    import numpy as np

    parts: dict[str, list[Any]] = {}
    for i, name in enumerate(SPLITS):
        rows = np.flatnonzero(part == i)  # (a take: faster than a boolean mask)
        if len(rows):
            parts[name] = [values.take(rows) for values in columns]
    return parts


def load_info(dataset_uri: str) -> DatasetInfo:
    """Read ``schema.json`` of a prepared dataset."""
    path = local_path(dataset_uri) / SCHEMA_FILE
    try:
        return DatasetInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise MlkubeError(
            f"dataset {dataset_uri} is not a prepared dataset (no {SCHEMA_FILE}); "
            "pass prepare-data's dataset_uri"
        ) from None


def load_arrays(dataset_uri: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and target of one split, copied column by column, a row group at a
    time, into arrays allocated once: no float64 or pandas copy of the whole split in memory."""
    import numpy as np
    import pyarrow.parquet as pq

    info = load_info(dataset_uri)
    source = pq.ParquetFile(local_path(dataset_uri) / f"{name}.parquet")
    rows = source.metadata.num_rows
    x = np.empty((rows, len(info.features)), dtype=np.float32)
    y = np.empty(rows, dtype=np.int64 if info.task == "classification" else np.float32)
    start = 0
    for group in range(source.metadata.num_row_groups):
        table = source.read_row_group(group, columns=[*info.features, info.target])
        end = start + table.num_rows
        for i, column in enumerate(table.columns[:-1]):
            x[start:end, i] = column.to_numpy()
        y[start:end] = table.columns[-1].to_numpy()
        start = end
    return x, y


def load_split(dataset_uri: str, name: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Features (float32), target and the feature frame of one split."""
    import numpy as np
    import pandas as pd

    info = load_info(dataset_uri)
    frame = pd.read_parquet(local_path(dataset_uri) / f"{name}.parquet")
    features = frame[info.features]
    target_dtype = np.int64 if info.task == "classification" else np.float32
    return (features.to_numpy(dtype=np.float32), frame[info.target].to_numpy(dtype=target_dtype),
            features)
