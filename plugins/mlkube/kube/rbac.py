"""Least-privilege service accounts for the lifecycle's pods.

- the workflow account runs every step pod: Argo's executor may only report the pod's
  results (``workflowtaskresults``), and the preflight template may read the namespace's
  quotas, LimitRanges and claims; the other steps never call the Kubernetes API;
- the deploy account runs the deploy template: that, plus applying the serving objects
  (:data:`mlkube.kube.serving.DEPLOY_RULES`). Neither can read Secrets or leave the namespace.

``mlkube argo render`` (through :mod:`mlkube.argo.rbac`) and ``mlkube platform render`` both
write these objects.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import V1PolicyRule

from mlkube.kube import serving

# The accounts' default names.
WORKFLOW_SERVICE_ACCOUNT = "mlkube-workflow"
DEPLOY_SERVICE_ACCOUNT = "mlkube-deploy"

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


def rbac_objects(namespace: str | None = None, *, train_nodes: int = 1,
                 workflow_service_account: str = WORKFLOW_SERVICE_ACCOUNT,
                 deploy_service_account: str = DEPLOY_SERVICE_ACCOUNT) -> list[Any]:
    """ServiceAccount, Role and RoleBinding for the workflow, then for deploy.

    Args:
        namespace: the objects' namespace, or ``None`` for the one they are applied in.
        train_nodes: nodes training runs on; more than 1 also lets the workflow account run
            the multi-node Job (:data:`MULTINODE_RULES`).
        workflow_service_account, deploy_service_account: the two accounts' names.
    """
    multinode = MULTINODE_RULES if train_nodes > 1 else ()
    return [
        *serving.service_account_rbac(workflow_service_account,
                                      [*EXECUTOR_RULES, *PREFLIGHT_RULES, *multinode],
                                      namespace),
        *serving.deploy_rbac(deploy_service_account, namespace, extra_rules=EXECUTOR_RULES),
    ]
