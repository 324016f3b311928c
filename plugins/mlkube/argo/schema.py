"""Strict offline validation: Argo's JSON schema, KServe's CRD, Kubernetes' own schemas.

"Strict" as the API servers are: a field the schema does not declare is an error, so every
object schema with ``properties`` is read as ``additionalProperties: false`` (except where a
CRD says ``x-kubernetes-preserve-unknown-fields``). No cluster is needed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from mlkube.errors import MlkubeError, needs_extras

ARGO_SCHEMA_ENV = "MLKUBE_ARGO_SCHEMA"
KSERVE_CRD_ENV = "MLKUBE_KSERVE_CRD"
ARGO_SCHEMA_FILE = "argo-workflows-v4.1.schema.json"
KSERVE_CRD_FILE = "kserve-v0.20-inferenceservice-crd.yaml"
ARGO_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
KUBERNETES_VERSION = "1.33"
SCHEMAS_PACKAGE = "mlkube.schemas"  # the copies shipped as package data (see its README.md)


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where objects with ``properties`` take no other keys."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {k: strict(v) if k not in ("enum", "const", "default", "example") else v
            for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        copy["additionalProperties"] = False
    return copy


def packaged_schema(name: str) -> Traversable:
    """The copy of schema file ``name`` shipped inside the mlkube package."""
    return resources.files(SCHEMAS_PACKAGE).joinpath(name)


def default_schema_path(env: str, name: str) -> Path | Traversable:
    """``$env`` if set, else the packaged copy of ``name`` (works from any directory)."""
    override = os.environ.get(env)
    return Path(override) if override else packaged_schema(name)


def _error_line(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"at {where}: {error.message}"


@dataclass(frozen=True, kw_only=True)
class Validator:
    """Validates rendered objects; the schema files are read on first use."""

    argo_schema: Path | Traversable
    kserve_crd: Path | Traversable

    @cached_property
    def _argo(self) -> dict[str, Any]:
        """A validator per Argo kind, sharing the strict definitions."""
        from jsonschema import Draft202012Validator

        schema = strict(json.loads(_read(self.argo_schema, ARGO_SCHEMA_ENV)))
        return {kind: Draft202012Validator({
            "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}",
            "definitions": schema["definitions"]}) for kind in ARGO_KINDS}

    @cached_property
    def _isvc(self) -> Any:
        from jsonschema import Draft7Validator

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 2 MB
        crd = yaml.load(_read(self.kserve_crd, KSERVE_CRD_ENV), Loader=loader)  # noqa: S506
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        return Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))

    def argo_errors(self, obj: dict[str, Any]) -> list[str]:
        """Where ``obj`` (an Argo kind) breaks the Argo schema; empty when it is valid."""
        kind = obj.get("kind")
        if kind not in ARGO_KINDS:
            return [f"kind {kind!r} is not one of {', '.join(ARGO_KINDS)}"]
        found = [_error_line(e) for e in self._argo[kind].iter_errors(obj)]
        for path, manifest in embedded_manifests(obj):
            found += [f"{path}: {line}" for line in self.manifest_errors(manifest)]
        return found

    def isvc_errors(self, obj: dict[str, Any]) -> list[str]:
        """Where ``obj`` breaks KServe's InferenceService CRD schema."""
        return [_error_line(e) for e in self._isvc.iter_errors(obj)]

    def kubernetes_errors(self, obj: dict[str, Any]) -> list[str]:
        """Where ``obj`` (a built-in kind) breaks the Kubernetes OpenAPI schema."""
        try:
            import kubernetes_validate
        except ImportError as exc:  # a missing validator is not an invalid object: stop here
            raise (needs_extras("validating Kubernetes kinds", ("argo",))
                   or MlkubeError(f"kubernetes-validate cannot be imported: {exc}")) from None
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [_error_line(exc)]
        return []

    def manifest_errors(self, obj: Any) -> list[str]:
        """Errors of a manifest an Argo resource template applies, by its kind."""
        if not isinstance(obj, dict):
            return [f"the manifest is {type(obj).__name__}, not an object"]
        return self.errors(obj)

    def errors(self, obj: dict[str, Any]) -> list[str]:
        """Errors of any object mlkube renders, by its kind."""
        if obj.get("apiVersion", "").startswith("argoproj.io/"):
            return self.argo_errors(obj)
        if obj.get("kind") == "InferenceService":
            return self.isvc_errors(obj)
        return self.kubernetes_errors(obj)


def embedded_manifests(obj: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The manifests of the resource templates in an Argo object, with where they are."""
    spec = obj.get("spec", {})
    spec = spec.get("workflowSpec", spec)
    for i, template in enumerate(spec.get("templates", [])):
        manifest = template.get("resource", {}).get("manifest")
        if manifest:
            # an expression Argo substitutes whole (e.g. {{=toJson(...)}}) stands for a string
            text = re.sub(r"\{\{=.*?\}\}", lambda m: json.dumps(m[0]), manifest)
            yield f"templates[{i}] ({template.get('name')}) manifest", yaml.safe_load(text)


def default_validator() -> Validator:
    """A validator reading the schemas named by the environment, else the packaged ones."""
    return Validator(argo_schema=default_schema_path(ARGO_SCHEMA_ENV, ARGO_SCHEMA_FILE),
                     kserve_crd=default_schema_path(KSERVE_CRD_ENV, KSERVE_CRD_FILE))


def _read(path: Path | Traversable, env: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise MlkubeError(
            f"schema file {path} not found: pass its path (--schema/--kserve-crd) or set {env}"
        ) from None
