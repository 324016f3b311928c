"""mlkube registers with Airflow: provider (connection type, link) and plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlkube.airflow.provider import get_provider_info

REPO = Path(__file__).resolve().parents[2]


def test_provider_info_matches_airflows_schema() -> None:
    import jsonschema

    from airflow import providers_manager

    schema_file = Path(providers_manager.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_file.read_text()))


def test_providers_manager_sees_mlkube_and_the_mlflow_connection() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "mlkube" in manager.providers
    hook = ProvidersManagerTaskRuntime().hooks["mlflow"]
    assert hook is not None and hook.hook_class_name == "mlkube.airflow.mlflow_connection.MlflowHook"
    assert "mlkube.airflow.links.MlflowRunLink" in manager.extra_links_class_names


def test_plugin_entry_point_registers_the_link() -> None:
    from airflow import plugins_manager

    plugins, _ = plugins_manager._get_plugins()
    (plugin,) = [p for p in plugins if p.name == "mlkube"]
    assert [type(link).__name__ for link in plugin.operator_extra_links] == ["MlflowRunLink"]


def _plugins_folder_report() -> dict[str, object]:
    """Load plugins/ as the plugins folder in a fresh Airflow process."""
    code = (
        "import json; from airflow import plugins_manager as m;"
        "plugins, errors = m._get_plugins();"
        "print(json.dumps({'sources': [str(p.source) for p in plugins if p.name == 'mlkube'],"
        " 'errors': errors}))"
    )
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_plugins_dir_works_as_the_plugins_folder() -> None:
    report = _plugins_folder_report()
    assert report["sources"], report


def test_plugins_folder_imports_only_the_plugin() -> None:
    # plugins/.airflowignore keeps Airflow from importing every .py under plugins/ as a
    # top-level module (argo/io.py would shadow the standard library's io). Here the package
    # is installed too, so the entry point registers the plugin first and the folder's copy is
    # skipped as a duplicate; anything else would be an import error.
    errors = _plugins_folder_report()["errors"]
    assert isinstance(errors, dict)
    assert [e for e in errors.values() if "already registered" not in str(e)] == []
