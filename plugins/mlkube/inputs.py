"""The prepare-data step's input: a CSV or Parquet file, read in blocks, never whole.

:func:`open_input` checks the file and reads its header; :func:`feature_columns` checks the
config's columns against it; :func:`csv_batches` and :func:`parquet_batches` give it as Arrow
record batches, features as float64 and the target as text, with one line naming the file, the
column, the row and the value of what is wrong (a CSV that is not UTF-8, a feature that is not
a number, a duplicated header name). The step itself (clean, split, digest, write) is
:mod:`mlkube.data`.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkube.config import DataConfig
from mlkube.errors import MlkubeError, first_line

if TYPE_CHECKING:
    import pandas as pd


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


BLOCK_BYTES = 1 << 20  # CSV text parsed at a time (small: it stays in the CPU's caches), at least ...
MIN_BLOCK_ROWS = 1024  # ... rows a block (wide tables: per-block costs are per column) ...
MAX_BLOCK_BYTES = 256 << 20  # ... but never more than this
PARSE_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)  # CSV blocks parsed at once
BATCH_VALUES = 4_000_000  # cells per batch read from Parquet, per chunk cleaned, staged and
# written as a Parquet row group (at least MIN_BLOCK_ROWS rows)
# pandas' default missing-value markers, so a CSV means what it meant when read with pandas
NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def batch_rows(features: list[str]) -> int:
    """Rows of ``BATCH_VALUES`` cells (at least ``MIN_BLOCK_ROWS``): a Parquet batch read, a
    chunk cleaned, staged and written as a row group."""
    return max(MIN_BLOCK_ROWS, BATCH_VALUES // (len(features) + 1))


def open_input(uri: str) -> tuple[Path, str, list[str], int]:
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


def feature_columns(names: list[str], cfg: DataConfig, uri: str) -> list[str]:
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


def not_numeric(uri: str, column: str, value: Any, row: int | None, *,
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


def csv_blocks(path: Path, block: int) -> Iterator[Any]:
    """The CSV's data rows (after the header line) in blocks of about ``block`` bytes, each
    ending at the end of a line (a row, as the reader takes values not to hold newlines); the
    bytes after a block's last line end are read again with the next (no copying)."""
    with path.open("rb") as stream:
        stream.readline()
        while True:
            text = stream.read(block)
            if not text:
                return
            cut = text.rfind(b"\n") + 1
            while cut == 0:  # no line end in the block: a row longer than a block
                more = stream.read(block)
                if not more:  # the last row, without a line end
                    cut = len(text)
                    break
                text += more
                cut = text.rfind(b"\n") + 1
            if cut < len(text):
                stream.seek(cut - len(text), os.SEEK_CUR)
                yield memoryview(text)[:cut]
            else:
                yield text


def csv_batches(path: Path, uri: str, names: list[str], features: list[str],
                 cfg: DataConfig, block: int) -> Iterator[Any]:
    """The CSV in blocks: features parsed as float64, the target as text. Blocks are parsed by
    pyarrow on ``PARSE_THREADS`` threads at once (it releases the GIL) and come back in order."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {c: pa.float64() for c in features} | {cfg.target: pa.string()}
    read_options = pacsv.ReadOptions(column_names=names, use_threads=False)
    convert_options = pacsv.ConvertOptions(
        column_types=types, include_columns=[*features, cfg.target], null_values=NA_VALUES,
        strings_can_be_null=True, quoted_strings_can_be_null=True)

    def parse(text: bytes) -> list[Any]:
        return pacsv.read_csv(pa.py_buffer(text), read_options=read_options,
                              convert_options=convert_options).to_batches()

    pool = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="mlkube-csv")
    try:
        pending: deque[Any] = deque()
        for text in csv_blocks(path, block):
            pending.append(pool.submit(parse, text))
            if len(pending) > 2 * PARSE_THREADS:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except pa.ArrowInvalid as exc:
        bad = _first_bad_utf8(path)
        if bad is not None:
            raise _not_utf8(uri, *bad) from None
        message = re.sub(r"Row #\d+: ", "", str(exc))  # (it would count from the block's start)
        found = re.search(r"column #(\d+): CSV conversion error to double: invalid value '(.*)'",
                          message, re.S)
        if found is None:
            raise _unreadable(uri, "csv", ValueError(message)) from None
        column = names[int(found[1])]
        located = _locate(path, column)
        row, value = located if located else (None, found[2])
        raise not_numeric(uri, column, value, row, cfg=cfg) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parquet_batches(path: Path, uri: str, features: list[str], cfg: DataConfig) -> Iterator[Any]:
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
            raise not_numeric(uri, column, first[0].as_py() if len(first) else None, None,
                               cfg=cfg)
    target_kind = schema.field(cfg.target).type
    rows = batch_rows(features)
    try:
        for batch in source.iter_batches(batch_size=rows, columns=[*features, cfg.target]):
            if cfg.task == "classification" and not pa.types.is_string(target_kind):
                target = pc.cast(batch.column(cfg.target), pa.string())
                batch = batch.set_column(len(features), cfg.target, target)
            yield batch
    except (OSError, ValueError) as exc:
        raise _unreadable(uri, "parquet", exc) from None


def numeric(values: pd.Series, row0: int, on_bad: Callable[[Any, int], MlkubeError]) -> pd.Series:
    """``values`` as float64; the first non-number raises ``on_bad(value, row)``."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy().nonzero()[0]
    if len(bad):
        raise on_bad(values.iloc[bad[0]], row0 + int(bad[0]))
    return numbers.astype("float64")
