"""The result document: atomic, small, and mirrored where orchestrators read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlkube.errors import MlkubeError
from mlkube.result import read_result, write_result


def test_result_file_termination_log_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("MLKUBE_OUTPUTS_DIR", str(tmp_path / "out"))
    write_result({"a": "x", "b": {"c": 1}}, tmp_path / "r.json", termination_log=log)
    assert read_result(tmp_path / "r.json") == {"a": "x", "b": {"c": 1}}
    assert log.read_text() == '{"a":"x","b":{"c":1}}'
    assert (tmp_path / "out" / "a").read_text() == "x"
    assert (tmp_path / "out" / "b").read_text() == '{"c": 1}'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_oversized_result_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(MlkubeError, match="termination message limit"):
        write_result({"payload": "x" * 5000}, tmp_path / "r.json", termination_log=tmp_path / "no")
    assert not (tmp_path / "r.json").exists()


def test_missing_result_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(MlkubeError, match="did the step finish"):
        read_result(tmp_path / "none.json")
