"""The config: defaults, strict keys, range checks — each error one line naming the key."""

from __future__ import annotations

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
