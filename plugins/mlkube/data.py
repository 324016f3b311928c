"""Datasets: read, validate against the declared schema, clean, split, digest, write.

A prepared dataset is a directory holding ``train``, ``validation`` and ``test`` Parquet
files and ``schema.json``; its URI is the directory. The directory's name is the content
digest, and it appears only once complete (written aside, then renamed), so a later step never
reads a half-written dataset and preparing the same data twice writes nothing new. Input is
read in blocks, never whole, so files larger than memory prepare in bounded memory.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkube.config import DataConfig
from mlkube.errors import MlkubeError, first_line

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


def local_path(uri: str) -> Path:
    """The filesystem path of a ``file://`` URI or plain path (mounted volumes are paths)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise MlkubeError(
            f"{uri}: the {scheme}:// scheme is not readable here; mount the bucket as a volume "
            "or copy the file and pass its path"
        )
    return Path(uri)


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


BLOCK_BYTES = 16 << 20  # CSV text parsed at a time, at least ...
MIN_BLOCK_ROWS = 1024  # ... rows a block (wide tables: per-block costs are per column) ...
MAX_BLOCK_BYTES = 256 << 20  # ... but never more than this
BATCH_VALUES = 4_000_000  # cells per batch read from Parquet (at least MIN_BLOCK_ROWS rows)
SAMPLE_VALUES = 4_000_000  # train cells kept for the quartiles of the statistics
# pandas' default missing-value markers, so a CSV means what it meant when read with pandas
NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _open(uri: str) -> tuple[Path, str, list[str], int]:
    """The input's path, its format, its column names and the bytes of a CSV block (of whole
    rows); one-line errors for the usual mistakes."""
    path = local_path(uri)
    if not path.is_file():
        raise MlkubeError(f"input file {uri} not found: check data.path / --input")
    if path.stat().st_size == 0:
        raise MlkubeError(f"input file {uri} is empty: it needs a header row and data rows")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        names, row = _csv_header(path, uri)
        return path, "csv", names, min(MAX_BLOCK_BYTES, max(BLOCK_BYTES, MIN_BLOCK_ROWS * row))
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return path, "parquet", list(pq.ParquetFile(path).schema_arrow.names), 0
        except (OSError, ValueError) as exc:
            raise _unreadable(uri, "parquet", exc) from None
    raise MlkubeError(f"input file {uri}: unknown format {suffix!r}; use .csv or .parquet")


def _unreadable(uri: str, kind: str, exc: BaseException) -> MlkubeError:
    what = "a comma-separated text file with a header row" if kind == "csv" else "Parquet"
    return MlkubeError(f"input file {uri} cannot be read: {first_line(exc)}; check that it is {what}")


def _not_utf8(uri: str, byte: int, offset: int) -> MlkubeError:
    return MlkubeError(
        f"input file {uri} is not UTF-8 text (byte {byte:#04x} at offset {offset}); a CSV must "
        "be UTF-8: re-save it as UTF-8 CSV, or pass a Parquet file")


def _csv_header(path: Path, uri: str) -> tuple[list[str], int]:
    """The column names and the length of the first data row."""
    with path.open("rb") as stream:
        line = stream.readline()
        row = len(stream.readline())
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(uri, exc.object[exc.start], exc.start) from None
    names = next(csv.reader([text]), [])
    duplicated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) < len(names) else []
    if duplicated:
        raise MlkubeError(f"input file {uri}: the header names columns {duplicated[:5]} more than "
                          "once; give every column its own name")
    return names, row


def _first_bad_utf8(path: Path) -> tuple[int, int] | None:
    """The first byte of ``path`` that is not UTF-8 and its offset (read in blocks), if any."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the block being decoded
    with path.open("rb") as stream:
        while True:
            block = stream.read(BLOCK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of a character the last block began
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return exc.object[exc.start], offset - pending + exc.start
            if not block:
                return None
            offset += len(block)


def _columns(names: list[str], cfg: DataConfig, uri: str) -> list[str]:
    """The feature columns, checked against the file's header."""
    present = set(names)
    if cfg.target not in present:
        raise MlkubeError(f"{uri}: target column {cfg.target!r} is missing; columns are "
                          f"{names[:12]} — set data.target")
    features = cfg.features if cfg.features is not None else [c for c in names if c != cfg.target]
    missing = [c for c in features if c not in present]
    if missing:
        raise MlkubeError(f"{uri}: feature columns {missing} are missing; columns are {names[:12]}")
    if not features:
        raise MlkubeError(f"{uri}: no feature columns besides the target {cfg.target!r}")
    for column in cfg.types:
        if column not in present:
            raise MlkubeError(f"{uri}: data.types names column {column!r}, which is not in the file")
    return features


def _not_numeric(uri: str, column: str, value: Any, row: int | None, *,
                 cfg: DataConfig) -> MlkubeError:
    where = f"row {row} holds {value!r}" if row is not None else f"it holds {value!r}"
    if column in cfg.types:
        return MlkubeError(f"{uri}: column {column!r} is declared {cfg.types[column]} but {where}; "
                           "fix the data or data.types")
    return MlkubeError(f"{uri}: feature column {column!r} is not numeric ({where}); encode it, "
                       "declare its type in data.types, or leave it out of data.features")


def _locate(path: Path, column: str) -> tuple[int, str] | None:
    """The first row (1 = the header) whose ``column`` is not a number, and its text."""
    import pandas as pd

    try:
        chunks = pd.read_csv(path, usecols=[column], dtype=str, chunksize=1 << 20)
        for chunk in chunks:
            text = chunk[column]
            bad = (pd.to_numeric(text, errors="coerce").isna() & text.notna()).to_numpy().nonzero()[0]
            if len(bad):
                return int(chunk.index[bad[0]]) + 2, str(text.iloc[bad[0]])
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    return None


def _csv_batches(path: Path, uri: str, names: list[str], features: list[str],
                 cfg: DataConfig, block: int) -> Iterator[Any]:
    """The CSV in blocks: features parsed as float64, the target as text."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {c: pa.float64() for c in features} | {cfg.target: pa.string()}
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, skip_rows=1,
                                                 block_size=block),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=[*features, cfg.target],
                null_values=NA_VALUES, strings_can_be_null=True, quoted_strings_can_be_null=True))
        yield from reader
    except pa.ArrowInvalid as exc:
        bad = _first_bad_utf8(path)
        if bad is not None:
            raise _not_utf8(uri, *bad) from None
        found = re.search(r"column #(\d+): CSV conversion error to double: invalid value '(.*)'",
                          str(exc), re.S)
        if found is None:
            raise _unreadable(uri, "csv", exc) from None
        column = names[int(found[1])]
        located = _locate(path, column)
        row, value = located if located else (None, found[2])
        raise _not_numeric(uri, column, value, row, cfg=cfg) from None


def _parquet_batches(path: Path, uri: str, features: list[str], cfg: DataConfig) -> Iterator[Any]:
    """The Parquet file in batches; non-numeric feature columns must be declared in data.types."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    for column in features:
        kind = schema.field(column).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        if not numeric and column not in cfg.types:
            first = source.read(columns=[column]).column(0).drop_null()
            raise _not_numeric(uri, column, first[0].as_py() if len(first) else None, None,
                               cfg=cfg)
    target_kind = schema.field(cfg.target).type
    rows = max(MIN_BLOCK_ROWS, BATCH_VALUES // (len(features) + 1))
    try:
        for batch in source.iter_batches(batch_size=rows, columns=[*features, cfg.target]):
            if cfg.task == "classification" and not pa.types.is_string(target_kind):
                target = pc.cast(batch.column(cfg.target), pa.string())
                batch = batch.set_column(len(features), cfg.target, target)
            yield batch
    except (OSError, ValueError) as exc:
        raise _unreadable(uri, "parquet", exc) from None


def _numeric(values: pd.Series, row0: int, on_bad: Callable[[Any, int], MlkubeError]) -> pd.Series:
    """``values`` as float64; the first non-number raises ``on_bad(value, row)``."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy().nonzero()[0]
    if len(bad):
        raise on_bad(values.iloc[bad[0]], row0 + int(bad[0]))
    return numbers.astype("float64")


@dataclass
class _Pass:
    """What the first pass learns: rows read, kept and with a target, the class labels seen."""

    read: int = 0
    with_target: int = 0
    kept: int = 0
    labels: set[str] = field(default_factory=set)


def _clean(batch: Any, features: list[str], cfg: DataConfig, uri: str, row0: int,
           seen: _Pass) -> Any:
    """One batch validated and cleaned: features and target numeric, incomplete rows dropped."""
    import numpy as np
    import pyarrow as pa

    frame = batch.to_pandas()
    for column in features:
        if frame[column].dtype != np.float64:
            frame[column] = _numeric(frame[column], row0, functools.partial(
                _not_numeric, uri, column, cfg=cfg))
    values = frame[features].to_numpy(dtype=np.float64)
    for column, kind in cfg.types.items():
        if kind == "int" and column in features:
            whole = values[:, features.index(column)]
            whole = whole[np.isfinite(whole)]
            if (whole != np.round(whole)).any():
                raise MlkubeError(f"{uri}: column {column!r} is declared int but has fractions")
    target = frame[cfg.target]
    seen.read += len(frame)
    seen.with_target += int(target.notna().sum())
    keep = np.isfinite(values).all(axis=1) & target.notna().to_numpy()
    if cfg.task == "regression":
        target = _numeric(target, row0, lambda v, r: MlkubeError(
            f"{uri}: regression target {cfg.target!r} holds {v!r} in row {r}; a regression "
            "target must be numeric (or use data.task: classification)"))
        keep &= np.isfinite(target.to_numpy())
        kept_target = pa.array(target.to_numpy()[keep], pa.float64())
    else:
        kept_target = pa.array(target.to_numpy(dtype=object)[keep], pa.string())
        seen.labels.update(kept_target.unique().to_pylist())
    seen.kept += int(keep.sum())
    columns = np.ascontiguousarray(values[keep].T)
    return pa.record_batch([*columns, kept_target], names=[*features, cfg.target])


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


class _Statistics:
    """count, mean, std, min, quartiles and max of every column of the train split, streamed:
    exact moments (Chan's parallel update); quartiles of a uniform sample of at most
    ``SAMPLE_VALUES`` cells (all rows when they fit, as for the demo data)."""

    def __init__(self, columns: list[str]):
        import numpy as np

        self.columns = columns
        self.count = 0
        self.mean = np.zeros(len(columns))
        self.m2 = np.zeros(len(columns))
        self.min = np.full(len(columns), np.inf)
        self.max = np.full(len(columns), -np.inf)
        self.sample: list[Any] = []
        self.classes: Any = None  # train rows per class index (the last column), if counted

    def count_classes(self, n: int) -> None:
        """Also count the last column (a class index) per class, ``n`` classes."""
        import numpy as np

        self.classes = np.zeros(n, dtype=np.int64)

    def add(self, values: Any, sampled: Any) -> None:
        n = len(values)
        mean = values.mean(axis=0)
        delta = mean - self.mean
        total = self.count + n
        self.m2 += ((values - mean) ** 2).sum(axis=0) + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.min = values.min(axis=0).clip(max=self.min)
        self.max = values.max(axis=0).clip(min=self.max)
        self.sample.append(values[sampled])
        if self.classes is not None:
            import numpy as np

            self.classes += np.bincount(values[:, -1].astype(np.int64),
                                        minlength=len(self.classes))

    def profile(self, train: Path, classes: list[Any] | None) -> dict[str, Any]:
        """The train split's profile (``profile.json``, see :mod:`mlkube.profile`): per feature
        quantile edges from the sample, exact bin counts (from the sample when it holds every
        train row, else by one more pass over ``train``, the split's Parquet file, a row group
        at a time), the exact mean and (sample) variance; the target's class counts or value
        histogram. ``missing`` is 0: rows missing a value are dropped before the split."""
        import numpy as np

        from mlkube import profile as profilemod

        sample = np.concatenate(self.sample)
        edges = [profilemod.quantile_edges(sample[:, i]) for i in range(len(self.columns))]
        if classes is not None:
            edges[-1] = []
        if len(sample) == self.count:
            counts: list[Any] = [profilemod.bin_counts(e, sample[:, i]) if e else []
                                 for i, e in enumerate(edges)]
        else:
            counts = _bin_pass(train, self.columns, edges)
        var = self.m2 / (self.count - 1) if self.count > 1 else np.zeros(len(self.columns))
        features = {column: {"edges": edges[i], "counts": [int(c) for c in counts[i]],
                             "missing": 0, "mean": float(self.mean[i]), "var": float(var[i])}
                    for i, column in enumerate(self.columns[:-1])}
        target: dict[str, Any] = (
            {"kind": "classes", "labels": list(classes),
             "counts": [int(c) for c in self.classes]} if classes is not None else
            {"kind": "values", "edges": edges[-1], "counts": [int(c) for c in counts[-1]]})
        return {"version": profilemod.PROFILE_VERSION, "rows": int(self.count),
                "features": features, "target": target}

    def table(self) -> dict[str, dict[str, float]]:
        import numpy as np

        quartiles = np.percentile(np.concatenate(self.sample), [25, 50, 75], axis=0)
        std = np.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else np.full(len(self.m2), np.nan)
        rows = {"count": np.full(len(self.columns), float(self.count)), "mean": self.mean,
                "std": std, "min": self.min, "25%": quartiles[0], "50%": quartiles[1],
                "75%": quartiles[2], "max": self.max}
        return {column: {stat: float(row[i]) for stat, row in rows.items()}
                for i, column in enumerate(self.columns)}


def _bin_pass(train: Path, columns: list[str], edges: list[list[float]]) -> list[Any]:
    """Bin counts of every column with edges, over the whole train split (Parquet)."""
    import numpy as np
    import pyarrow.parquet as pq

    from mlkube import profile as profilemod

    counts: list[Any] = [np.zeros(max(len(e) - 1, 0), dtype=np.int64) for e in edges]
    source = pq.ParquetFile(train)
    wanted = [c for c, e in zip(columns, edges, strict=True) if e]
    for group in range(source.metadata.num_row_groups):
        table = source.read_row_group(group, columns=wanted)
        for column in wanted:
            i = columns.index(column)
            values = table.column(column).to_numpy().astype(np.float64, copy=False)
            counts[i] += profilemod.bin_counts(edges[i], values)
    return counts


def prepare(uri: str, cfg: DataConfig, root: Path) -> tuple[Path, DatasetInfo, dict[str, Any]]:
    """Read, validate, clean, split, digest and write the dataset under ``root/datasets``.

    Streamed, so memory does not grow with the file: a first pass reads the input in blocks,
    validates and cleans each, and stages the kept rows (Arrow IPC, beside the output); the
    split needs their count. A second pass routes each staged row to its split's Parquet file
    and hashes it. Rows with a missing or non-finite (±inf) target or feature value are dropped
    and counted. The result is the dataset directory, its info and the train split's
    statistics. The directory appears only once complete; preparing the same data again
    reuses it. It also holds ``profile.json``, the train split's profile (histogram edges and
    counts, see :meth:`_Statistics.profile`); a dataset prepared before profiles existed gets
    one when it is prepared again.
    """
    path, kind, names, block = _open(uri)
    features = _columns(names, cfg, uri)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=root))
    try:
        seen, staged = _first_pass(path, kind, names, block, features, cfg, uri, tmp)
        classes, index = _classes(seen.labels) if cfg.task == "classification" else (None, {})
        header = {"target": cfg.target, "features": features, "task": cfg.task, "classes": classes}
        labels, train_order = split_labels(seen.kept, cfg, uri)
        hasher, rows, profiled = _second_pass(staged, labels, train_order, index, header, tmp)
        staged.unlink()
        stats = profiled.table()
        profile = json.dumps(profiled.profile(tmp / "train.parquet", classes), indent=1)
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


def _first_pass(path: Path, kind: str, names: list[str], block: int, features: list[str],
                cfg: DataConfig, uri: str, tmp: Path) -> tuple[_Pass, Path]:
    import pyarrow as pa

    batches = (_csv_batches(path, uri, names, features, cfg, block) if kind == "csv"
               else _parquet_batches(path, uri, features, cfg))
    staged = tmp / "staged.arrow"
    seen = _Pass()
    writer = None
    try:
        for batch in batches:
            kept = _clean(batch, features, cfg, uri, seen.read + 2, seen)
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
    return seen, staged


def _second_pass(staged: Path, labels: Any, train_order: Any, index: dict[str, int],
                 header: dict[str, Any], tmp: Path) -> tuple[Any, dict[str, int], _Statistics]:
    """Route the staged rows to their splits' Parquet files; hash them; profile train."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = header["target"]
    sampled = np.zeros(len(labels), dtype=bool)
    sampled[train_order[:max(1, SAMPLE_VALUES // (len(header["features"]) + 1))]] = True
    stats = _Statistics([*header["features"], target])
    if index:
        stats.count_classes(len(header["classes"]))
    hashes: dict[str, list[Any]] = {name: [] for name in SPLITS}
    writers: dict[str, Any] = {}
    offset = 0
    try:
        with pa.OSFile(str(staged), "rb") as source:
            for batch in pa.ipc.open_stream(source):
                frame = batch.to_pandas()
                if index:
                    frame[target] = frame[target].map(index).astype("int64")
                part = labels[offset:offset + len(frame)]
                for i, name in enumerate(SPLITS):
                    rows = part == i
                    if not rows.any():
                        continue
                    chunk = frame[rows].reset_index(drop=True)
                    hashes[name].append(pd.util.hash_pandas_object(chunk, index=False).to_numpy())
                    table = pa.Table.from_pandas(chunk, preserve_index=False)
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(tmp / f"{name}.parquet", table.schema)
                    writers[name].write_table(table)
                    if name == "train":
                        stats.add(chunk.to_numpy(dtype=np.float64),
                                  sampled[offset:offset + len(frame)][rows])
                offset += len(frame)
    finally:
        for writer in writers.values():
            writer.close()
    hasher = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in SPLITS:
        hasher.update(name.encode())
        hasher.update(np.concatenate(hashes[name]).tobytes())
    rows = {name: int(sum(len(h) for h in hashes[name])) for name in SPLITS}
    return hasher, rows, stats


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
