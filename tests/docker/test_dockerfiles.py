"""The images: no Docker engine here, so read the Dockerfiles as the builder would, run what
their builder stage runs (with a fake torch, offline) and check the rest against the code."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from mlkube import spec
from mlkube.cli import build_parser
from mlkube.kube.security import RUN_AS_USER, pod_security_context

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NAMES = ["Dockerfile", "Dockerfile.gpu", "Dockerfile.server"]
# Each image: what the manifests name it by default, and the extras it installs.
IMAGES = {"Dockerfile": (spec.CPU_IMAGE, "ml,kube"),
          "Dockerfile.gpu": (spec.GPU_IMAGE, "ml"),
          "Dockerfile.server": (spec.SERVER_IMAGE, "serve")}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VENV = "/opt/venv"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[list[Instruction]]:
    """The stages of a Dockerfile, each a list of instructions (the ARGs before the first FROM
    are a stage of their own, the first). Continuation lines are joined as the builder joins
    them; comment lines, also inside a continuation, are dropped."""
    stages: list[list[Instruction]] = [[]]
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "a continuation runs off the end of the file"
    return stages


def dockerfile(name: str) -> list[list[Instruction]]:
    return parse((DOCKER / name).read_text())


def pairs(args: str) -> dict[str, str]:
    """ENV or ARG arguments as name → value (an ARG without a default is absent)."""
    return dict(word.split("=", 1) for word in shlex.split(args) if "=" in word)


def arg_names(stage: list[Instruction]) -> set[str]:
    return {shlex.split(i.args)[0].split("=", 1)[0] for i in stage if i.keyword == "ARG"}


def expand(value: str, env: dict[str, str]) -> str:
    """The builder's substitution in ENV, COPY, WORKDIR: $X, ${X}, ${X:-word}, ${X:+word}."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        current = env.get(name, "")
        if m.group(2) == ":-":
            return current or m.group(3)
        if m.group(2) == ":+":
            return m.group(3) if current else ""
        return current
    return re.sub(r"\$\{(\w+)(?:(:[-+])([^}]*))?\}|\$(\w+)", one, value)


def torch_pin() -> str:
    pins = {re.sub(r"\s", "", r) for extra in ("ml", "serve")
            for r in PYPROJECT["project"]["optional-dependencies"][extra] if r.startswith("torch")}
    assert len(pins) == 1, pins
    return pins.pop()


# --- what every image is made of -----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_both_stages_start_from_the_base_image_argument(name: str) -> None:
    preamble, *stages = dockerfile(name)
    assert [i.keyword for i in preamble] == ["ARG"]
    assert pairs(preamble[0].args) == {"BASE_IMAGE": "python:3.11-slim"}
    assert len(stages) == 2
    assert stages[0][0].args == "${BASE_IMAGE} AS builder"
    assert stages[1][0].args == "${BASE_IMAGE}"


@pytest.mark.parametrize("name", NAMES)
def test_the_image_is_the_builders_venv_and_nothing_installed_in_it(name: str) -> None:
    """No wheel layer, no pip cache: the final stage only copies the builder's venv."""
    final = dockerfile(name)[-1]
    copies = [i.args for i in final if i.keyword in ("COPY", "ADD")]
    assert copies == [f"--from=builder {VENV} {VENV}"]
    runs = [i.args for i in final if i.keyword == "RUN"]
    assert runs and not any("pip" in run or "install" in run for run in runs)


@pytest.mark.parametrize("name", NAMES)
def test_python_and_mlkube_resolve_to_the_venv_quietly(name: str) -> None:
    final = dockerfile(name)[-1]
    env: dict[str, str] = {}
    for i in final:
        if i.keyword == "ENV":
            env.update(pairs(i.args))
    assert env["PATH"].split(":")[0] == f"{VENV}/bin" and env["VIRTUAL_ENV"] == VENV
    assert env["GIT_PYTHON_REFRESH"] == "quiet"  # GitPython's warning: the image has no git
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.parametrize("name", NAMES)
def test_image_runs_as_the_pods_user(name: str) -> None:
    """Pod Security "restricted": runAsNonRoot needs a numeric USER, the one the pods set."""
    context = pod_security_context()
    assert (context.run_as_user, context.run_as_group) == (RUN_AS_USER, RUN_AS_USER)
    final = dockerfile(name)[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users == [f"{RUN_AS_USER}:{RUN_AS_USER}"]
    useradd = [i.args for i in final if i.keyword == "RUN" and "useradd" in i.args]
    assert len(useradd) == 1 and f"--uid {RUN_AS_USER} " in useradd[0]


@pytest.mark.parametrize("name", NAMES)
def test_builder_pins_torch_as_pyproject_and_the_makefile_do(name: str) -> None:
    pin = torch_pin()
    assert pin in (ROOT / "Makefile").read_text().split()
    builder = dockerfile(name)[1]
    torch_runs = [i.args for i in builder if i.keyword == "RUN" and "torch" in i.args]
    assert len(torch_runs) == 1
    assert set(re.findall(r"torch==[\w.+]+", torch_runs[0])) == {pin}


@pytest.mark.parametrize("name", NAMES)
def test_builder_installs_the_package_with_its_extras_into_the_venv(name: str) -> None:
    builder = dockerfile(name)[1]
    runs = [i.args for i in builder if i.keyword == "RUN"]
    assert runs[0] == f"python3 -m venv {VENV}"
    assert f"PATH={VENV}/bin:$PATH" in [i.args for i in builder if i.keyword == "ENV"]
    extras = IMAGES[name][1]
    assert runs[-1] == f"pip install '.[{extras}]'"
    assert set(extras.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    copies = [i.args for i in builder if i.keyword == "COPY"]
    assert "pyproject.toml README.md ./" in copies and "plugins ./plugins" in copies
    env = pairs(next(i.args for i in builder if i.keyword == "ENV"))
    assert env["PIP_NO_CACHE_DIR"] == "1"


def test_the_three_builders_install_torch_alike() -> None:
    """Only the default index differs: CPU wheels for the CPU images, pip's own (PyPI's Linux
    wheel is the CUDA build) for the trainer."""
    builders = {name: dockerfile(name)[1] for name in NAMES}
    # All but the TORCH_INDEX_URL default and the last RUN (the extras).
    alike = [[i for i in b[:-1] if not i.args.startswith("TORCH_INDEX_URL=")]
             for b in builders.values()]
    assert alike[0] == alike[1] == alike[2]
    index = {name: pairs(next(i.args for i in b if i.keyword == "ARG"
                              and i.args.startswith("TORCH_INDEX_URL=")))["TORCH_INDEX_URL"]
             for name, b in builders.items()}
    assert index == {"Dockerfile": CPU_INDEX, "Dockerfile.gpu": "",
                     "Dockerfile.server": CPU_INDEX}
    for b in builders.values():
        assert {"PIP_INDEX_URL", "TORCH_INDEX_URL", "TORCH_WHEELS"} <= arg_names(b)


@pytest.mark.parametrize("name", NAMES)
def test_every_shell_script_parses(name: str) -> None:
    """The builder's default shell is /bin/sh (dash on Debian): every RUN, in POSIX sh."""
    for stage in dockerfile(name)[1:]:
        for i in stage:
            if i.keyword == "RUN":
                done = subprocess.run(["/bin/sh", "-n", "-c", i.args], capture_output=True,
                                      text=True)
                assert done.returncode == 0, (i.args, done.stderr)


def test_the_build_context_keeps_what_the_images_copy_and_drops_the_venv() -> None:
    ignores = {name: (DOCKER / f"{name}.dockerignore").read_text() for name in NAMES}
    assert len(set(ignores.values())) == 1
    patterns = [line.strip() for line in ignores["Dockerfile"].splitlines()
                if line.strip() and not line.startswith("#")]

    def matches(path: str, pattern: str) -> bool:  # "**/name" at any depth, else from the root
        if pattern.startswith("**/"):
            return fnmatch(path.rsplit("/", 1)[-1], pattern.removeprefix("**/"))
        return fnmatch(path, pattern)

    def ignored(path: str) -> bool:  # the path or a folder above it
        parts = path.split("/")
        return any(matches("/".join(parts[:n]), pattern)
                   for n in range(1, len(parts) + 1) for pattern in patterns)

    for kept in ("pyproject.toml", "README.md", "plugins/mlkube/spec.py", "docker/wheels/README.md",
                 "docker/wheels/cpu/torch-2.13.0-py3-none-any.whl"):
        assert not ignored(kept), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "plugins/mlkube/__pycache__/spec.pyc",
                    "plugins/mlkube.egg-info/PKG-INFO", ".mlkube/mlflow.db"):
        assert ignored(dropped), dropped
    assert (DOCKER / "wheels").is_dir()  # the default TORCH_WHEELS source must exist


# --- the builder's torch install, run -------------------------------------------------------


def fake_torch(folder: Path, version: str, source: str) -> Path:
    """A wheel named torch that says where it came from (no dependencies)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": f'__version__ = "{version}"\nSOURCE = "{source}"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                               "Tag: py3-none-any\n")}
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"])
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, content in files.items():
            z.writestr(path, content)
    return wheel


def fake_index(root: Path, version: str) -> str:
    """A PEP 503 simple index on disk holding one fake torch; its file:// URL."""
    wheel = fake_torch(root / "files", version, "index")
    (root / "simple" / "torch").mkdir(parents=True)
    (root / "simple" / "torch" / "index.html").write_text(
        f'<a href="{wheel.as_uri()}">{wheel.name}</a>\n')
    return (root / "simple").as_uri() + "/"


def build_torch(name: str, tmp: Path, context: Path, build_args: dict[str, str]
                ) -> subprocess.CompletedProcess[str]:
    """The builder stage up to its torch install, as the builder runs it: ARGs (only the
    declared ones take build args), ENV, COPY from the context, RUN with /bin/sh -c. Container
    paths live under tmp/rootfs; pip reads no configuration of this machine."""
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    builder = dockerfile(name)[1]
    assert set(build_args) <= arg_names(builder)
    base_python = Path(os.path.realpath(sys.executable)).parent  # the base image's python3
    assert (base_python / "python3").exists()
    env = {"PATH": f"{base_python}:/usr/bin:/bin", "HOME": str(tmp),
           "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "5"}

    def host(value: str) -> str:
        return re.sub(r"(?<![\w/])(/opt/venv|/tmp/wheels|/src)", lambda m: f"{rootfs}{m[1]}",
                      value)

    cwd = rootfs
    for i in builder[1:]:
        if i.keyword == "ARG":
            words = shlex.split(i.args)[0].split("=", 1)
            if words[0] in build_args:
                env[words[0]] = build_args[words[0]]
            elif len(words) == 2:
                env[words[0]] = words[1]
        elif i.keyword == "ENV":
            env.update({k: host(expand(v, env)) for k, v in pairs(i.args).items()})
        elif i.keyword == "COPY":
            source, dest = (expand(w, env) for w in shlex.split(i.args))
            shutil.copytree(context / source, host(dest), dirs_exist_ok=True)
        elif i.keyword == "RUN":
            done = subprocess.run(["/bin/sh", "-c", host(i.args)], env=env, cwd=cwd,
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0 or "torch" in i.args:
                return done
        else:
            raise AssertionError(f"{i.keyword} before the torch install")
    raise AssertionError("no torch install")


def installed_torch(tmp: Path) -> tuple[str, str]:
    out = subprocess.run([str(tmp / "rootfs" / VENV.lstrip("/") / "bin" / "python"), "-c",
                          "import torch; print(torch.__version__, torch.SOURCE)"],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context: the repository's docker/wheels and a filled wheel folder."""
    root = tmp_path / "context"
    shutil.copytree(DOCKER / "wheels", root / "docker" / "wheels")
    fake_torch(root / "wheels" / "cpu", torch_pin().split("==")[1], "wheels")
    return root


def test_a_wheel_folder_installs_torch_with_no_index(tmp_path: Path, context: Path) -> None:
    """TORCH_WHEELS: torch from the folder alone, though an index offers a newer build
    (2.13.0+index sorts above 2.13.0) and TORCH_INDEX_URL keeps its default."""
    index = fake_index(tmp_path / "index", torch_pin().split("==")[1] + "+index")
    done = build_torch("Dockerfile", tmp_path, context,
                       {"TORCH_WHEELS": "wheels/cpu", "PIP_INDEX_URL": index})
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed_torch(tmp_path) == (torch_pin().split("==")[1], "wheels")


def test_a_wheel_folder_with_another_torch_fails_the_build(tmp_path: Path, context: Path) -> None:
    shutil.rmtree(context / "wheels" / "cpu")
    fake_torch(context / "wheels" / "cpu", "2.0.0", "wheels")
    done = build_torch("Dockerfile.gpu", tmp_path, context, {"TORCH_WHEELS": "wheels/cpu"})
    assert done.returncode != 0 and "torch==" in done.stderr


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.server"])
def test_torch_index_url_names_where_torch_comes_from(name: str, tmp_path: Path,
                                                      context: Path) -> None:
    """Without TORCH_WHEELS the wheel folder (the default one, or a filled one) is not used."""
    index = fake_index(tmp_path / "index", torch_pin().split("==")[1])
    done = build_torch(name, tmp_path, context, {"TORCH_INDEX_URL": index})
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed_torch(tmp_path)[1] == "index"


def test_the_trainer_takes_torch_from_pips_own_index_by_default(tmp_path: Path,
                                                                 context: Path) -> None:
    """The GPU image's TORCH_INDEX_URL is empty: torch comes from PIP_INDEX_URL (a mirror)."""
    index = fake_index(tmp_path / "index", torch_pin().split("==")[1])
    done = build_torch("Dockerfile.gpu", tmp_path, context, {"PIP_INDEX_URL": index})
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed_torch(tmp_path)[1] == "index"


# --- make images ------------------------------------------------------------------------------


def make_images(*overrides: str) -> dict[str, list[str]]:
    """`make -n images`: each Dockerfile's docker build argv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BASE_IMAGE", "PIP_INDEX_URL", "TORCH_INDEX_URL", "TORCH_WHEELS",
                        "GPU_TORCH_INDEX_URL", "GPU_TORCH_WHEELS", "IMAGE_REPO", "IMAGE_TAG")}
    done = subprocess.run(["make", "-s", "-n", "images", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    builds = {}
    for line in done.stdout.replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        assert argv[:2] == ["docker", "build"] and argv[-1] == "."
        builds[argv[argv.index("-f") + 1].removeprefix("docker/")] = argv
    assert sorted(builds) == NAMES
    return builds


def build_args(argv: list[str]) -> dict[str, str]:
    return dict(argv[n + 1].split("=", 1) for n, a in enumerate(argv) if a == "--build-arg")


def test_make_images_builds_the_images_the_manifests_name() -> None:
    for name, argv in make_images().items():
        assert argv[argv.index("-t") + 1] == IMAGES[name][0]
        assert build_args(argv) == {}  # the Dockerfiles' defaults


def test_the_readmes_docker_build_commands_are_what_make_images_runs() -> None:
    readme = (ROOT / "README.md").read_text().partition("\n## Images\n")[2].partition("\n## ")[0]
    documented = {}
    for line in readme.splitlines():  # the one-line commands
        if not line.startswith("docker build -f") or line.endswith("\\"):
            continue
        argv = shlex.split(line.split("#")[0])
        if argv[-1] == ".":
            documented[argv[3].removeprefix("docker/")] = argv[argv.index("-t") + 1]
    assert documented == {name: IMAGES[name][0] for name in NAMES}
    assert documented == {name: argv[argv.index("-t") + 1] for name, argv in make_images().items()}


def test_make_images_passes_a_private_base_a_mirror_and_the_torch_sources() -> None:
    builds = make_images("IMAGE_REPO=registry.local/ml", "IMAGE_TAG=dev",
                         "BASE_IMAGE=registry.local/debian:12", "PIP_INDEX_URL=https://m/simple",
                         "TORCH_WHEELS=docker/wheels/cpu", "TORCH_INDEX_URL=",
                         "GPU_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130")
    common = {"BASE_IMAGE": "registry.local/debian:12", "PIP_INDEX_URL": "https://m/simple"}
    cpu = {**common, "TORCH_WHEELS": "docker/wheels/cpu", "TORCH_INDEX_URL": ""}
    assert build_args(builds["Dockerfile"]) == build_args(builds["Dockerfile.server"]) == cpu
    assert build_args(builds["Dockerfile.gpu"]) == {
        **common, "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu130"}
    for name, argv in builds.items():
        default = IMAGES[name][0]
        assert argv[argv.index("-t") + 1] == ("registry.local/ml/" + default.split("/")[-1]
                                               .split(":")[0] + ":dev")
        assert set(build_args(argv)) <= arg_names(dockerfile(name)[0] + dockerfile(name)[1])


# --- what the images run ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_image_command_runs(name: str) -> None:
    cmd = next(i.args for i in dockerfile(name)[-1] if i.keyword == "CMD")
    argv = json.loads(cmd)
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout


def test_server_image_runs_mlkube_serve_model_from_its_environment() -> None:
    final = dockerfile("Dockerfile.server")[-1]
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8080"]
    serve = PYPROJECT["project"]["optional-dependencies"]["serve"]
    assert all(any(r.startswith(p) for r in serve) for p in ("mlflow==", "torch==", "starlette",
                                                              "uvicorn"))
    argv = json.loads(next(i.args for i in final if i.keyword == "CMD"))
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("exec mlkube serve model ")
    line = (argv[2].removeprefix("exec ").replace("$MODEL_URI", "models:/m/3")
            .replace("$MODEL_NAME", "m").replace("$MODEL_VERSION", "3"))
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.handler.__name__ == "_serve_model"
    assert (args.model_uri, args.name, args.version) == ("models:/m/3", "m", "3")
    assert (args.host, args.port) == ("0.0.0.0", 8080)
