"""The RBAC the Argo objects run under: :func:`mlkube.kube.rbac.rbac_objects` for the
accounts, namespace and node count a :class:`~mlkube.argo.options.RenderOptions` names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlkube.kube import rbac

if TYPE_CHECKING:
    from mlkube.argo.options import RenderOptions


def rbac_objects(options: RenderOptions) -> list[Any]:
    """ServiceAccount, Role and RoleBinding for the workflow, then for deploy."""
    return rbac.rbac_objects(options.namespace, train_nodes=options.train_nodes,
                             workflow_service_account=options.workflow_service_account,
                             deploy_service_account=options.deploy_service_account)
