"""The step descriptions: one per step, rendered into arguments every adapter uses."""

from __future__ import annotations

import importlib

import pytest

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.steps._main import _parser


def test_five_steps_in_lifecycle_order_then_monitor() -> None:
    assert list(spec.STEPS) == ["prepare-data", "tune", "train", "register", "deploy", "monitor"]


@pytest.mark.parametrize("step", list(spec.STEPS.values()), ids=list(spec.STEPS))
def test_each_step_program_parses_exactly_its_spec(step: spec.StepSpec) -> None:
    module = importlib.import_module(step.module)
    assert module.SPEC is step
    parser = _parser(step)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    assert flags == {o.flag for o in step.options}


def test_arguments_render_json_and_skip_none() -> None:
    args = spec.TRAIN.arguments({"dataset": "/d", "params": {"b": 1, "a": 2}, "run_key": None})
    assert args == ["--dataset", "/d", "--params", '{"a": 2, "b": 1}']


def test_arguments_reject_unknown_and_missing() -> None:
    with pytest.raises(MlkubeError, match="has no option 'datset'"):
        spec.TRAIN.arguments({"datset": "/d"})
    with pytest.raises(MlkubeError, match="needs --dataset"):
        spec.TRAIN.arguments({"epochs": 3})


def test_step_modules_import_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys, mlkube.cli, mlkube.spec, mlkube.steps.train, mlkube.steps.tune, "
            "mlkube.steps.register, mlkube.steps.deploy, mlkube.steps.prepare_data, "
            "mlkube.steps.monitor, mlkube.drift;"
            "print(sorted(m for m in ('mlflow','torch','optuna','hera','pandas','airflow',"
            "'kubernetes','matplotlib','numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
