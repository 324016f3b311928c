"""Run the deploy step and SIGKILL it at one phase: a test's stand-in for an OOM kill, a lost
node or ``kubectl delete pod --grace-period=0 --force`` of the deploy pod.

``python tests/killed_deploy.py PHASE [DEPLOY OPTIONS...]`` runs ``mlkube.steps.deploy`` with
the options; at PHASE (one of :data:`PHASES`) the process kills itself with SIGKILL, so nothing
of it runs after that point (no ``finally``, no rollback, no lease given up). ``none`` runs the
step unkilled. ``MLKUBE_TEST_LEASE_SECONDS`` shortens the cluster Lease (and the wait for it)
in this process, so a test need not wait 30 s for a killed holder's Lease to lapse.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PHASES = ("after_apply", "after_ready", "after_smoke", "after_promote", "before_alias",
          "after_slot")


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    def killed_after(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            _kill()
        return result

    setattr(owner, name, killed_after)


def arm(phase: str) -> None:
    """Patch the step so that it dies at ``phase``."""
    from mlkube.steps import deploy
    from mlkube.targets import base, cluster, deployment, kserve, local

    if phase == "after_apply":  # the serving object's apply reached the API server (a cluster)
        _after(cluster.ClusterTarget, "_apply", lambda self, body: body["kind"] in (
            "Deployment", "InferenceService"))
        _after(local.LocalTarget, "roll_out")  # locally the apply is the hot swap itself
    elif phase == "after_ready":
        _after(cluster.ClusterTarget, "roll_out")
        _after(local.LocalTarget, "roll_out")
    elif phase == "after_smoke":
        _after(deploy, "smoke_test")
    elif phase == "after_promote":
        _after(base.ServingTarget, "promote")
        _after(kserve.KServeTarget, "promote")
        _after(deployment.DeploymentTarget, "promote")
        _after(local.LocalTarget, "promote")  # its own since it unloads a leftover canary
    elif phase == "after_slot":  # a canary (or shadow) loaded beside the serving version
        _after(local.LocalTarget, "load_slot")
        _after(deployment.DeploymentTarget, "load_slot")
        _after(kserve.KServeTarget, "load_slot")
    elif phase == "before_alias":
        deploy._record_serving = lambda *args, **kwargs: _kill()  # type: ignore[assignment]
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase!r}; one of {', '.join(PHASES)} or none")


def shorten_lease() -> None:
    seconds = os.environ.get("MLKUBE_TEST_LEASE_SECONDS")
    if not seconds:
        return
    from mlkube.kube import lease

    init: Any = lease.Lease.__init__
    init.__kwdefaults__ = {**init.__kwdefaults__, "seconds": int(seconds),
                           "wait": float(seconds) * 2 + 1, "poll": 0.2}


def main() -> int:
    phase, *options = sys.argv[1:]
    arm(phase)
    shorten_lease()
    from mlkube.steps import deploy

    return deploy.main(options)


if __name__ == "__main__":
    sys.exit(main())
