"""The config: defaults, strict keys, range checks — each error one line naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlkube import config
from mlkube.errors import MlkubeError


def test_defaults_need_no_file() -> None:
    cfg = config.load(None)
    assert cfg.data.path is None and cfg.data.task == "classification"
    assert cfg.tune.search_space["learning_rate"].log is True
    assert config.from_dict(cfg.to_dict()) == cfg


def test_yaml_overrides_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  epochs: 7\ntune:\n  workers: 3\n")
    cfg = config.load(path)
    assert (cfg.model.epochs, cfg.tune.workers, cfg.model.batch_size) == (7, 3, 64)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("data:\n  tagret: y\n", "unknown config key 'data.tagret'"),
    ("tune:\n  search_space:\n    learning_rate: {type: float, low: 0.1, high: 0.01}\n",
     "low 0.1 > high 0.01"),
    ("model:\n  epochs: -3\n", "'model.epochs' must be positive"),
    ("model:\n  batch_size: 0\n", "'model.batch_size' must be positive"),
    ("model:\n  epochs: ten\n", "'model.epochs' must be int"),
    ("data:\n  task: clustering\n", "use one of ['classification', 'regression']"),
    ("data:\n  split: {validation: 0.6, test: 0.5}\n", "must be < 1"),
    ("tune:\n  search_space:\n    dropout: {type: float, low: 0, high: 1}\n", "not a model parameter"),
    ("serving:\n  host: 0.0.0.0\n", "loopback only"),
    # values a later step would reject: caught when the config is loaded, before any work
    ("registry:\n  model_name: team/model\n", "'registry.model_name' is 'team/model'"),
    ("registry:\n  model_name: 'a:b'\n", "hold no '/' or ':'"),
    ("registry:\n  model_name: ' '\n", "MLflow model names are not empty"),
    ("serving:\n  port: 65536\n", "'serving.port' is 65536, not a TCP port; use 1-65535"),
    ("serving:\n  max_body_bytes: 0\n", "'serving.max_body_bytes' must be positive, got 0"),
    ("serving:\n  idle_timeout: -1\n", "'serving.idle_timeout' must be positive, got -1"),
    ("monitor:\n  psi_threshold: 0\n", "'monitor.psi_threshold' must be positive, got 0.0"),
    ("monitor:\n  min_rows: -5\n", "'monitor.min_rows' must be positive, got -5"),
    ("monitor:\n  window: 3\n", "unknown config key 'monitor.window'; known keys here: "
     "psi_threshold, prediction_psi_threshold, min_rows, sample_rows"),
    ("tune:\n  storage: optuna.db\n", "'tune.storage' is 'optuna.db', not a database URL"),
    ("tune:\n  search_space:\n    hidden_sizes: {type: categorical, choices: ['64', 'wide']}\n",
     "'tune.search_space.hidden_sizes' allows 'wide', which the model rejects"),
    ("tune:\n  search_space:\n    batch_size: {type: int, low: 0, high: 256}\n",
     "allows 0, which the model rejects: config key 'model.batch_size' must be positive"),
    ("tune:\n  search_space:\n    epochs: {type: float, low: 1, high: 5}\n",
     "'model.epochs' must be int"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MlkubeError) as raised:
        config.load(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(MlkubeError, match="config file .* not found"):
        config.load(tmp_path / "nope.yaml")


def test_override_validates() -> None:
    cfg = config.override(config.load(None), "data.target", "y")
    assert cfg.data.target == "y"
    with pytest.raises(MlkubeError, match="model.epochs"):
        config.override(cfg, "model.epochs", 0)


def test_search_space_edges_that_the_model_accepts_load() -> None:
    cfg = config.from_dict({"tune": {"search_space": {
        "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
        "hidden_sizes": {"type": "categorical", "choices": ["8", "64,32,16"]}}}})
    assert cfg.tune.search_space["batch_size"].high == 256


def test_model_params_applies_tuned_values_with_the_config_rules() -> None:
    base = config.load(None).model
    assert config.model_params(base, {"hidden_sizes": "128,64"}).hidden_sizes == [128, 64]
    with pytest.raises(MlkubeError, match="'model.learning_rate' must be positive"):
        config.model_params(base, {"learning_rate": -1.0})


def _load_error(path: Path) -> str:
    with pytest.raises(MlkubeError) as raised:
        config.load(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_directory_is_named_with_the_file_to_pass(tmp_path: Path) -> None:
    (tmp_path / "conf" / "lifecycle.yaml").parent.mkdir()
    (tmp_path / "conf" / "lifecycle.yaml").write_text("model:\n  epochs: 3\n")
    message = _load_error(tmp_path / "conf")
    assert message == (f"config file {tmp_path / 'conf'} is a directory: pass the YAML file "
                       f"itself, e.g. {tmp_path / 'conf' / 'lifecycle.yaml'}")
    assert "is a directory: pass the YAML file itself" in _load_error(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {}\n")
    path.chmod(0)
    assert "is not readable by this user" in _load_error(path)


def test_other_read_errors_and_binary_files_are_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    assert "cannot be read (Too many levels of symbolic links): pass a readable YAML file" in \
        _load_error(loop)
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: {}\n")
    assert "cannot be read (Not a directory)" in _load_error(plain / "c.yaml")
    binary = tmp_path / "c.yaml.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00")
    assert "is not UTF-8 text (byte 1 is 0x8b): pass a YAML text file" in _load_error(binary)


@pytest.mark.parametrize(("yaml_text", "where", "problem"), [
    ("model:\n\tepochs: 3\n", "line 2, column 1",
     "found character '\\t' that cannot start any token (while scanning for the next token); "
     "YAML indents with spaces, not tabs: replace the tab"),
    ("model:\n  epochs: 3\ntune: {workers: 2\n", "line 4, column 1",
     "expected ',' or '}', but got '<stream end>' (while parsing a flow mapping); fix the YAML "
     "there"),
    ("model: epochs: 3\n", "line 1, column 14",
     "mapping values are not allowed here; fix the YAML there"),
])
def test_yaml_syntax_errors_name_the_line_column_and_problem(tmp_path: Path, yaml_text: str,
                                                              where: str, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert _load_error(path) == f"config file {path} is not valid YAML at {where}: {problem}"
