"""The lifecycle configuration: one YAML document, every field with a default.

The demo needs no file at all. Unknown keys and out-of-range values are errors that name the
key and say what is allowed, before any step does work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mlkube.errors import MlkubeError, first_line

Task = Literal["classification", "regression"]
ColumnType = Literal["float", "int"]
ParamType = Literal["float", "int", "categorical"]


@dataclass(kw_only=True)
class SplitConfig:
    """Fractions of the rows held out for validation and test, and the split seed."""

    validation: float = 0.15
    test: float = 0.15
    seed: int = 42


@dataclass(kw_only=True)
class DataConfig:
    """Where the data is and its declared schema."""

    path: str | None = None  # CSV or Parquet, a path or file:// URI; None = bundled demo data
    target: str = "target"
    features: list[str] | None = None  # None = every column but the target
    types: dict[str, ColumnType] = field(default_factory=dict)
    task: Task = "classification"
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass(kw_only=True)
class ModelConfig:
    """The MLP's hyperparameters (the defaults the tuner starts from)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    learning_rate: float = 0.003
    batch_size: int = 64
    epochs: int = 30
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(kw_only=True)
class ParamSpace:
    """One dimension of the search space."""

    type: ParamType
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None


def _default_space() -> dict[str, ParamSpace]:
    return {
        "learning_rate": ParamSpace(type="float", low=1e-4, high=3e-2, log=True),
        "hidden_sizes": ParamSpace(type="categorical", choices=["32", "64,32", "128,64"]),
        "weight_decay": ParamSpace(type="float", low=1e-6, high=1e-2, log=True),
    }


@dataclass(kw_only=True)
class TuneConfig:
    """The Optuna study."""

    # 18 full trials, no pruning: within 1% of the exhaustive grid's best in 10 of 10 runs on
    # both benchmark data sets at 0.375x its trial-epochs; the median rule stopped good slow
    # starters (low learning rates) at epoch 3 (benchmarks/README.md, tuning efficiency)
    n_trials: int = 18
    workers: int = 2
    epochs: int = 15
    pruner: Literal["median", "hyperband", "none"] = "none"
    storage: str | None = None  # None = SQLite file under the state directory
    search_space: dict[str, ParamSpace] = field(default_factory=_default_space)


@dataclass(kw_only=True)
class RegistryConfig:
    """The MLflow model registry and the champion gate."""

    model_name: str = "mlkube-demo"
    margin: float = 0.0  # the challenger must beat the champion by more than this
    # the live half of the gate (issue 17, item 4): > 0: a challenger better offline takes the
    # champion alias only after deploy shadowed it beside the serving champion for at least
    # this many live requests, agreeing with it ...
    min_live_requests: int = 0
    min_agreement: float = 0.9  # ... on at least this share of rows (a classifier's labels)
    max_mean_abs_diff: float | None = None  # ... or within this mean |difference| (regression)


@dataclass(kw_only=True)
class ServingConfig:
    """The local model server (loopback only)."""

    host: str = "127.0.0.1"
    port: int = 5151  # the published URL: new versions are swapped into the running server
    ready_timeout: float = 120.0  # the local server's start
    # cluster targets: one serving pod's start (scheduling, image pull, model load; the startup
    # probe allows 600 s); a rollout of N replicas, one new pod at a time, waits N of these
    pod_start_timeout: float = 660.0
    max_body_bytes: int = 16 * 1024 * 1024  # a larger request body is answered 413 unread
    idle_timeout: float = 75.0  # seconds an idle connection (or a stalled body) is kept
    # the canary phase (issue 17, item 5; every target; deploy's --canary-percent is the same
    # share in percent): > 0: a new version first answers this share of the live requests,
    # promoted only within the bounds below
    canary_share: float = 0.0
    canary_requests: int = 200  # the window: the canary's live requests judged ...
    canary_seconds: float = 300.0  # ... within this time; fewer by then: rolled back
    canary_max_error_rate: float = 0.01  # failed (5xx) share of the canary's requests, at most
    canary_max_p99_ms: float = 250.0  # the canary's p99 latency (its model's answer), at most
    shadow_share: float = 1.0  # the share of live requests mirrored to a shadowed challenger
    shadow_seconds: float = 300.0  # how long deploy waits for registry.min_live_requests


@dataclass(kw_only=True)
class MonitorConfig:
    """The monitor step: live windows against the served version's training profile."""

    # population stability index above which a feature (the predictions) counts as drifted;
    # 0.2 is the usual rule of thumb (below 0.1: stable, 0.1-0.2: a shift worth watching)
    psi_threshold: float = 0.2
    prediction_psi_threshold: float = 0.2
    min_rows: int = 200  # fewer live rows than this are not judged (drifted: false)
    sample_rows: int = 10000  # without --windows/--since: newest windows until this many rows


@dataclass(kw_only=True)
class Config:
    """The whole lifecycle."""

    experiment: str = "mlkube"
    state_dir: str = ".mlkube"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able copy (what `from_dict` reads back)."""
        return dataclasses.asdict(self)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` and build dataclasses; ``where`` names the key."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MlkubeError(f"config key '{where}' must be a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise MlkubeError(f"config key '{where}' is {value!r}; use one of {list(allowed)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise MlkubeError(f"config key '{where}' must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MlkubeError(f"config key '{where}' must be a mapping, got {value!r}")
        _, inner = typing.get_args(hint)
        return {str(k): _convert(v, inner, f"{where}.{k}") for k, v in value.items()}
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise MlkubeError(f"config key '{where}' must be {name}, got {value!r}")


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise MlkubeError(f"unknown config key '{path}'; known keys here: {', '.join(known)}")
        values[key] = _convert(value, hints[key], path)
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise MlkubeError(f"config section '{where or 'top level'}': {exc}") from None


def from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a :class:`Config` from plain data (YAML or JSON)."""
    config: Config = _build(Config, data or {}, "")
    validate(config)
    return config


def state_dir(config: Config) -> Path:
    """The embedded state directory: MLKUBE_STATE_DIR when set, else ``config.state_dir``."""
    return Path(os.environ.get("MLKUBE_STATE_DIR") or config.state_dir).resolve()


def _read(file: Path) -> str:
    """The text of the config file, or one line saying why it cannot be read and what to do."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MlkubeError(f"config file {file} not found: pass an existing YAML file") from None
    except IsADirectoryError:
        inside = sorted(p for p in file.glob("*.y*ml") if p.is_file())
        example = f", e.g. {inside[0]}" if inside else ""
        raise MlkubeError(f"config file {file} is a directory: pass the YAML file itself"
                          f"{example}") from None
    except PermissionError:
        raise MlkubeError(f"config file {file} is not readable by this user (uid {os.getuid()}): "
                          "make it readable (chmod a+r) or pass a copy you can read") from None
    except OSError as exc:
        raise MlkubeError(f"config file {file} cannot be read ({exc.strerror or exc}): pass a "
                          "readable YAML file") from None
    except UnicodeDecodeError as exc:
        raise MlkubeError(f"config file {file} is not UTF-8 text (byte {exc.start} is "
                          f"{exc.object[exc.start]:#04x}): pass a YAML text file") from None


def _yaml_error(file: Path, exc: yaml.YAMLError) -> MlkubeError:
    """One line for a YAML syntax error: the file, the line and column, the parser's problem."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return MlkubeError(f"config file {file} is not valid YAML: {first_line(exc)}")
    mark = exc.problem_mark or exc.context_mark
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
    context = f" ({exc.context})" if exc.problem and exc.context else ""
    hint = ("YAML indents with spaces, not tabs: replace the tab" if "'\\t'" in problem
            else "fix the YAML there")
    return MlkubeError(f"config file {file} is not valid YAML{at}: {problem}{context}; {hint}")


def load(path: str | Path | None) -> Config:
    """Load the YAML file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return from_dict({})
    file = Path(path)
    text = _read(file)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    if data is not None and not isinstance(data, dict):
        raise MlkubeError(f"config file {file} must hold a mapping at the top level")
    try:
        return from_dict(data)
    except MlkubeError as exc:
        raise MlkubeError(f"{file}: {exc}") from None


def override(config: Config, dotted: str, value: Any) -> Config:
    """Return a copy of ``config`` with ``dotted`` (e.g. ``data.target``) set to ``value``."""
    data = config.to_dict()
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[leaf] = value
    return from_dict(data)


def parse_json_option(text: str, option: str) -> Any:
    """Parse a JSON-valued command-line option with an error that names it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MlkubeError(f"{option} is not valid JSON ({exc.msg}): {text!r}") from None


def hidden_sizes(value: Any) -> list[int]:
    """Hidden layer sizes from a list or a comma string such as ``"64,32"``."""
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    return [int(v) for v in value]


def model_params(base: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """The model section with ``overrides`` (e.g. tuned parameters) applied and checked."""
    data = dataclasses.asdict(base)
    for key, value in overrides.items():
        try:
            data[key] = hidden_sizes(value) if key == "hidden_sizes" else value
        except (TypeError, ValueError):
            raise MlkubeError(f"config key 'model.{key}' is {value!r}; write layer sizes such as "
                              "'64,32'") from None
    model: ModelConfig = _build(ModelConfig, data, "model")
    _validate_model(model)
    return model


def _candidates(space: ParamSpace) -> list[Any]:
    """The values of a dimension a trial can take at its edges (or all of its choices)."""
    if space.type == "categorical":
        return list(space.choices or [])
    if space.type == "int":
        return [int(space.low or 0), int(space.high or 0)]
    return [space.low, space.high]


def _validate_space(name: str, space: ParamSpace) -> None:
    where = f"tune.search_space.{name}"
    if space.type == "categorical":
        if not space.choices:
            raise MlkubeError(f"config key '{where}.choices' must list at least one value")
        return
    if space.low is None or space.high is None:
        raise MlkubeError(f"config key '{where}' needs both low and high for type {space.type}")
    if space.low > space.high:
        raise MlkubeError(
            f"config key '{where}' has low {space.low} > high {space.high}; swap them"
        )
    if space.log and space.low <= 0:
        raise MlkubeError(f"config key '{where}' is log-scaled, so low must be > 0")


def _validate_candidates(name: str, space: ParamSpace, base: ModelConfig) -> None:
    """Every value a trial may draw must be a valid model parameter (checked now, not in tune)."""
    for value in _candidates(space):
        try:
            model_params(base, {name: value})
        except MlkubeError as exc:
            raise MlkubeError(f"config key 'tune.search_space.{name}' allows {value!r}, which "
                              f"the model rejects: {exc}") from None


def _validate_model_name(name: str) -> None:
    """The registry's rules for a model name (MLflow's), checked before any step runs."""
    if (not name.strip() or "/" in name or ":" in name or posixpath.normpath(name) != name
            or name.startswith("..")):
        raise MlkubeError(
            f"config key 'registry.model_name' is {name!r}; MLflow model names are not empty "
            "and hold no '/' or ':' (and are no path such as '.' or '..'): use e.g. 'team-model'"
        )


def _validate_serving(serving: ServingConfig) -> None:
    if not 0 < serving.port <= 65535:
        raise MlkubeError(f"config key 'serving.port' is {serving.port}, not a TCP port; use 1-65535 "
                          "(1024 and up need no privileges)")
    _positive("serving.max_body_bytes", serving.max_body_bytes)
    _positive("serving.pod_start_timeout", serving.pod_start_timeout)
    _positive("serving.idle_timeout", serving.idle_timeout)
    if not 0 <= serving.canary_share < 1:
        raise MlkubeError(f"config key 'serving.canary_share' is {serving.canary_share}; give the "
                          "share of live requests a new version answers first, in [0, 1) (0 = no "
                          "canary phase)")
    if not 0 < serving.shadow_share <= 1:
        raise MlkubeError(f"config key 'serving.shadow_share' is {serving.shadow_share}; give the "
                          "share of live requests mirrored to a shadow, in (0, 1]")
    if not 0 <= serving.canary_max_error_rate <= 1:
        raise MlkubeError("config key 'serving.canary_max_error_rate' must be in [0, 1], got "
                          f"{serving.canary_max_error_rate}")
    for key in ("canary_requests", "canary_seconds", "canary_max_p99_ms", "shadow_seconds"):
        _positive(f"serving.{key}", getattr(serving, key))
    if serving.host not in ("127.0.0.1", "localhost", "::1"):
        raise MlkubeError(
            f"config key 'serving.host' is {serving.host!r}; the local server binds to "
            "loopback only (127.0.0.1)"
        )


def _validate_live_gate(config: Config) -> None:
    registry = config.registry
    if registry.min_live_requests < 0:
        raise MlkubeError("config key 'registry.min_live_requests' must be >= 0 (0 = no live "
                          f"gate), got {registry.min_live_requests}")
    if not 0 <= registry.min_agreement <= 1:
        raise MlkubeError(f"config key 'registry.min_agreement' must be in [0, 1], got "
                          f"{registry.min_agreement}")
    if registry.max_mean_abs_diff is not None and registry.max_mean_abs_diff < 0:
        raise MlkubeError(f"config key 'registry.max_mean_abs_diff' must be >= 0, got "
                          f"{registry.max_mean_abs_diff}")
    if (registry.min_live_requests and config.data.task == "regression"
            and registry.max_mean_abs_diff is None):
        raise MlkubeError("config key 'registry.min_live_requests' asks for a live gate, but a "
                          "regression's is judged by 'registry.max_mean_abs_diff', which is not "
                          "set: set it (the largest mean |difference| from the champion)")


def _validate_storage(url: str | None) -> None:
    if url is not None and "://" not in url:
        raise MlkubeError(
            f"config key 'tune.storage' is {url!r}, not a database URL; write e.g. "
            "'postgresql://user@host/optuna' or 'sqlite:////path/optuna.db' (null = SQLite in "
            "state_dir)"
        )


def _positive(where: str, value: float) -> None:
    if value <= 0:
        raise MlkubeError(f"config key '{where}' must be positive, got {value}")


def _validate_model(model: ModelConfig) -> None:
    _positive("model.epochs", model.epochs)
    _positive("model.batch_size", model.batch_size)
    _positive("model.learning_rate", model.learning_rate)
    if model.weight_decay < 0:
        raise MlkubeError(f"config key 'model.weight_decay' must be >= 0, got {model.weight_decay}")
    if not model.hidden_sizes or any(h <= 0 for h in model.hidden_sizes):
        raise MlkubeError(f"config key 'model.hidden_sizes' needs positive sizes, got {model.hidden_sizes}")


def validate(config: Config) -> None:
    """Range checks the types alone cannot express."""
    split = config.data.split
    for name in ("validation", "test"):
        fraction = getattr(split, name)
        if not 0 < fraction < 1:
            raise MlkubeError(f"config key 'data.split.{name}' must be in (0, 1), got {fraction}")
    if split.validation + split.test >= 1:
        raise MlkubeError("config keys 'data.split.validation' + 'data.split.test' must be < 1")
    _validate_model(config.model)
    _positive("tune.n_trials", config.tune.n_trials)
    _positive("tune.workers", config.tune.workers)
    _positive("tune.epochs", config.tune.epochs)
    for name, space in config.tune.search_space.items():
        if name not in ModelConfig.__dataclass_fields__ or name == "seed":
            raise MlkubeError(
                f"config key 'tune.search_space.{name}' is not a model parameter; "
                "use learning_rate, hidden_sizes, batch_size, epochs or weight_decay"
            )
        _validate_space(name, space)
        _validate_candidates(name, space, config.model)
    _validate_storage(config.tune.storage)
    if config.registry.margin < 0:
        raise MlkubeError(f"config key 'registry.margin' must be >= 0, got {config.registry.margin}")
    _validate_model_name(config.registry.model_name)
    _validate_live_gate(config)
    _validate_serving(config.serving)
    _positive("monitor.psi_threshold", config.monitor.psi_threshold)
    _positive("monitor.prediction_psi_threshold", config.monitor.prediction_psi_threshold)
    _positive("monitor.min_rows", config.monitor.min_rows)
    _positive("monitor.sample_rows", config.monitor.sample_rows)
