"""The wait for a multi-node training Job: why its pods wait, and nothing left running when the
wait ends without the Job complete (against the fake API server)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from fake_apiserver import FakeApiServer, Outcome

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.kube import multinode
from mlkube.kube.pod import Placement, step_pod

REASON = ("0/2 nodes are available: 1 node(s) didn't match PersistentVolume's node affinity, "
          "1 Insufficient nvidia.com/gpu.")


def _job(api: FakeApiServer, name: str) -> list[object]:
    """The Job's objects, and its second pod, which the scheduler cannot place."""
    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement(gpus=2))
    objects = multinode.indexed_job(parts, name=name, namespace=None, nodes=2)
    template = {"metadata": {"labels": {multinode.JOB_NAME_LABEL: name}},
                "spec": {"containers": [{"name": "train", "image": spec.GPU_IMAGE}]}}
    api.pod("ml", f"{name}-1", template, Outcome("unschedulable", message=REASON))
    return objects


def test_a_pod_never_scheduled_fails_the_wait_with_the_schedulers_reason_and_the_job_goes() -> None:
    with FakeApiServer(ready_after=10**9) as api:  # the Job would wait for ever
        objects = _job(api, "mlkube-train-3")
        with pytest.raises(MlkubeError) as failed:
            multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.02,
                              schedule_timeout_seconds=0.2, log=print)
        message = str(failed.value)
        assert message.startswith("training Job ml/mlkube-train-3: pod mlkube-train-3-1-")
        assert message.endswith(f"was not scheduled within 0 s: {REASON}")
        assert api.get("Job", "mlkube-train-3") is None  # deleted: nothing trains on


def test_a_timed_out_wait_says_why_the_pods_wait_and_deletes_the_job() -> None:
    with FakeApiServer(ready_after=10**9) as api:
        objects = _job(api, "mlkube-train-4")
        with pytest.raises(MlkubeError, match=r"^training Job ml/mlkube-train-4 did not complete "
                                              r"within 0 s: pod mlkube-train-4-1-\w+ is not "
                                              r"scheduled: 0/2 nodes are available"):
            multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.02,
                              timeout_seconds=0.2, schedule_timeout_seconds=60, log=print)
        assert api.get("Job", "mlkube-train-4") is None


def test_a_task_stopped_while_it_waits_leaves_no_job_behind() -> None:
    """AirflowTaskTimeout, or a SIGTERM made KeyboardInterrupt: the Job goes with the task."""
    with FakeApiServer(ready_after=10**9) as api:
        objects = _job(api, "mlkube-train-5")
        def stop_once_it_waits() -> None:  # Ctrl-C, or the SIGTERM run_step makes one
            deadline = time.monotonic() + 60
            while not api.applies("Job") and time.monotonic() < deadline:
                time.sleep(0.02)
            if api.applies("Job"):  # never a stray Ctrl-C into another test
                time.sleep(0.2)  # the wait has begun
                os.kill(os.getpid(), signal.SIGINT)

        stopper = threading.Thread(target=stop_once_it_waits, daemon=True)
        stopper.start()
        with pytest.raises(KeyboardInterrupt):
            multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.02,
                              schedule_timeout_seconds=60, log=print)
        stopper.join()
        assert api.applies("Job")  # it was created, and waited for
        assert api.get("Job", "mlkube-train-5") is None
