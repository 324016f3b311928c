"""prepare-data on small real files: schema checks, cleaning, split, digest, MLflow input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mlkube_testing import error_lines, run


def _csv(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(n)], "b": [i % 7 for i in range(n)],
                         "y": [i % 2 for i in range(n)]})


def test_demo_data_prepared_logged_and_idempotent(state: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = run("prepare-data", tmp=tmp_path, capsys=capsys)
    assert code == 0 and result is not None
    dataset = Path(result["dataset_uri"])
    assert {p.name for p in dataset.iterdir()} == {"train.parquet", "validation.parquet",
                                                  "test.parquet", "schema.json", "profile.json"}
    sizes = [len(pd.read_parquet(dataset / f"{s}.parquet")) for s in ("train", "validation", "test")]
    assert sum(sizes) == result["rows"] == 569 and min(sizes) > 0
    assert result["changed"] == "true" and result["champion_digest"] == ""
    run_data = mlflow.get_run(result["mlflow_run_id"])
    assert {i.tags[0].value for i in run_data.inputs.dataset_inputs} == {"train", "validation", "test"}
    assert run_data.data.metrics["rows_train"] == sizes[0]

    again, second, _ = run("prepare-data", tmp=tmp_path, capsys=capsys)
    assert again == 0 and second == result  # same digest, same run: nothing duplicated
    runs = mlflow.search_runs(experiment_names=["mlkube"], output_format="list")
    assert len(runs) == 1


def test_split_is_deterministic_and_seeded(state: Path, tmp_path: Path) -> None:
    source = _csv(tmp_path / "d.csv", _frame(60))
    _, first, _ = run("prepare-data", "--input", source, "--target", "y", tmp=tmp_path)
    _, same, _ = run("prepare-data", "--input", source, "--target", "y", tmp=tmp_path)
    _, other, _ = run("prepare-data", "--input", source, "--target", "y",
                      "--split", '{"validation": 0.2, "test": 0.2, "seed": 7}', tmp=tmp_path)
    assert first and same and other
    assert first["dataset_digest"] == same["dataset_digest"] != other["dataset_digest"]


def test_missing_targets_dropped_and_reported(state: Path, tmp_path: Path) -> None:
    frame = _frame(40).astype({"y": "float64"})
    frame.loc[[3, 5, 8], "y"] = None
    _, result, _ = run("prepare-data", "--input", _csv(tmp_path / "d.csv", frame),
                       "--target", "y", tmp=tmp_path)
    assert result is not None and result["dropped_rows"] == 3 and result["rows"] == 37


def test_parquet_input_and_declared_types(state: Path, tmp_path: Path) -> None:
    frame = _frame(30).astype({"b": "string"})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    code, result, _ = run("prepare-data", "--input", str(path), "--target", "y",
                          "--types", '{"b": "int"}', tmp=tmp_path)
    assert code == 0 and result is not None and result["rows"] == 30


BAD_INPUTS = {
    "empty file": ("empty.csv", "", [], "is empty"),
    "file not found": (None, None, [], "not found"),
    "missing target": ("d.csv", "a,b\n1,2\n3,4\n", [], "target column 'y' is missing"),
    "target all NaN": ("d.csv", "a,y\n1,\n2,\n3,\n", [], "has no values"),
    "non-numeric feature": ("d.csv", "a,b,y\n1,x,0\n2,z,1\n3,q,0\n", [], "'b' is not numeric"),
    "empty split": ("d.csv", "a,y\n1,0\n2,1\n3,0\n", [], "leaves an empty"),
    "unknown config key": (None, None, ["--split", '{"validation": 0.1, "tset": 0.1}'],
                           "unknown config key 'data.split.tset'"),
    "declared type violated": ("d.csv", "a,y\n1,0\nx,1\n", ["--types", '{"a": "float"}'],
                               "declared float but row 3 holds 'x'"),
    "binary file named .csv": ("d.csv", b"PK\x03\x04\x85\xff\x00binary", [],
                               "is not UTF-8 text (byte 0x85 at offset 4); a CSV must be UTF-8: "
                               "re-save it as UTF-8 CSV, or pass a Parquet file"),
    "not a CSV table": ("d.csv", 'a,y\n1,0\n2,1,3,4\n"', [], "check that it is a comma-separated"),
    "non-numeric regression target": ("d.csv", "a,y\n1,0.5\n2,high\n", ["--task", "regression"],
                                      "regression target 'y' holds 'high' in row 3"),
    "only inf left": ("d.csv", "a,y\ninf,0\n-inf,1\n", [], "every row misses"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_one_line_nonzero_nothing_written(case: str, state: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name, content, extra, message = BAD_INPUTS[case]
    path = tmp_path / (name or "absent.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, result, err = run("prepare-data", "--input", str(path), "--target", "y", *extra,
                            tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None
    assert len(lines) == 1 and message in lines[0], err
    assert not (state / "artifacts" / "datasets").exists()


def test_non_finite_values_are_dropped_like_missing_ones(state: Path, tmp_path: Path) -> None:
    frame = _frame(40).astype({"b": "float64", "y": "float64"})
    frame.loc[2, "a"] = float("inf")
    frame.loc[7, "b"] = float("-inf")
    frame.loc[9, "y"] = float("inf")  # a regression target too
    source = _csv(tmp_path / "d.csv", frame)
    _, result, _ = run("prepare-data", "--input", source, "--target", "y", "--task", "regression",
                       tmp=tmp_path)
    assert result is not None and result["dropped_rows"] == 3 and result["rows"] == 37
    kept = pd.concat(pd.read_parquet(Path(result["dataset_uri"]) / f"{s}.parquet")
                     for s in ("train", "validation", "test"))
    assert kept.map(lambda v: abs(v) != float("inf")).all().all()


def test_wide_data_prepares_without_per_column_warnings(state: Path, tmp_path: Path) -> None:
    """2,000 columns: whole-frame operations, no column-at-a-time inserts (the 10,000-column
    timing is in benchmarks/prepare_wide.py)."""
    import numpy as np

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 2000)), columns=[f"f{i}" for i in range(2000)])
    frame["y"] = rng.integers(0, 2, 120)
    source = _csv(tmp_path / "wide.csv", frame)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, result, _ = run("prepare-data", "--input", source, "--target", "y", tmp=tmp_path)
    assert code == 0 and result is not None and result["rows"] == 120
    assert [w for w in caught if issubclass(w.category, pd.errors.PerformanceWarning)] == []
    inputs = mlflow.get_run(result["mlflow_run_id"]).inputs.dataset_inputs
    schema = json.loads(inputs[0].dataset.schema)["mlflow_colspec"]
    assert len(schema) == 2001 and json.loads(inputs[0].dataset.profile)["num_rows"] > 0
