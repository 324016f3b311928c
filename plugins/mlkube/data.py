"""Datasets: read, validate against the declared schema, clean, split, digest, write.

A prepared dataset is a directory holding ``train``, ``validation`` and ``test`` Parquet
files and ``schema.json``; its URI is the directory. The directory's name is the content
digest, and it appears only once complete (written aside, then renamed), so a later step never
reads a half-written dataset and preparing the same data twice writes nothing new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkube.config import DataConfig
from mlkube.errors import MlkubeError, first_line

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SPLITS = ("train", "validation", "test")
SCHEMA_FILE = "schema.json"


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


def read_table(uri: str) -> pd.DataFrame:
    """Read a CSV or Parquet file, with one-line errors for the usual mistakes."""
    import pandas as pd

    path = local_path(uri)
    if not path.is_file():
        raise MlkubeError(f"input file {uri} not found: check data.path / --input")
    if path.stat().st_size == 0:
        raise MlkubeError(f"input file {uri} is empty: it needs a header row and data rows")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise MlkubeError(f"input file {uri}: unknown format {suffix!r}; use .csv or .parquet")
    except UnicodeDecodeError as exc:
        raise MlkubeError(
            f"input file {uri} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); a CSV must be UTF-8: re-save it as UTF-8 CSV, or pass a Parquet file"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        what = "a comma-separated text file with a header row" if suffix == ".csv" else "Parquet"
        raise MlkubeError(f"input file {uri} cannot be read: {first_line(exc)}; check that it is "
                          f"{what}") from None
    if frame.empty:
        raise MlkubeError(f"input file {uri} has no data rows")
    return frame


def _coerce(frame: pd.DataFrame, column: str, kind: str, uri: str) -> pd.Series:
    import pandas as pd

    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise MlkubeError(
            f"{uri}: column {column!r} is declared {kind} but row {row + 2} holds "
            f"{frame[column].iloc[row]!r}; fix the data or data.types"
        )
    if kind == "int":
        whole = values.dropna()
        if not (whole == whole.round()).all():
            raise MlkubeError(f"{uri}: column {column!r} is declared int but has fractions")
    return values.astype("float64")


def validate(frame: pd.DataFrame, cfg: DataConfig, uri: str) -> tuple[pd.DataFrame, list[str]]:
    """Check the frame against the declared schema; return it with numeric columns only."""
    import pandas as pd

    columns = list(frame.columns)
    present = set(columns)
    if cfg.target not in present:
        raise MlkubeError(
            f"{uri}: target column {cfg.target!r} is missing; columns are {columns[:12]}"
            " — set data.target"
        )
    features = cfg.features if cfg.features is not None else [c for c in columns if c != cfg.target]
    missing = [c for c in features if c not in present]
    if missing:
        raise MlkubeError(f"{uri}: feature columns {missing} are missing; columns are {columns[:12]}")
    if not features:
        raise MlkubeError(f"{uri}: no feature columns besides the target {cfg.target!r}")
    for column in cfg.types:
        if column not in present:
            raise MlkubeError(f"{uri}: data.types names column {column!r}, which is not in the file")
    dtypes = frame.dtypes
    for column in features:
        kind = dtypes[column]
        if column in cfg.types or (pd.api.types.is_numeric_dtype(kind)
                                   and not pd.api.types.is_bool_dtype(kind)):
            continue
        example = frame[column].dropna().iloc[0] if frame[column].notna().any() else None
        raise MlkubeError(
            f"{uri}: feature column {column!r} is not numeric (e.g. {example!r}); encode it, "
            "declare its type in data.types, or leave it out of data.features"
        )
    # Whole-frame operations: handling 10,000 columns one at a time is quadratic.
    out = frame[[*features, cfg.target]].copy()
    for column, kind in cfg.types.items():
        if column in features:
            out[column] = _coerce(frame, column, kind, uri)
    out = out.astype({column: "float64" for column in features})
    if out[cfg.target].isna().all():
        raise MlkubeError(f"{uri}: target column {cfg.target!r} has no values (all {len(out)} rows are empty)")
    return out, features


def non_finite_to_missing(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with ±inf in ``columns`` turned into missing values (dropped like them)."""
    import numpy as np
    import pandas as pd

    values = frame[columns].to_numpy(dtype="float64")
    infinite = np.isinf(values)
    if not infinite.any():
        return frame
    block = pd.DataFrame(np.where(infinite, np.nan, values), columns=columns, index=frame.index)
    return pd.concat([block, frame.drop(columns=columns)], axis=1)[list(frame.columns)]


def _regression_target(target: pd.Series, name: str, uri: str) -> pd.Series:
    import pandas as pd

    numeric = pd.to_numeric(target, errors="coerce")
    bad = numeric.isna() & target.notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise MlkubeError(f"{uri}: regression target {name!r} holds {target.iloc[row]!r} in row "
                          f"{row + 2}; a regression target must be numeric (or use "
                          "data.task: classification)")
    return numeric.astype("float64")


def _encode_target(frame: pd.DataFrame, cfg: DataConfig, uri: str) -> tuple[pd.DataFrame, list[Any] | None]:
    target = frame[cfg.target]
    if cfg.task == "regression":
        return frame, None
    classes = sorted(target.unique().tolist(), key=str)
    if len(classes) < 2:
        raise MlkubeError(f"{uri}: classification target {cfg.target!r} has one class: {classes}")
    index = {c: i for i, c in enumerate(classes)}
    frame[cfg.target] = target.map(index).astype("int64")
    return frame, [c.item() if hasattr(c, "item") else c for c in classes]


def split(frame: pd.DataFrame, cfg: DataConfig, uri: str) -> dict[str, pd.DataFrame]:
    """A deterministic train/validation/test split from the configured seed."""
    import numpy as np

    n = len(frame)
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
    bounds = np.cumsum([sizes["train"], sizes["validation"]])
    parts = np.split(order, bounds)
    return {name: frame.iloc[np.sort(idx)].reset_index(drop=True) for name, idx in zip(SPLITS, parts, strict=True)}


def digest(splits: dict[str, pd.DataFrame], header: dict[str, Any]) -> str:
    """A content digest of the prepared data: the same rows and schema give the same digest."""
    import pandas as pd

    hasher = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in SPLITS:
        hasher.update(name.encode())
        hasher.update(pd.util.hash_pandas_object(splits[name], index=False).to_numpy().tobytes())
    return hasher.hexdigest()


def write(root: Path, splits: dict[str, pd.DataFrame], info: DatasetInfo) -> Path:
    """Write the dataset under ``root/datasets/<digest>``; reuse it when already complete."""
    final = root / "datasets" / info.digest[:16]
    if (final / SCHEMA_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / SCHEMA_FILE).write_text(json.dumps(asdict(info), indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same dataset first
            if not (final / SCHEMA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare(uri: str, cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], DatasetInfo]:
    """Read, validate, clean and split; nothing is written.

    Rows with a missing or non-finite (±inf) target or feature value are dropped and counted.
    """
    frame = read_table(uri)
    frame, features = validate(frame, cfg, uri)
    before = len(frame)
    numeric = features + ([cfg.target] if cfg.task == "regression" else [])
    if cfg.task == "regression":
        frame[cfg.target] = _regression_target(frame[cfg.target], cfg.target, uri)
    frame = non_finite_to_missing(frame, numeric)
    frame = frame.dropna().reset_index(drop=True)
    dropped = before - len(frame)
    if frame.empty:
        raise MlkubeError(f"{uri}: every row misses the target or a feature value (or holds "
                          "inf); nothing is left")
    frame, classes = _encode_target(frame, cfg, uri)
    parts = split(frame, cfg, uri)
    header = {"target": cfg.target, "features": features, "task": cfg.task, "classes": classes}
    info = DatasetInfo(
        digest=digest(parts, header), source=uri, target=cfg.target, features=features,
        task=cfg.task, classes=classes, rows={k: len(v) for k, v in parts.items()},
        dropped_rows=dropped,
    )
    return parts, info


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
