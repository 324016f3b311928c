"""The contract every serving target keeps (local process, Deployment, KServe).

The deploy step drives a target through the same sequence everywhere::

    previous = target.live_version()          # what serves now (None: nothing)
    target.roll_out(version, model_uri)       # load + verify aside, then switch, no dropped requests
    smoke-test rows through target.endpoint   # the published URL, which never changes
    target.promote()                          # e.g. KServe canary -> 100 %
    # on any failure: target.roll_back(previous), then one error line

all inside ``with target.exclusive():``, so two deploys of one model never interleave.

Invariants each target keeps:

- ``roll_out`` proves the version loads and answers (the serving runtime predicts the model's
  own input example; on a cluster: readiness that means exactly that) before it takes traffic;
  when that fails, the previous version still takes all traffic and ``roll_out`` raises
  :class:`~mlkube.errors.MlkubeError` with the reason (a cluster target: the container's own
  reason, e.g. its last termination message, CrashLoopBackOff, FailedScheduling, an image pull
  error — never a bare timeout).
- The switch drops no request: locally the running server swaps models in place; a Deployment
  rolls with ``maxUnavailable: 0`` gated by readiness; KServe moves traffic by revision.
- ``roll_back(None)`` means nothing served before: stop serving what ``roll_out`` started.
- ``roll_back(version)`` serves ``version`` whatever the live objects hold: a deploy killed
  after its apply leaves the new version on them, and its retry rolls back to what MLflow's
  ``serving`` alias recorded, rendered again.
- Every method is idempotent: called again with the same arguments it changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlkube.errors import MlkubeError


class ServingTarget(ABC):
    """One place a registered model is served, behind one published endpoint."""

    #: ``local``, ``deployment`` or ``kserve``.
    name: str

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The published base URL of the V2 server (the same for every version)."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model's name on the V2 server (``/v2/models/<model_name>``)."""

    @abstractmethod
    def live_version(self) -> str | None:
        """The registered version that serves and answers now, or ``None``."""

    @abstractmethod
    def roll_out(self, version: str, model_uri: str) -> None:
        """Load and verify ``version`` aside, then give it the traffic without dropping any."""

    def promote(self) -> None:
        """After the smoke test passed: finish the rollout (a canary takes all traffic)."""
        return None  # most targets give the new version all traffic in roll_out

    @abstractmethod
    def roll_back(self, version: str | None) -> None:
        """Serve ``version`` again (``None``: nothing served before: stop serving)."""

    # -- slots beside the serving version (issue 17, items 4 and 5) -------------------------
    #: Whether the runtime behind the endpoint holds a canary and a shadow beside the serving
    #: version and reports their live numbers (the methods below): the local target (one
    #: server) and the Deployment target (each ready pod's runtime, numbers pooled); KServe:
    #: the shadow (and in raw-deployment mode the canary) is a slot in the serving pods'
    #: runtimes, the serverless canary a revision of its own taking ``canaryTrafficPercent``.
    live_slots: bool = False
    #: The slots it holds.
    slot_roles: tuple[str, ...] = ("canary", "shadow")

    def slot_url(self, role: str) -> str:
        """The base URL where the ``role`` slot answers its versioned URL: the published one,
        where the runtime behind it holds the slot (KServe: the canary revision's tag route)."""
        return self.base_url

    def load_slot(self, role: str, version: str, model_uri: str, share: float) -> None:
        """Load and verify ``version`` aside into the ``canary`` or ``shadow`` slot, taking
        ``share`` of the live requests (a canary answers them; a shadow gets mirrors)."""
        raise MlkubeError(f"the {self.name} target has no {role} slot beside the serving "
                          "version")

    def unload_slot(self, role: str) -> None:
        """Empty the ``role`` slot (nothing there: nothing to do)."""
        return None

    def promote_slot(self, role: str) -> None:
        """Make the ``role`` slot's version the serving one, in one step."""
        raise MlkubeError(f"the {self.name} target has no {role} slot to promote")

    def live_numbers(self) -> dict[str, Any]:
        """The runtime's live numbers (``GET /v2/models/{name}/live``): ``main``, ``canary``,
        ``shadow``, each ``None`` or its version, requests, errors, p99_ms (and a shadow's
        agreement or mean_abs_diff)."""
        raise MlkubeError(f"the {self.name} target reports no live numbers")

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this model's deploy lock for the block: a second deploy waits for it, then
        fails with one line naming the holder (:class:`mlkube.kube.lease.Busy`, exit 75)."""
        yield
