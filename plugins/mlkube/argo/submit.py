"""Submission to an Argo Server through Hera's client, with one-line errors.

``templates`` creates or updates the two WorkflowTemplates (the steps and the lifecycle);
``lifecycle`` starts a Workflow of the lifecycle; ``retrain`` creates or updates the
CronWorkflow. The templates must be installed before the other two can run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mlkube.argo.options import RenderOptions
from mlkube.errors import MlkubeError
from mlkube.kube.platform import PlatformOptions

if TYPE_CHECKING:
    from hera.workflows import WorkflowsService

TARGETS = ("templates", "lifecycle", "retrain")
TIMEOUT_SECONDS = 30.0
# Where to submit when neither --namespace nor ARGO_NAMESPACE says: the platform's namespace
# (mlkube platform render), where the templates' service accounts, claim and databases are.
DEFAULT_NAMESPACE = PlatformOptions.namespace


@dataclass(frozen=True, kw_only=True)
class ArgoServer:
    """Where and as whom to submit; ``from_env`` fills gaps from ARGO_* variables."""

    url: str
    namespace: str
    token: str | None = None
    verify_ssl: bool = True

    @classmethod
    def from_env(cls, url: str | None = None, namespace: str | None = None,
                 token: str | None = None, verify_ssl: bool = True) -> ArgoServer:
        """Flags first, then ARGO_SERVER, ARGO_NAMESPACE (default: :data:`DEFAULT_NAMESPACE`,
        the platform's), ARGO_TOKEN."""
        url = url or os.environ.get("ARGO_SERVER")
        if not url:
            raise MlkubeError("no Argo Server given: pass --server https://HOST:2746 or set "
                              "ARGO_SERVER")
        if not url.startswith(("http://", "https://")):
            raise MlkubeError(f"Argo Server {url!r} has no scheme: write https://{url}")
        return cls(url=url.rstrip("/"), verify_ssl=verify_ssl,
                   namespace=namespace or os.environ.get("ARGO_NAMESPACE") or DEFAULT_NAMESPACE,
                   token=token or os.environ.get("ARGO_TOKEN") or None)

    def service(self) -> WorkflowsService:
        """Hera's client for this server; requests time out instead of hanging."""
        import requests
        from hera.workflows import WorkflowsService

        class _Session(requests.Session):
            def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", TIMEOUT_SECONDS)
                return super().request(method, url, *args, **kwargs)

        return WorkflowsService(host=self.url, namespace=self.namespace, token=self.token,
                                verify_ssl=self.verify_ssl, session=_Session())


def submit(target: str, server: ArgoServer, options: RenderOptions | None = None) -> list[str]:
    """Submit ``target`` (one of :data:`TARGETS`); returns one line per object submitted."""
    import requests
    from hera.exceptions import HeraException

    if target not in TARGETS:
        raise MlkubeError(f"nothing to submit called {target!r}; choose {', '.join(TARGETS)}")
    options = (options or RenderOptions()).validated()
    with server.service() as service:
        try:
            return _submit(target, service, server.namespace, options)
        except requests.exceptions.RequestException as exc:
            reason = type(exc).__name__
            raise MlkubeError(
                f"cannot reach the Argo Server at {server.url} ({reason}): check --server/"
                "ARGO_SERVER and that the server is running and reachable from here"
            ) from None
        except HeraException as exc:
            raise MlkubeError(f"the Argo Server at {server.url} rejected the {target} "
                              f"submission: {exc}") from None


def _submit(target: str, service: WorkflowsService, namespace: str,
            options: RenderOptions) -> list[str]:
    from hera.workflows.models import (
        CreateCronWorkflowRequest,
        CronWorkflow,
        UpdateCronWorkflowRequest,
        Workflow,
        WorkflowCreateRequest,
        WorkflowTemplate,
    )

    from mlkube.argo.cron import retrain_cron
    from mlkube.argo.lifecycle import lifecycle_run, lifecycle_template
    from mlkube.argo.templates import steps_template

    if target == "lifecycle":
        workflow = cast(Workflow, lifecycle_run(options).build())
        created = service.create_workflow(WorkflowCreateRequest(workflow=workflow),
                                          namespace=namespace)
        return [f"workflow {created.metadata.name} submitted in {namespace}"]
    if target == "retrain":
        cron = cast(CronWorkflow, retrain_cron(options).build())
        return [_create_or_update(
            "cron workflow", cron, namespace,
            get=lambda name: service.get_cron_workflow(name, namespace=namespace),
            create=lambda: service.create_cron_workflow(
                CreateCronWorkflowRequest(cron_workflow=cron), namespace=namespace),
            update=lambda name: service.update_cron_workflow(
                name, UpdateCronWorkflowRequest(cron_workflow=cron), namespace=namespace),
        )]
    return [_apply_template(service, namespace, cast(WorkflowTemplate, wt.build()))
            for wt in (steps_template(options), lifecycle_template(options))]


def _apply_template(service: WorkflowsService, namespace: str, template: Any) -> str:
    from hera.workflows.models import WorkflowTemplateCreateRequest, WorkflowTemplateUpdateRequest

    return _create_or_update(
        "workflow template", template, namespace,
        get=lambda name: service.get_workflow_template(name, namespace=namespace),
        create=lambda: service.create_workflow_template(
            WorkflowTemplateCreateRequest(template=template), namespace=namespace),
        update=lambda name: service.update_workflow_template(
            name, WorkflowTemplateUpdateRequest(template=template), namespace=namespace),
    )


def _create_or_update(what: str, obj: Any, namespace: str, *, get: Callable[[str], Any],
                      create: Callable[[], Any], update: Callable[[str], Any]) -> str:
    """Create ``obj``, or update it in place (keeping its history) when it exists."""
    from hera.exceptions import NotFound

    name = obj.metadata.name
    try:
        current = get(name)
    except NotFound:
        create()
        return f"{what} {name} created in {namespace}"
    obj.metadata.resource_version = current.metadata.resource_version
    update(name)
    return f"{what} {name} updated in {namespace}"
