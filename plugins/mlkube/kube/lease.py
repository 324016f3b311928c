"""One holder at a time: a ``coordination.k8s.io/v1`` Lease, taken the way client-go's leader
election takes one.

The deploy step holds ``mlkube-deploy-<service>`` while it changes what serves, so two deploys
of one model never apply over each other: the second waits, and fails with one line naming the
holder when the holder keeps renewing. A holder that was killed stops renewing; its Lease is
taken over once its record has not changed for ``leaseDurationSeconds`` as this process
observed it (its own clock, as client-go does, so clock skew between pods does not matter).
Every write is an update against the ``resourceVersion`` read, so of two takers one wins and
the other gets 409 and reads again.

Needs ``get``, ``create`` and ``update`` on ``leases`` (in the deploy Role,
:data:`mlkube.kube.serving.DEPLOY_RULES`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes.client.exceptions import ApiException

from mlkube import spec
from mlkube.errors import Busy, MlkubeError
from mlkube.kube.api import call

#: Seconds a holder's Lease stays valid without a renewal; renewed every third of it.
LEASE_SECONDS = 30
#: How long a second taker waits by default: long enough to take over a killed holder's Lease.
WAIT_SECONDS = spec.MODEL_LOCK_WAIT
POLL_SECONDS = 2.0

Log = Callable[[str], Any]


def identity() -> str:
    """Who holds: the pod's name (its hostname) and this process."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def _now() -> datetime:
    return datetime.now(UTC)


class Lease:
    """A Lease named ``name`` in ``namespace``, held by ``holder`` while :meth:`held` runs."""

    def __init__(self, api_client: ApiClient, namespace: str, name: str, *,
                 holder: str | None = None, seconds: int = LEASE_SECONDS,
                 wait: float = WAIT_SECONDS, poll: float = POLL_SECONDS,
                 log: Log = print) -> None:
        self.api = CoordinationV1Api(api_client)
        self.host = str(api_client.configuration.host)
        self.namespace, self.name = namespace, name
        self.holder = holder or identity()
        self.seconds, self.wait, self.poll, self.log = seconds, wait, poll, log
        self.lost: str | None = None  # who took it while we held it
        self._rv = ""
        self._stop = threading.Event()

    @property
    def where(self) -> str:
        """The Lease as a line names it."""
        return f"Lease {self.namespace}/{self.name}"

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``; a refusal other than 404 or 409 (which the caller handles) as one line."""
        return call(f"{what} {self.where}", self.host, fn, passing=(404, 409))

    def _spec(self, transitions: int, acquired: datetime | None = None) -> V1LeaseSpec:
        now = _now()
        return V1LeaseSpec(holder_identity=self.holder, lease_duration_seconds=self.seconds,
                           acquire_time=acquired or now, renew_time=now,
                           lease_transitions=transitions)

    def _read(self) -> V1Lease | None:
        try:
            return self._call("read", lambda: self.api.read_namespaced_lease(self.name,
                                                                             self.namespace))
        except ApiException:  # 404: released and deleted meanwhile
            return None

    def _replace(self, lease: V1Lease, spec: V1LeaseSpec) -> V1Lease | None:
        """Write ``spec`` over ``lease`` as read; ``None`` when someone wrote in between."""
        body = V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=V1ObjectMeta(name=self.name, namespace=self.namespace,
                                             resource_version=lease.metadata.resource_version),
                       spec=spec)
        try:
            return self._call("update", lambda: self.api.replace_namespaced_lease(
                self.name, self.namespace, body))
        except ApiException:
            return None

    def _create(self) -> V1Lease:
        body = V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
                       spec=self._spec(0))
        return self.api.create_namespaced_lease(self.namespace, body)

    def acquire(self) -> None:
        """Take the Lease; wait up to ``wait`` s while another holder renews it, then fail."""
        deadline = time.monotonic() + self.wait
        seen: tuple[str, float] = ("", 0.0)  # the holder's record and when it last changed
        waiting = False
        while True:
            try:
                made = self._call("create", self._create)
                self._rv = made.metadata.resource_version
                return
            except ApiException:  # 409 AlreadyExists: somebody holds it, or held it
                pass
            lease = self._read()
            if lease is None:
                continue
            spec = lease.spec or V1LeaseSpec()
            rv = str(lease.metadata.resource_version)
            if rv != seen[0]:
                seen = (rv, time.monotonic())
            holder = spec.holder_identity
            duration = spec.lease_duration_seconds or self.seconds
            expired = time.monotonic() - seen[1] >= duration
            if not holder or holder == self.holder or expired:
                if holder and holder != self.holder:
                    self.log(f"taking over {self.where} from {holder}: not renewed for "
                             f"{duration} s")
                taken = self._replace(lease, self._spec((spec.lease_transitions or 0) + 1))
                if taken is not None:
                    self._rv = taken.metadata.resource_version
                    return
                continue
            if not waiting:
                self.log(f"another deploy holds {self.where} ({holder}): waiting up to "
                         f"{self.wait:g} s for it")
                waiting = True
            if time.monotonic() >= deadline:
                renewed = spec.renew_time.isoformat() if spec.renew_time else "never"
                raise Busy(f"another deploy holds {self.where}: {holder} (renewed {renewed}); "
                           f"it was still renewing after {self.wait:g} s of waiting; this one "
                           "changed nothing: run it again once that deploy has finished")
            time.sleep(self.poll)

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                lease = self._read()
                spec = lease.spec if lease is not None else None
                if lease is None or spec is None or spec.holder_identity != self.holder:
                    self.lost = (spec.holder_identity if spec else None) or "nobody"
                    self.log(f"lost {self.where} to {self.lost}")
                    return
                renewed = self._replace(lease, self._spec(spec.lease_transitions or 0,
                                                          spec.acquire_time))
                if renewed is not None:
                    self._rv = renewed.metadata.resource_version
            except MlkubeError as exc:  # the API away for a moment: try at the next period
                self.log(f"could not renew {self.where}: {exc}")

    def check(self) -> None:
        """Fail if another holder took the Lease while this one held it."""
        if self.lost is not None:
            raise MlkubeError(f"{self.where} was taken by {self.lost} while this deploy held "
                              "it (its renewals failed for longer than the lease): stopping "
                              "before changing anything more")

    def release(self) -> None:
        """Give the Lease up (holder cleared), if this one still holds it."""
        lease = self._read()
        spec = lease.spec if lease is not None else None
        if lease is None or spec is None or spec.holder_identity != self.holder:
            return
        released = V1LeaseSpec(holder_identity=None, lease_duration_seconds=1,
                               lease_transitions=spec.lease_transitions)
        self._replace(lease, released)

    @contextmanager
    def held(self) -> Iterator[Lease]:
        """Hold the Lease for the block, renewing it; give it up after. A Lease another holder
        took meanwhile fails the block at its end (:meth:`check`)."""
        self.acquire()
        self._stop.clear()
        renewer = threading.Thread(target=self._renew, name=f"renew {self.name}", daemon=True)
        renewer.start()
        try:
            yield self
            self.check()
        finally:
            self._stop.set()
            renewer.join()
            try:
                self.release()
            except MlkubeError as exc:  # it expires by itself in `seconds`
                self.log(f"could not release {self.where}: {exc}")
