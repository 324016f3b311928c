"""Least-privilege service accounts for the lifecycle's pods.

- the workflow account runs every step pod: Argo's executor may only report the pod's
  results (``workflowtaskresults``), and the preflight template may read the namespace's
  quotas, LimitRanges and claims; the other steps never call the Kubernetes API;
- the deploy account runs the deploy template: that, plus applying the serving objects
  (:data:`mlkube.kube.serving.DEPLOY_RULES`). Neither can read Secrets or leave the namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes.client import V1PolicyRule

from mlkube.kube import serving

if TYPE_CHECKING:
    from mlkube.argo.options import RenderOptions

# What Argo's executor (argoexec, in every pod) needs since Argo Workflows 3.4.
EXECUTOR_RULES = (
    V1PolicyRule(api_groups=["argoproj.io"], resources=["workflowtaskresults"],
                 verbs=["create", "patch"]),
)
# What the preflight template reads in its namespace (nodes and PersistentVolumes are
# cluster-scoped: a ClusterRole the cluster's admin may grant; without it those checks are
# skipped).
PREFLIGHT_RULES = (
    V1PolicyRule(api_groups=[""], resources=["resourcequotas", "limitranges",
                                             "persistentvolumeclaims"], verbs=["get", "list"]),
)


# What the multi-node train template's resource steps do (train_nodes > 1): create the run's
# ConfigMap, headless Service and Indexed Job (owned by the workflow, so deleted with it) and
# watch the Job until it succeeds or fails.
MULTINODE_RULES = (
    V1PolicyRule(api_groups=["batch"], resources=["jobs"],
                 verbs=["create", "get", "list", "watch", "patch"]),
    V1PolicyRule(api_groups=[""], resources=["services", "configmaps"],
                 verbs=["create", "get", "list", "watch", "patch"]),
)


def rbac_objects(options: RenderOptions) -> list[Any]:
    """ServiceAccount, Role and RoleBinding for the workflow, then for deploy."""
    multinode = MULTINODE_RULES if options.train_nodes > 1 else ()
    return [
        *serving.service_account_rbac(options.workflow_service_account,
                                      [*EXECUTOR_RULES, *PREFLIGHT_RULES, *multinode],
                                      options.namespace),
        *serving.deploy_rbac(options.deploy_service_account, options.namespace,
                             extra_rules=EXECUTOR_RULES),
    ]
