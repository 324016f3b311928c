"""The training profile prepare-data writes (issue 17, item 1): histogram edges and counts of
the train split, the shape the serving runtime and the monitor step read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlkube import data, inputs, profile
from mlkube.config import DataConfig


def _check(found: dict, train: pd.DataFrame, features: list[str]) -> None:
    assert found["version"] == 1 and found["rows"] == len(train)
    assert list(found["features"]) == features
    for name, feature in found["features"].items():
        edges = feature["edges"]
        assert len(edges) >= 2 and all(a < b for a, b in zip(edges, edges[1:], strict=False))
        assert len(feature["counts"]) == len(edges) - 1
        assert sum(feature["counts"]) == len(train) and feature["missing"] == 0
        values = train[name].to_numpy()
        # the rule: bin i holds e_i <= x < e_(i+1); the last also eK and above, the first below e0
        inner = [-np.inf, *edges[1:-1], np.inf]
        expected = [int(((values >= lo) & (values < hi)).sum())
                    for lo, hi in zip(inner, inner[1:], strict=False)]
        assert feature["counts"] == expected, name
        assert feature["mean"] == pytest.approx(values.mean())
        assert feature["var"] == pytest.approx(values.var(ddof=1))


def test_prepare_data_profiles_the_train_split(tmp_path: Path) -> None:
    source = data.demo_data(tmp_path)
    directory, info, _ = data.prepare(str(source), DataConfig(target="target"), tmp_path / "a")
    found = json.loads((directory / data.PROFILE_FILE).read_text())
    train = pd.read_parquet(directory / "train.parquet")
    assert found["rows"] == info.rows["train"] == 399
    _check(found, train, info.features)
    assert max(len(f["edges"]) for f in found["features"].values()) == profile.BINS + 1
    target = found["target"]
    assert target == {"kind": "classes", "labels": [0, 1],
                      "counts": np.bincount(train["target"]).tolist()}


def test_a_sample_smaller_than_the_split_still_counts_every_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edges from the sample (the train rows of a seeded uniform sample of the kept rows, taken
    in the first pass), counts of every train row (in the second pass)."""
    monkeypatch.setattr(data, "SAMPLE_VALUES", 31 * 20)  # 20 train rows' worth of 399
    source = data.demo_data(tmp_path)
    directory, info, _ = data.prepare(str(source), DataConfig(target="target"), tmp_path / "a")
    found = json.loads((directory / data.PROFILE_FILE).read_text())
    _check(found, pd.read_parquet(directory / "train.parquet"), info.features)
    edges = found["features"]["mean_radius"]["edges"]
    train = pd.read_parquet(directory / "train.parquet")["mean_radius"]
    assert edges != profile.quantile_edges(train)  # sampled, so not the exact quantiles


def test_a_sampled_profile_is_seeded_and_the_same_in_any_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SAMPLE_VALUES", 31 * 40)
    source = str(data.demo_data(tmp_path))
    cfg = DataConfig(target="target")

    def prepared(root: str, config: DataConfig = cfg) -> tuple[dict, dict]:
        """The histograms and the quartiles (the moments' last digits follow the blocks)."""
        directory, _, stats = data.prepare(source, config, tmp_path / root)
        found = json.loads((directory / data.PROFILE_FILE).read_text())
        histograms = {name: (f["edges"], f["counts"]) for name, f in found["features"].items()}
        quartiles = {c: [s[q] for q in ("25%", "50%", "75%")] for c, s in stats.items()}
        return histograms | {"target": found["target"]}, quartiles

    first = prepared("a")
    (tmp_path / "a").rename(tmp_path / "a-done")
    assert prepared("a") == first  # the same seed: the same sample
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 2048)
    monkeypatch.setattr(inputs, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(inputs, "BATCH_VALUES", 31 * 25)
    assert prepared("b") == first  # the sample does not depend on the blocks
    other = DataConfig(target="target")
    other.split.seed = 7
    assert prepared("c", other)[1] != first[1]


def test_a_regression_target_gets_a_value_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": np.ones(300), "y": rng.normal(size=300)})
    frame.to_csv(tmp_path / "r.csv", index=False)
    directory, info, _ = data.prepare(str(tmp_path / "r.csv"),
                                      DataConfig(target="y", task="regression"), tmp_path / "o")
    found = json.loads((directory / data.PROFILE_FILE).read_text())
    train = pd.read_parquet(directory / "train.parquet")
    _check(found, train, ["a", "b"])
    assert found["features"]["b"]["edges"] == [0.5, 1.5]  # a constant: one bin around it
    target = found["target"]
    assert target["kind"] == "values" and sum(target["counts"]) == len(train)
    assert target["counts"] == profile.bin_counts(target["edges"], train["y"]).tolist()


def test_a_dataset_prepared_before_profiles_gets_one(tmp_path: Path) -> None:
    source = data.demo_data(tmp_path)
    directory, _, _ = data.prepare(str(source), DataConfig(target="target"), tmp_path / "a")
    written = (directory / data.PROFILE_FILE).read_text()
    (directory / data.PROFILE_FILE).unlink()
    again, _, _ = data.prepare(str(source), DataConfig(target="target"), tmp_path / "a")
    assert again == directory and (directory / data.PROFILE_FILE).read_text() == written
