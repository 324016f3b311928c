"""Shared fixtures: one fresh render, its parsed objects, and the strict validators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render
from mlkube.argo.schema import ARGO_SCHEMA_FILE, KSERVE_CRD_FILE, Validator, packaged_schema

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"


@pytest.fixture(scope="session")
def workflows_dir() -> Path:
    """The committed rendered YAML."""
    return WORKFLOWS


@pytest.fixture(scope="session")
def validator() -> Validator:
    """The strict validator on the schemas shipped inside the package (mlkube/schemas/)."""
    return Validator(argo_schema=packaged_schema(ARGO_SCHEMA_FILE),
                     kserve_crd=packaged_schema(KSERVE_CRD_FILE))


@pytest.fixture(scope="session")
def files() -> dict[str, str]:
    return render(RenderOptions())


@pytest.fixture(scope="session")
def docs(files: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: list(yaml.safe_load_all(text)) for name, text in files.items()}


@pytest.fixture(scope="session")
def steps(docs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The templates of mlkube-steps by name."""
    (wt,) = docs["mlkube-steps.yaml"]
    return {t["name"]: t for t in wt["spec"]["templates"]}


@pytest.fixture(scope="session")
def lifecycle(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (wt,) = docs["mlkube-lifecycle.yaml"]
    return wt


@pytest.fixture(scope="session")
def tasks(lifecycle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The lifecycle DAG's tasks by name."""
    (dag,) = [t for t in lifecycle["spec"]["templates"] if "dag" in t]
    return {t["name"]: t for t in dag["dag"]["tasks"]}
