"""The layers: the adapters (argo/, airflow/, local/) build on kube/, targets/ and the shared
pieces, and the serving targets (targets/) build on kube/, never the other way round. Every
import in the source counts, at module level or inside a function, relative or absolute, under
``TYPE_CHECKING`` or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mlkube

PACKAGE = Path(mlkube.__file__).resolve().parent
ADAPTERS = ("mlkube.argo", "mlkube.airflow")
# Below the adapters: every module of kube/ and targets/, and the shared pieces both sides use.
KUBE = sorted((PACKAGE / "kube").rglob("*.py"))
LOWER = sorted([*KUBE, *(PACKAGE / "targets").rglob("*.py"), PACKAGE / "spec.py",
                PACKAGE / "rendered.py"])
TARGETS = "mlkube.targets"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the text of ``module``) imports, relative ones resolved;
    ``from a import b`` counts as both ``a`` and ``a.b`` (``b`` may be a submodule), and so
    does ``importlib.import_module("a.b")`` with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                     or (isinstance(node.func, ast.Name) and node.func.id in ("import_module",
                                                                               "__import__"))):
            found.add(node.args[0].value)
    return found


def adapter_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    return sorted(name for name in imported_modules(source, module, is_package)
                  if any(name == a or name.startswith(f"{a}.") for a in ADAPTERS))


def test_the_lower_modules_are_found() -> None:
    names = {_module_name(p) for p in LOWER}
    assert {"mlkube.kube", "mlkube.kube.platform", "mlkube.kube.rbac", "mlkube.kube.serving",
            "mlkube.kube.api", "mlkube.targets", "mlkube.targets.cluster", "mlkube.spec",
            "mlkube.rendered"} <= names


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_lower_module_imports_an_adapter(path: Path) -> None:
    module = _module_name(path)
    bad = adapter_imports(path.read_text(), module, is_package=path.name == "__init__.py")
    assert not bad, (f"{path.relative_to(PACKAGE)} imports {', '.join(bad)}: move what both "
                     "use below both (kube/, spec.py or a shared module)")


@pytest.mark.parametrize("path", KUBE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_kube_module_imports_a_serving_target(path: Path) -> None:
    module = _module_name(path)
    found = imported_modules(path.read_text(), module, is_package=path.name == "__init__.py")
    bad = sorted(n for n in found if n == TARGETS or n.startswith(f"{TARGETS}."))
    assert not bad, (f"{path.relative_to(PACKAGE)} imports {', '.join(bad)}: kube/ talks to the "
                     "cluster and builds objects; what a serving target needs moves into kube/")


@pytest.mark.parametrize("source", [
    "import mlkube.argo.options",
    "from mlkube.argo.rbac import rbac_objects",
    "from mlkube import argo",
    "from mlkube import airflow as af",
    "from ..argo import render",
    "from .. import airflow",
    "def f():\n    from mlkube.argo.render import stale\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mlkube.argo.options import X\n",
    "import importlib\nimportlib.import_module('mlkube.argo.render')\n",
])
def test_the_check_sees_every_form_of_import(source: str) -> None:
    assert adapter_imports(source, "mlkube.kube.platform")


@pytest.mark.parametrize("source", [
    "from mlkube.kube import rbac", "from . import serving", "from .. import spec",
    "import mlkube.argonaut", "x = 'mlkube.argo'",
])
def test_the_check_passes_what_is_allowed(source: str) -> None:
    assert not adapter_imports(source, "mlkube.kube.platform")
