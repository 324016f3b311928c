"""The retraining reason: data changed, drift, or both; and which reasons make a new run."""

from __future__ import annotations

from mlkube import retrain


def test_reasons() -> None:
    stable = {"drifted": False, "psi": {"a": 0.01}}
    drifted = {"drifted": True, "psi": {"a": 0.1, "b": 0.72}, "prediction_psi": 0.3,
               "champion_version": "4"}
    assert retrain.reason("false", stable) == ""
    assert retrain.reason(False, None) == ""
    assert retrain.reason("true", stable) == "data changed"
    assert retrain.reason("false", drifted) == "drift (v4): psi b=0.720, prediction_psi=0.300"
    assert retrain.reason("true", {**drifted, "drifted": "true"}) == (
        "data changed; drift (v4): psi b=0.720, prediction_psi=0.300")


def test_which_reasons_name_drift() -> None:
    assert not retrain.names_drift("data changed")
    assert retrain.names_drift("drift (v4): psi b=0.720")
    assert retrain.names_drift("data changed; drift")
