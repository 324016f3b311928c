"""The Hera source of the YAML in this folder: ``python workflows/build.py`` (= ``mlkube argo render``).

The objects are built in ``plugins/mlkube/argo`` from the step descriptions; this script only
chooses the options and writes them out. To render for your cluster, change the options here
(or pass flags to ``mlkube argo render``) and write somewhere else than workflows/: a test
compares this folder with a render at the defaults.

    mlkube-steps.yaml          WorkflowTemplate: one template per step (templateRef these)
    mlkube-lifecycle.yaml      WorkflowTemplate: the lifecycle DAG
    mlkube-lifecycle-run.yaml  Workflow: one run of the lifecycle
    mlkube-retrain.yaml        CronWorkflow: scheduled retraining, skipping unchanged data
    mlkube-rbac.yaml           ServiceAccounts, Roles and RoleBindings they run under
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render
from mlkube.rendered import write

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Write the YAML (to this folder unless --out says otherwise)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    options = RenderOptions(
        workers=2,                   # tune pods fanned out
        parallelism=2,               # at most this many lifecycle pods at once
        schedules=("0 3 * * *",),    # retrain nightly at 03:00 UTC
        gpu_product=None,            # e.g. "NVIDIA-H100-80GB-HBM3" to pin training
        model_name="mlkube-demo",    # the config's registry.model_name: register and deploy
                                     # hold its mutex (mlkube-mlkube-demo), one at a time
    )
    for path in write(render(options), args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
