"""Each command works with the extras that name it, and says in one line what it lacks.

The CLI runs in a subprocess of this venv with some top-level modules made unimportable (a
meta path finder raises ModuleNotFoundError for them, as for a package that is not installed).
"An install with only extra X" blocks every module of the other extras' dependency trees that
X's own tree (read from this venv's metadata) does not hold.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlkube.cli import COMMAND_EXTRAS
from mlkube.errors import EXTRA_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PYPROJECT["optional-dependencies"]

BLOCKING_CLI = """
import importlib.abc, sys
blocked = {m for m in sys.argv[1].split(",") if m}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
from mlkube.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli(blocked: set[str], *argv: str, cwd: Path,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mlkube argv`` with ``blocked`` modules missing; KUBERNETES_SERVICE_HOST unset."""
    environ = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    environ.update(MLKUBE_STATE_DIR=str(cwd / "state"), KUBECONFIG=str(cwd / "no-kubeconfig"),
                   **(env or {}))
    return subprocess.run([sys.executable, "-c", BLOCKING_CLI, ",".join(sorted(blocked)), *argv],
                          cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def _requirements(specs: list[str]) -> list[Requirement]:
    return [Requirement(s) for s in specs if not Requirement(s).name == "mlkube"]


@cache
def _tree(names: frozenset[tuple[str, frozenset[str]]]) -> frozenset[str]:
    """The installed distributions these (name, extras) need, themselves included."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(names)
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in (extras or {""})):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(name for name, _ in seen)


def _tree_of(extras: tuple[str, ...] | list[str]) -> frozenset[str]:
    specs = list(PYPROJECT["dependencies"]) + [s for e in extras for s in EXTRAS[e]]
    return _tree(frozenset((canonicalize_name(r.name), frozenset(r.extras))
                           for r in _requirements(specs)))


@cache
def _modules() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def only(*extras: str) -> set[str]:
    """The modules to block for an install of the core and ``extras`` alone."""
    keep = _tree_of(extras)
    others = _tree_of([e for e in EXTRAS if e != "all"])
    return {module for module, dists in _modules().items()
            if module.isidentifier() and module not in ("setuptools", "pkg_resources", "pip")
            and any(canonicalize_name(d) in others for d in dists)
            and not any(canonicalize_name(d) in keep for d in dists)}


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- one line naming every extra ---------------------------------------------------------------


def test_argo_lint_without_its_validator_and_hera_names_the_extra_once(tmp_path: Path) -> None:
    done = cli({"hera", "kubernetes_validate"}, "argo", "lint", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""  # no object is called invalid
    assert one_line(done) == (
        "mlkube argo: error: mlkube argo lint needs the extra argo (missing: hera, "
        "kubernetes-validate); install it with pip install 'mlkube[argo]'")


def test_every_missing_extra_of_a_command_is_in_its_one_line(tmp_path: Path) -> None:
    done = cli({"torch", "uvicorn", "starlette"}, "run", cwd=tmp_path)
    assert done.returncode == 1
    assert one_line(done) == (
        "mlkube run: error: mlkube run needs the extras ml and serve (missing: torch, starlette, "
        "uvicorn); install them with pip install 'mlkube[ml,serve]'")
    assert not (tmp_path / "state").exists()  # it stopped before any step ran


@pytest.mark.parametrize(("args", "env", "extras"), [
    ((), {}, "ml and serve"),  # auto outside a cluster: the local target
    (("--target", "local"), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "ml and serve"),
    (("--target=kserve",), {}, "ml and kube"),
    ((), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "ml and kube"),  # auto in a pod
])
def test_deploy_needs_the_extra_of_its_target(args: tuple[str, ...], env: dict[str, str],
                                              extras: str, tmp_path: Path) -> None:
    done = cli({"mlflow", "starlette", "kubernetes"}, "step", "deploy", "--dataset", "d", *args,
               cwd=tmp_path, env=env)
    assert done.returncode == 2
    missing = "starlette" if "serve" in extras else "kubernetes"
    assert one_line(done) == (
        f"mlkube step: error: mlkube step deploy needs the extras {extras} (missing: mlflow, "
        f"{missing}); install them with pip install 'mlkube[{extras.replace(' and ', ',')}]'")


def test_a_group_that_cannot_load_says_what_it_needs_and_help_still_works(
        tmp_path: Path) -> None:
    done = cli({"kubernetes"}, "platform", "render", "--out", "x", cwd=tmp_path)
    assert done.returncode == 1
    assert one_line(done) == (
        "mlkube platform: error: mlkube platform render needs the extra kube (missing: "
        "kubernetes); install it with pip install 'mlkube[kube]'")
    helped = cli({"kubernetes"}, "--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert re.search(r"platform\s+unavailable: mlkube platform needs the extra kube", helped.stdout)
    assert cli({"hera"}, "argo", "lint", "--help", cwd=tmp_path).returncode == 0


def test_a_step_names_its_extra_before_it_starts(tmp_path: Path) -> None:
    done = cli({"optuna", "matplotlib"}, "step", "tune", "--dataset", "d", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert one_line(done) == (
        "mlkube step: error: mlkube step tune needs the extra ml (missing: optuna, matplotlib); "
        "install it with pip install 'mlkube[ml]'")


# -- each command works with the extras that name it -------------------------------------------


def test_the_blocked_modules_are_those_of_an_install_with_only_that_extra() -> None:
    argo = only("argo")
    assert {"hera", "kubernetes", "jsonschema", "kubernetes_validate", "yaml"}.isdisjoint(argo)
    assert {"torch", "mlflow", "airflow", "starlette", "pytest", "numpy"} <= argo
    assert {"hera", "jsonschema", "kubernetes_validate"} <= only("kube")
    assert "kubernetes" not in only("kube")


@pytest.mark.parametrize(("argv", "says"), [
    (("argo", "lint"), r"mlkube-rbac\.yaml: RoleBinding mlkube-deploy: ok"),
    (("argo", "render", "--out", "out"), r"wrote out/mlkube-steps\.yaml"),
    (("platform", "render", "--out", "out"), r"wrote out/00-namespace\.yaml"),
    (("serve", "status"), r"nothing is deployed locally"),
])
def test_a_command_runs_with_only_its_extras(argv: tuple[str, ...], says: str,
                                             tmp_path: Path) -> None:
    extras = COMMAND_EXTRAS[" ".join(argv[:2])]
    done = cli(only(*extras), *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(says, done.stdout), done.stdout
    if argv[:2] == ("argo", "lint"):  # every object checked, Kubernetes kinds included
        assert done.stdout.count(": ok\n") == 10 and "invalid" not in done.stderr


@pytest.mark.parametrize(("argv", "says"), [
    (("argo", "submit", "templates", "--server", "http://127.0.0.1:9"),
     "mlkube argo: error: cannot reach the Argo Server at http://127.0.0.1:9"),
    (("preflight", "--step", "train"), "mlkube preflight: error: no usable Kubernetes config"),
])
def test_a_cluster_command_gets_as_far_as_the_cluster_with_only_its_extras(
        argv: tuple[str, ...], says: str, tmp_path: Path) -> None:
    extras = COMMAND_EXTRAS[" ".join(argv[:2])] if argv[0] == "argo" else COMMAND_EXTRAS[argv[0]]
    done = cli(only(*extras), *argv, cwd=tmp_path)
    assert done.returncode == 1 and one_line(done).startswith(says), done.stderr


def test_a_step_runs_with_only_the_ml_extra(tmp_path: Path) -> None:
    done = cli(only(*COMMAND_EXTRAS["step prepare-data"]), "step", "prepare-data",
               "--result-file", str(tmp_path / "result.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text())["rows"] == 569


# -- the table, pyproject.toml and README.md say the same ---------------------------------------


def test_the_packages_of_each_extra_are_pyprojects() -> None:
    for extra, packages in EXTRA_PACKAGES.items():
        assert sorted(packages) == sorted(canonicalize_name(r.name)
                                          for r in _requirements(EXTRAS[extra])), extra
    assert set(EXTRA_PACKAGES) == set(EXTRAS) - {"dev", "all"}
    assert sorted(Requirement(s).name for s in EXTRAS["all"]) == ["mlkube"]
    assert set(Requirement(EXTRAS["all"][0]).extras) == set(EXTRA_PACKAGES)


def test_every_command_is_in_the_table() -> None:
    from mlkube import spec
    from mlkube.cli import build_parser

    parser = build_parser()
    groups = cast(dict[str, Any], next(a for a in parser._actions if a.dest == "command").choices)
    commands: set[str] = set()
    for name, sub in groups.items():
        verbs = [a for a in sub._actions if a.dest in ("argo_command", "platform_command", "verb")]
        commands |= ({f"{name} {v}" for v in verbs[0].choices} if verbs
                     else {f"step {s}" for s in spec.STEPS} if name == "step" else {name})
    assert commands == set(COMMAND_EXTRAS)


def test_the_readme_table_is_the_code_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Which extra each command needs", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for row in re.findall(r"^\| (`mlkube .+?) \| (.+?) \|$", section, re.MULTILINE):
        extras = set(re.findall(r"`(\w+)`", row[1]))
        for command in re.findall(r"`mlkube ([a-z -]+?)`", row[0]):
            found[command] = extras
    expected = {command: set(extras) for command, extras in COMMAND_EXTRAS.items()}
    expected["step deploy"] |= {"serve", "kube"}  # one of the two, by target
    assert found == expected
