"""Parse-time checks of operator parameters, with errors that name the task and the fix.

Only values known when the DAG is parsed are checked; templates and upstream outputs
(``task.output[...]``) are checked by the step when the task runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube.errors import MlkubeError
from mlkube.kube import validation
from mlkube.kube.pod import Placement
from mlkube.spec import Option

_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def templated(value: Any) -> bool:
    """Whether ``value`` is only known when the task runs (a template or an upstream output)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return not isinstance(value, int | float | bool | dict | list | tuple) and value is not None


def placement(fields: Mapping[str, Any], what: str) -> None:
    """Check image, cpu, memory, gpus and shm_size (those not templated)."""
    Placement(**{k: v for k, v in fields.items() if not templated(v)}).validated(what)


def option(opt: Option, value: Any, where: str) -> None:
    """Check one step option's value: required, type, JSON, choices.

    Args:
        opt: the step's option.
        value: the operator parameter's value.
        where: names the task and parameter in the error, e.g. ``task 'train': epochs``.
    """
    if value is None:
        if opt.required:
            raise MlkubeError(f"{where} is required ({opt.help})")
        return
    if templated(value):
        return
    allowed = _TYPES.get(opt.kind)
    if allowed and (isinstance(value, bool) or not isinstance(value, allowed)):
        raise MlkubeError(f"{where} is {value!r}; it must be {opt.kind} ({opt.help})")
    if opt.kind == "json" and isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise MlkubeError(f"{where} is not valid JSON ({exc.msg}): {value!r}") from None
    if opt.choices and value not in opt.choices:
        raise MlkubeError(f"{where} is {value!r}; use one of: {', '.join(opt.choices)}")
    if opt.config_key is not None:  # the same rules as the config key it sets
        setting = json.loads(value) if opt.kind == "json" and isinstance(value, str) else value
        try:
            configmod.override(configmod.Config(), opt.config_key, setting)
        except MlkubeError as exc:
            raise MlkubeError(f"{where}: {exc}") from None


def namespace(value: Any, where: str) -> None:
    """A namespace the API server accepts (a DNS-1123 label)."""
    if value is not None and not templated(value):
        validation.dns1123_label(value, where)


def config_file(path: Any, where: str) -> None:
    """Load a config file that is already readable where the DAG is parsed (else: at run time)."""
    if path is None or templated(path) or not Path(path).is_file():
        return
    try:
        configmod.load(path)
    except MlkubeError as exc:
        raise MlkubeError(f"{where}: {exc}") from None
