"""The schemas ship inside the package: lint works outside this repository's layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from mlkube.argo import schema
from mlkube.argo.schema import ARGO_SCHEMA_ENV, ARGO_SCHEMA_FILE, KSERVE_CRD_ENV, KSERVE_CRD_FILE

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILES = {ARGO_SCHEMA_FILE, KSERVE_CRD_FILE}


def _mlkube() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m mlkube.cli``."""
    script = Path(sys.executable).with_name("mlkube")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlkube.cli"]


def test_schemas_are_package_data() -> None:
    packaged = resources.files(schema.SCHEMAS_PACKAGE)
    assert SCHEMA_FILES <= {entry.name for entry in packaged.iterdir()}
    assert all(packaged.joinpath(name).is_file() for name in SCHEMA_FILES)
    assert (packaged / "README.md").read_text().count("Apache-2.0") == 2
    argo = json.loads(packaged.joinpath(ARGO_SCHEMA_FILE).read_text())
    assert "io.argoproj.workflow.v1alpha1.WorkflowTemplate" in argo["definitions"]
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert SCHEMA_FILES <= set(package_data[schema.SCHEMAS_PACKAGE])


def test_default_paths_are_the_packaged_copies_unless_the_environment_names_others(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ARGO_SCHEMA_ENV, raising=False)
    monkeypatch.delenv(KSERVE_CRD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    validator = schema.default_validator()
    assert validator.argo_schema == schema.packaged_schema(ARGO_SCHEMA_FILE)
    assert validator.kserve_crd == schema.packaged_schema(KSERVE_CRD_FILE)
    monkeypatch.setenv(ARGO_SCHEMA_ENV, str(tmp_path / "argo.json"))
    monkeypatch.setenv(KSERVE_CRD_ENV, str(tmp_path / "crd.yaml"))
    validator = schema.default_validator()
    assert validator.argo_schema == tmp_path / "argo.json"
    assert validator.kserve_crd == tmp_path / "crd.yaml"


def test_lint_works_outside_the_development_layout(tmp_path: Path, workflows_dir: Path) -> None:
    assert not (tmp_path.parent / "shared").exists()
    committed = sorted(str(p) for p in workflows_dir.glob("*.yaml"))
    assert len(committed) == 5
    env = {k: v for k, v in os.environ.items() if k not in (ARGO_SCHEMA_ENV, KSERVE_CRD_ENV)}
    done = subprocess.run([*_mlkube(), "argo", "lint", *committed], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok") >= len(committed)
    assert "not found" not in done.stderr
