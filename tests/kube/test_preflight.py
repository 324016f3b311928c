"""Preflight agrees with kube-scheduler and API server admission on every situation in the table
(tests/kube/preflight_cases.py), and keeps its interface for the adapters and the CLI."""

from __future__ import annotations

from decimal import Decimal

import pytest
from preflight_cases import CASES, CPU4, GPU2, Case, ctr, limit_range, pod, quota, sidecar

from mlkube.errors import MlkubeError
from mlkube.kube import preflight
from mlkube.kube.preflight import Verdict, effective_requests, verdict


def test_the_table_covers_enough_situations() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.why and c.cite and (c.fits is None) != (c.rejects is None) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_agrees_with_kubernetes(case: Case) -> None:
    def run() -> Verdict:
        return verdict(case.pod, nodes=case.nodes, quotas=case.quotas,
                       limit_ranges=case.limit_ranges, claims=case.claims,
                       volumes=case.volumes, pods_per_node=case.pods_per_node)

    if case.rejects is not None:
        with pytest.raises(MlkubeError, match=case.rejects) as caught:
            run()
        assert "\n" not in str(caught.value)
    else:
        assert run().nodes == case.fits


def test_verdict_reports_requests_and_limits() -> None:
    found = verdict(pod(ctr(requests={"cpu": "1"}, limits={"memory": "1Gi"}),
                        init=[sidecar("proxy", {"cpu": "500m"})], overhead={"cpu": "100m"}),
                    nodes=[CPU4])
    assert found.nodes == ("cpu-4",)
    assert found.requests == {"cpu": Decimal("1.6"), "memory": 2**30}
    assert found.limits == {"memory": 2**30}
    assert found.skipped == ("claims",)


def test_unknown_nodes_and_claims_are_skipped() -> None:
    found = verdict(pod(ctr(requests={"cpu": "1000"}), claims=["missing"]), nodes=None)
    assert found.nodes == () and found.skipped == ("nodes", "claims")


def test_effective_requests_apply_limit_ranges() -> None:
    lr = limit_range(default={"cpu": "2", "memory": "1Gi"}, default_request={"cpu": "250m"})
    assert effective_requests(pod(ctr()), [lr]) == {"cpu": Decimal("0.25"), "memory": 2**30}
    assert effective_requests(pod(ctr())) == {}


def test_quantities_round_up_to_milli_units() -> None:
    assert effective_requests(pod(ctr(requests={"cpu": "0.0001"}))) == {"cpu": Decimal("0.001")}


def test_a_bad_quantity_is_an_admission_error() -> None:
    with pytest.raises(MlkubeError, match=r"rejected at admission: container main: cpu='lots'"):
        verdict(pod(ctr(requests={"cpu": "lots"})), nodes=[CPU4])


def test_no_nodes_at_all() -> None:
    with pytest.raises(MlkubeError, match="0/0 nodes are available"):
        verdict(pod(ctr()), nodes=[])


def test_wrappers_for_the_adapters() -> None:
    preflight.check_nodes(pod(ctr(limits={"nvidia.com/gpu": "1"})), [CPU4, GPU2])
    with pytest.raises(MlkubeError, match="Insufficient nvidia.com/gpu"):
        preflight.check_nodes(pod(ctr(limits={"nvidia.com/gpu": "4"})), [CPU4, GPU2])
    preflight.check_quotas(pod(ctr(requests={"cpu": "1"})), [quota("q", {"requests.cpu": "1"})])
    with pytest.raises(MlkubeError, match="exceeded quota q"):
        preflight.check_quotas(pod(ctr(requests={"cpu": "2"})),
                               [quota("q", {"requests.cpu": "1"})])
