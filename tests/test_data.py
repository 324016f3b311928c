"""mlkube.data's streamed preparation: the same split, digest and Parquet content however the
input is cut into blocks, and the split and statistics a whole-frame computation gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlkube import data, inputs
from mlkube.config import DataConfig
from mlkube.errors import MlkubeError


def _frame(rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(rows, 6)), columns=[f"f{i}" for i in range(6)])
    frame.loc[rng.choice(rows, 40, replace=False), "f1"] = np.nan
    frame.loc[rng.choice(rows, 10, replace=False), "f4"] = np.inf
    frame["y"] = rng.choice(["cat", "dog", "emu"], rows)
    frame.loc[rng.choice(rows, 25, replace=False), "y"] = None
    return frame


def _prepared(directory: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(directory / f"{name}.parquet") for name in data.SPLITS}


def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 4096)  # ~35 rows of CSV a block
    monkeypatch.setattr(inputs, "BATCH_VALUES", 300)  # ~40 rows of Parquet a batch
    monkeypatch.setattr(inputs, "MIN_BLOCK_ROWS", 1)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    return path


def test_blocks_do_not_change_split_digest_content_or_statistics(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(target="y")
    whole_dir, whole, whole_stats = data.prepare(str(source), cfg, tmp_path / "whole")
    _small_blocks(monkeypatch)
    streamed_dir, streamed, streamed_stats = data.prepare(str(source), cfg, tmp_path / "streamed")
    assert streamed.digest == whole.digest and streamed.rows == whole.rows
    assert streamed.classes == whole.classes == ["cat", "dog", "emu"]
    for name, frame in _prepared(whole_dir).items():
        pd.testing.assert_frame_equal(_prepared(streamed_dir)[name], frame)
    assert streamed_stats.keys() == whole_stats.keys()
    for column, table in whole_stats.items():  # moments summed in another order: last digits
        exact = {k: v for k, v in table.items() if k not in ("mean", "std")}
        assert {k: streamed_stats[column][k] for k in exact} == exact
        np.testing.assert_allclose([streamed_stats[column][k] for k in ("mean", "std")],
                                   [table["mean"], table["std"]], rtol=1e-12)
    assert len(pq_row_groups(streamed_dir / "train.parquet")) > 10  # it really was streamed


def pq_row_groups(path: Path) -> list[int]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def test_split_and_statistics_are_those_of_the_whole_frame(source: Path, tmp_path: Path) -> None:
    cfg = DataConfig(target="y")
    directory, info, stats = data.prepare(str(source), cfg, tmp_path)
    frame = _frame().replace([np.inf, -np.inf], np.nan).dropna().reset_index(drop=True)
    n = len(frame)
    assert info.dropped_rows == 3000 - n and sum(info.rows.values()) == n
    order = np.random.default_rng(cfg.split.seed).permutation(n)
    n_train = info.rows["train"]
    expected = frame.iloc[np.sort(order[:n_train])].reset_index(drop=True)
    train = _prepared(directory)["train"]
    pd.testing.assert_frame_equal(train[info.features], expected[info.features])
    assert train["y"].map(lambda i: info.classes[i]).tolist() == expected["y"].tolist()
    values = train.to_numpy(dtype=np.float64)
    assert [stats[c]["50%"] for c in train.columns] == np.percentile(values, 50, axis=0).tolist()
    np.testing.assert_allclose([stats[c]["std"] for c in train.columns],
                               values.std(axis=0, ddof=1), rtol=1e-12)
    assert [stats[c]["min"] for c in train.columns] == values.min(axis=0).tolist()


def test_parquet_input_prepares_to_the_same_dataset_as_its_csv(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parquet = tmp_path / "d.parquet"
    _frame().to_parquet(parquet, index=False)
    cfg = DataConfig(target="y")
    _, from_csv, _ = data.prepare(str(source), cfg, tmp_path / "a")
    _small_blocks(monkeypatch)
    _, from_parquet, _ = data.prepare(str(parquet), cfg, tmp_path / "b")
    assert from_parquet.digest == from_csv.digest


def test_bad_value_in_a_late_block_names_its_row_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _frame().astype({"f2": object})
    frame.loc[2500, "f2"] = "n/a?"
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    _small_blocks(monkeypatch)
    root = tmp_path / "root"
    with pytest.raises(MlkubeError, match=r"feature column 'f2' is not numeric \(row 2502 holds "
                                          r"'n/a\?'\)"):
        data.prepare(str(path), DataConfig(target="y"), root)
    assert list(root.iterdir()) == []  # no dataset, no staging left behind


def test_not_utf8_deep_in_the_file_names_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    body = b"a,y\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(5000))
    path.write_bytes(body + b"1,\xe9t\xe9\n")
    with pytest.raises(MlkubeError, match=rf"byte 0xe9 at offset {len(body) + 2}\)"):
        data.prepare(str(path), DataConfig(target="y"), tmp_path / "root")


def test_load_arrays_matches_the_frame(source: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _small_blocks(monkeypatch)
    directory, _, _ = data.prepare(str(source), DataConfig(target="y"), tmp_path)
    assert len(pq_row_groups(directory / "train.parquet")) > 10
    x, y = data.load_arrays(str(directory), "train")
    x_frame, y_frame, _ = data.load_split(str(directory), "train")
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x_frame)
    np.testing.assert_array_equal(y, y_frame)


def test_digests_are_those_the_pandas_frame_code_gave(source: Path, tmp_path: Path) -> None:
    """The digest names the dataset and decides retraining (``changed``): these are the digests
    the whole-frame pandas code (and the streamed code before issue 18) gave for the same data,
    so a dataset prepared before is recognised after."""
    _, info, _ = data.prepare(str(source), DataConfig(target="y"), tmp_path / "c")
    assert info.digest == "cc34ac9be08b618dd2a6f5bfdc18b23e179ef1d0c4a5ccb3062038d63daeb9d4"
    frame = _frame()
    frame["y"] = frame["f0"] * 2 + 1
    frame.to_csv(tmp_path / "r.csv", index=False)
    _, info, _ = data.prepare(str(tmp_path / "r.csv"), DataConfig(target="y", task="regression"),
                              tmp_path / "r")
    assert info.digest == "4cf69828513e3f5ec9475f3bcabfb361a8aa9ff6512c07af451cf6735449fa4d"


def test_row_hashes_are_pandas_row_hashes() -> None:
    rng = np.random.default_rng(3)
    columns = [rng.normal(size=500), np.array([0.0, -0.0] * 250), rng.integers(-9, 9, 500),
               rng.normal(size=500) * 1e300]
    frame = pd.DataFrame({f"c{i}": c for i, c in enumerate(columns)})
    expected = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    np.testing.assert_array_equal(data.row_hashes(columns), expected)
    np.testing.assert_array_equal(data.row_hashes(columns[:1]),
                                  pd.util.hash_pandas_object(frame[["c0"]], index=False).to_numpy())


def test_csv_blocks_end_at_line_ends_and_cover_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        lines = ["x" * int(n) for n in rng.integers(0, 30, rng.integers(0, 40))]
        body = ("\n".join(lines) + ("\n" if trial % 2 else "")).encode()
        path = tmp_path / "b.csv"
        path.write_bytes(b"h\n" + body)
        for block in (1, 2, 5, 16, 100):
            blocks = [bytes(b) for b in inputs.csv_blocks(path, block)]
            assert b"".join(blocks) == body
            assert all(b.endswith(b"\n") for b in blocks[:-1])
