"""Least privilege: the workflow account only reports results; deploy may also serve."""

from __future__ import annotations

from typing import Any

from mlkube.argo.options import RenderOptions


def _by_kind_and_name(docs: dict[str, list[dict]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs["mlkube-rbac.yaml"]}


def test_each_account_is_bound_to_its_own_role(docs: dict[str, list[dict]]) -> None:
    objects = _by_kind_and_name(docs)
    options = RenderOptions()
    for account in (options.workflow_service_account, options.deploy_service_account):
        assert ("ServiceAccount", account) in objects
        binding = objects[("RoleBinding", account)]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": account}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert not any(kind.startswith("Cluster") for kind, _ in objects)


def test_the_workflow_account_reports_results_and_reads_what_preflight_needs(
        docs: dict[str, list[dict]]) -> None:
    role = _by_kind_and_name(docs)[("Role", RenderOptions().workflow_service_account)]
    assert role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
         "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["resourcequotas", "limitranges", "persistentvolumeclaims"],
         "verbs": ["get", "list"]}]


def test_the_deploy_account_serves_models_and_nothing_more(docs: dict[str, list[dict]]) -> None:
    role = _by_kind_and_name(docs)[("Role", RenderOptions().deploy_service_account)]
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"get", "create", "patch"} <= granted[("serving.kserve.io", "inferenceservices")]
    assert granted[("argoproj.io", "workflowtaskresults")] == {"create", "patch"}
    assert not any(r in ("secrets", "pods/exec", "*") for _, r in granted)
    assert all("*" not in verbs for verbs in granted.values())
    # it may delete only the serving objects it created (a first rollout that fails)
    serving_kinds = {("serving.kserve.io", "inferenceservices"), ("apps", "deployments"),
                     ("", "services"), ("autoscaling", "horizontalpodautoscalers")}
    assert {k for k, verbs in granted.items() if "delete" in verbs} == serving_kinds
    # and only read what explains a failure
    for read_only in (("", "pods"), ("apps", "replicasets"), ("", "events")):
        assert granted[read_only] == {"get", "list"}
