"""The deploy step's gates on live traffic (issue 17, items 4 and 5), on a target whose runtime
holds slots beside the serving version (``target.live_slots``): the local target (one server),
the Deployment target (every ready pod's runtime, through the API server's pod proxy, its
numbers pooled: :mod:`mlkube.targets.deployment`), and the KServe target
(:mod:`mlkube.targets.kserve`: the shadow a slot in the serving revision's pods, reached and
pooled the same way; the canary a revision taking ``canaryTrafficPercent``, smoke-tested by its
tag route, or in raw-deployment mode a slot in every predictor pod).

**The canary phase** (``serving.canary_share`` > 0, a version already serving): the new version
is loaded and verified into the runtime's ``canary`` slot, where it answers that share of the
live requests; it is smoke-tested by its own versioned URL; then the deploy waits for the
window: ``serving.canary_requests`` live requests of the canary, for at most
``serving.canary_seconds``. It is promoted (locally the runtime makes it the main model in one
step; a Deployment is rolled to it a pod at a time) only if its error rate (answers 5xx) is
at most ``serving.canary_max_error_rate`` and its p99 latency at most
``serving.canary_max_p99_ms``; otherwise it is unloaded and the rollout fails
with one line naming the bound (the deploy step then says which version serves). A deploy of
the ``champion`` alias whose canary broke a bound also gives ``champion`` back to the version
that serves again (:func:`canary_rolled_back`; the shadow gate may have moved it to the canary
in the same deploy): the worse version is not deployed again by every later deploy of the
champion, and its ``mlkube.gate`` tag records the canary's verdict. Too few requests in the
window is a failure too (fail safe: a version no traffic judged is not promoted on offline
evidence alone; send traffic, lengthen the window, or set ``serving.canary_share: 0``); it
stays ``champion``, and the next deploy canaries it again.

**The shadow gate** (``registry.min_live_requests`` > 0): register gives a challenger that is
better offline the ``challenger`` alias, tagged ``mlkube.gate: awaiting live evidence ...``,
instead of ``champion``, when a champion exists. Deploy (this module's :func:`judge_shadow`,
under the deploy lock, before it resolves what to serve) loads that challenger as the runtime's
``shadow`` beside the serving champion, where it gets ``serving.shadow_share`` of the live
requests mirrored off the request path, and waits up to ``serving.shadow_seconds`` for
``registry.min_live_requests`` of them. Then the challenger takes ``champion`` only if it
agreed with the champion on at least ``registry.min_agreement`` of the rows (a classifier's
labels) or differed by at most ``registry.max_mean_abs_diff`` on average (a regression); the
tag records the verdict either way. Too few mirrored requests: the champion stays, the shadow
keeps mirroring, and the next deploy judges it on what it has counted by then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlkube.errors import MlkubeError

if TYPE_CHECKING:
    from mlkube.config import RegistryConfig, ServingConfig
    from mlkube.targets.base import ServingTarget

POLL = 0.25  # seconds between reads of the live numbers
TAG_GATE = "mlkube.gate"
AWAITING = "awaiting live evidence"
CHAMPION, CHALLENGER = "champion", "challenger"


class CanaryFailed(MlkubeError):
    """The canary broke a bound, or too few requests judged it; it was unloaded (the message
    names the bound). ``verdict``: the bound in words; ``worse``: a bound broken (its error
    rate or p99), not too few requests."""

    def __init__(self, version: str, verdict: str, *, worse: bool) -> None:
        super().__init__(f"canary v{version}: {verdict}")
        self.verdict, self.worse = verdict, worse


def _wait(target: ServingTarget, role: str, enough: Callable[[dict[str, Any]], bool],
          seconds: float) -> tuple[dict[str, Any], float]:
    """The ``role`` slot's live numbers once ``enough`` says so, or after ``seconds``."""
    started = time.monotonic()
    while True:
        numbers = target.live_numbers().get(role)
        if numbers is None:
            raise MlkubeError(f"the {role} slot emptied while the deploy watched it (another "
                              "client of the runtime unloaded it)")
        waited = time.monotonic() - started
        if enough(numbers) or waited >= seconds:
            return numbers, waited
        time.sleep(POLL)


def _ms(value: float) -> str:
    """Milliseconds in words: whole from 10 ms, else two significant digits (a p99 of 0.4 ms
    over a bound of 0.1 ms reads so, not "0 ms over the bound 0.1 ms")."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def broken_bound(numbers: dict[str, Any], config: ServingConfig) -> str | None:
    """Which bound (error rate, p99) the canary's live ``numbers`` break, in words (``None``:
    none): the canary is worse than the bounds allow."""
    n, errors, p99 = numbers["requests"], numbers["errors"], numbers["p99_ms"]
    over = f"over {n} request{'s' if n != 1 else ''}"
    if n and errors / n > config.canary_max_error_rate:
        return (f"error rate {errors / n:.1%} ({errors} of {n} requests failed) over the "
                f"bound {config.canary_max_error_rate:.1%} (serving.canary_max_error_rate)")
    if p99 is not None and p99 > config.canary_max_p99_ms:
        return (f"p99 {_ms(p99)} ms over the bound {config.canary_max_p99_ms:g} ms "
                f"(serving.canary_max_p99_ms) {over}")
    return None


def canary_verdict(numbers: dict[str, Any], config: ServingConfig,
                   waited: float) -> str | None:
    """Which bound the canary's live ``numbers`` break, in words (``None``: none): a bound
    (:func:`broken_bound`), or too few requests in the window."""
    n = numbers["requests"]
    broken = broken_bound(numbers, config)
    if broken is not None:
        return broken
    if n < config.canary_requests:
        return (f"only {n} live request{'s' if n != 1 else ''} in {waited:.0f} s, the window "
                f"asks {config.canary_requests} (serving.canary_requests); not promoted on "
                "offline evidence alone")
    return None


def canary(target: ServingTarget, version: str, model_uri: str, config: ServingConfig,
           smoke: Callable[[], None], log: Callable[[str], Any]) -> dict[str, Any]:
    """The canary phase of ``version`` (see the module doc); its live numbers when promoted,
    else :class:`CanaryFailed` after unloading it."""
    target.load_slot("canary", version, model_uri, config.canary_share)
    try:
        smoke()
        log(f"canary v{version} answers {config.canary_share:.0%} of the live requests: "
            f"waiting for {config.canary_requests} of them (at most {config.canary_seconds:g} s)")
        # An error rate over the bound for the whole window already: no need to wait it out.
        worst = config.canary_max_error_rate * config.canary_requests
        numbers, waited = _wait(target, "canary", lambda n: n["requests"] >= config.
                                canary_requests or n["errors"] > worst, config.canary_seconds)
        failed = canary_verdict(numbers, config, waited)
    except BaseException:
        target.unload_slot("canary")
        raise
    if failed is not None:
        target.unload_slot("canary")
        raise CanaryFailed(version, failed, worse=broken_bound(numbers, config) is not None)
    target.promote_slot("canary")
    log(f"canary v{version}: error rate {numbers['error_rate']:.1%}, p99 "
        f"{_ms(numbers['p99_ms'])} ms over {numbers['requests']} requests, within the bounds: "
        "promoted")
    return numbers


def canary_rolled_back(name: str, version: str, serving: str, failed: CanaryFailed,
                       log: Callable[[str], Any]) -> None:
    """After the canary of the ``champion`` ``version`` broke a bound (``failed.worse``) and
    ``serving`` serves again: ``champion`` goes back to ``serving``, and the version's gate tag
    records the canary's verdict after the shadow's (``live: ...``, which register keeps: the
    version is not shadowed again). Nothing changes where ``champion`` names another version
    by now. A failure to write is logged; the rollback stands either way."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking
    from mlkube.errors import first_line

    try:
        client = tracking.client()
        champion = _alias(client, name, CHAMPION)
        if champion is None or str(champion.version) != version:
            return
        before = str(champion.tags.get(TAG_GATE, ""))
        words = f"canary {failed.verdict}: rolled back, champion v{serving} restored"
        client.set_registered_model_alias(name, CHAMPION, serving)
        client.set_model_version_tag(name, version, TAG_GATE, f"{before}; {words}" if before.
                                     startswith("live:") else f"live: {words}")
    except (MlflowException, OSError) as exc:
        log(f"canary v{version} was rolled back, but MLflow did not take the {CHAMPION} alias "
            f"back to v{serving} ({first_line(exc)}): it still names v{version}")
        return
    log(f"canary v{version} rolled back: the {CHAMPION} alias is v{serving} again")


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def awaiting(offline: str, registry: RegistryConfig) -> str:
    """The tag register gives a challenger better offline while the live gate is on."""
    return (f"{AWAITING}: better offline ({offline}); takes {CHAMPION} after "
            f"{registry.min_live_requests} live requests shadowed beside it")


def shadow_verdict(numbers: dict[str, Any], registry: RegistryConfig) -> tuple[bool, str]:
    """Whether the shadow's live ``numbers`` pass the gate, and the numbers in words."""
    n = numbers["requests"]
    if numbers.get("agreement") is not None:
        agreement = numbers["agreement"]
        passed = agreement >= registry.min_agreement
        return passed, (f"agreement {agreement:.3f} {'>=' if passed else 'under'} "
                        f"{registry.min_agreement:g} over {n} live requests")
    diff = numbers.get("mean_abs_diff")
    bound = registry.max_mean_abs_diff
    if diff is None or bound is None:
        return False, (f"no agreement measured over {n} live requests (errors: "
                       f"{numbers['errors']}); a regression needs registry.max_mean_abs_diff")
    passed = diff <= bound
    return passed, (f"mean |difference| {diff:.4g} {'<=' if passed else 'over'} {bound:g} over "
                    f"{n} live requests")


def judge_shadow(target: ServingTarget, name: str, registry: RegistryConfig,
                 config: ServingConfig, log: Callable[[str], Any]) -> str | None:
    """The shadow gate (see the module doc); the version that took ``champion``, else
    ``None``."""
    from mlkube import tracking

    client = tracking.client()
    challenger = _alias(client, name, CHALLENGER)
    if challenger is None or not str(challenger.tags.get(TAG_GATE, "")).startswith(AWAITING):
        return None
    champion = _alias(client, name, CHAMPION)
    version = str(challenger.version)
    live = target.live_version()
    if champion is None or live != str(champion.version):
        log(f"challenger v{version} awaits live evidence, but the champion does not serve yet: "
            "deploying the champion first; the next deploy shadows the challenger")
        return None
    if str(champion.version) == version:
        return None
    target.load_slot("shadow", version, f"models:/{name}/{version}", config.shadow_share)
    need = registry.min_live_requests
    log(f"shadow v{version} beside champion v{champion.version}: waiting for {need} mirrored "
        f"live requests (at most {config.shadow_seconds:g} s)")
    numbers, waited = _wait(target, "shadow", lambda n: n["requests"] >= need,
                            config.shadow_seconds)
    if numbers["requests"] < need:
        log(f"shadow v{version}: {numbers['requests']} of {need} live requests after "
            f"{waited:.0f} s; champion v{champion.version} stays, the shadow keeps mirroring and "
            "the next deploy judges it")
        return None
    passed, words = shadow_verdict(numbers, registry)
    target.unload_slot("shadow")
    if passed:
        now = _alias(client, name, CHAMPION)
        if now is None or str(now.version) != str(champion.version):
            raise MlkubeError(f"the champion alias of {name} moved while the shadow of v{version}"
                              " was judged: run the step again")
        client.set_registered_model_alias(name, CHAMPION, version)
        client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, version, TAG_GATE,
                                     f"live: {words} beside v{champion.version}")
        log(f"shadow v{version}: {words} beside champion v{champion.version}: it takes the "
            f"{CHAMPION} alias")
        return version
    client.set_model_version_tag(name, version, TAG_GATE,
                                 f"live: {words} beside v{champion.version}; not promoted")
    log(f"shadow v{version}: {words} beside champion v{champion.version}: champion "
        f"v{champion.version} stays")
    return None
