"""A step template's input and output parameters, derived from the step's description.

Which options become input parameters follows one rule, so that a new option in
:mod:`mlkube.spec` either lands in the templates or fails the render until it is placed:

- options the template sets itself (:data:`TEMPLATE_SET`): never inputs;
- options that set a config key: set through the ``config`` input, the lifecycle config
  document (YAML) the step reads with ``--config``. Argo cannot leave an argument out, so a
  parameter per config key would always override the document with its default;
- other required options: inputs without a default (``--run-id`` → ``run-id``);
- other optional options: inputs when omitting them has a written form
  (:data:`OPTIONAL_DEFAULTS`) or the option has a value in a pod with the artifact volume (its
  ``pod_default``, the input's default: every template mounts the volume), left to the step's
  own default otherwise (:data:`DERIVED`).

Outputs: one output parameter per result key, read from the file the step writes for it
under :data:`OUTPUTS_DIR` (``MLKUBE_OUTPUTS_DIR``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlkube.errors import MlkubeError
from mlkube.result import OUTPUTS_DIR_ENV
from mlkube.spec import Option, StepSpec

if TYPE_CHECKING:
    from hera.workflows.models import Artifact, Inputs, Outputs

OUTPUTS_DIR = "/tmp/mlkube/outputs"
# Outside /tmp/mlkube: a file mounted there would leave that directory root-owned.
CONFIG_PATH = "/etc/mlkube/config.yaml"
CONFIG_INPUT = "config"
# Set by the template: the config file, where results go, lineage, the tune role.
TEMPLATE_SET = frozenset({"config", "artifact_root", "result_file", "pipeline_run_id", "role",
                          "service_name", "result_only"})
# Optional options whose "not given" has a written form.
OPTIONAL_DEFAULTS = {"params": "{}", "version": "", "target": "auto", "canary_percent": "0",
                     "reason": "", "no_data": "error"}
# Optional options left out: the step derives a value every caller agrees on.
DERIVED = frozenset({"study_name", "run_key", "alias", "namespace", "server_image", "windows",
                     "since"})


def input_name(option: Option) -> str:
    """The input parameter's name: the flag without dashes (``--run-id`` → ``run-id``)."""
    return option.flag.removeprefix("--")


def input_options(spec: StepSpec) -> list[Option]:
    """The options of ``spec`` that a caller sets through input parameters."""
    chosen = []
    for option in spec.options:
        if option.dest in TEMPLATE_SET or option.config_key:
            continue
        if option.required or option.dest in OPTIONAL_DEFAULTS or option.pod_default is not None:
            chosen.append(option)
        elif option.dest not in DERIVED:
            raise MlkubeError(
                f"step {spec.name} option {option.flag} has no Argo input rule: add it to "
                "OPTIONAL_DEFAULTS or DERIVED in mlkube/argo/io.py"
            )
    return chosen


def step_values(spec: StepSpec, fixed: dict[str, Any]) -> dict[str, Any]:
    """Option values for :func:`mlkube.kube.pod.step_pod`: input placeholders and ``fixed``."""
    values: dict[str, Any] = {"config": CONFIG_PATH, "pipeline_run_id": "{{workflow.name}}"}
    for option in input_options(spec):
        values[option.dest] = f"{{{{inputs.parameters.{input_name(option)}}}}}"
    return {**values, **fixed}


def step_inputs(spec: StepSpec) -> Inputs:
    """The config document (as a file) and one parameter per input option."""
    from hera.workflows.models import Inputs, Parameter

    params = [Parameter(name=CONFIG_INPUT, default="{}",
                        description="lifecycle config (YAML); its defaults apply where it is silent")]
    for option in input_options(spec):
        params.append(Parameter(name=input_name(option), description=option.help,
                                default=OPTIONAL_DEFAULTS.get(option.dest, option.pod_default)))
    return Inputs(parameters=params, artifacts=[config_artifact()])


def config_artifact() -> Artifact:
    """The ``config`` parameter written to :data:`CONFIG_PATH` before the step starts."""
    from hera.workflows.models import Artifact, RawArtifact

    return Artifact(name=CONFIG_INPUT, path=CONFIG_PATH,
                    raw=RawArtifact(data=f"{{{{inputs.parameters.{CONFIG_INPUT}}}}}"))


def step_outputs(spec: StepSpec) -> Outputs:
    """One output parameter per result key, read from ``OUTPUTS_DIR/<key>``."""
    from hera.workflows.models import Outputs, Parameter, ValueFrom

    return Outputs(parameters=[Parameter(name=key, value_from=ValueFrom(path=f"{OUTPUTS_DIR}/{key}"))
                               for key in spec.result_keys])


def outputs_env() -> dict[str, str]:
    """The environment that makes a step write each result key to a file of its own."""
    return {OUTPUTS_DIR_ENV: OUTPUTS_DIR}
