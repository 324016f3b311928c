"""The one error type a user sees: a single line saying what, where, and what to do."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a library's exception message (MLflow keeps it in .message)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safe_url(url: str) -> str:
    """``url`` with its password, if it holds one, masked: for messages and logs."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def database_unusable(what: str, url: str, exc: BaseException, setting: str) -> MlkubeError:
    """The one line for a database that cannot be reached or refuses the login."""
    full = disk_full(exc)
    if full is not None:
        return MlkubeError(f"{what} {safe_url(url)} has no disk space left ({first_line(full)}): "
                           "free space on the disk that holds it, then run the step again")
    reason = first_line(getattr(exc, "orig", None) or exc)
    return MlkubeError(f"{what} {safe_url(url)} is not usable: {reason}; check {setting} (host, "
                       "port, user, database) and the password (in the URL or PGPASSWORD)")


class MlkubeError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    Step programs turn it into a one-line message on stderr and a non-zero exit
    (:attr:`exit_code`); every other exception is a bug and keeps its traceback.
    """

    exit_code: int = 1


class Busy(MlkubeError):
    """Another run holds the lock this one needs and kept it while this one waited: nothing
    was changed, and a retry gets past it (exit 75, EX_TEMPFAIL, which Argo's retry rule and
    Airflow's retries retry)."""

    exit_code = 75


def missing_extra(exc: ModuleNotFoundError) -> MlkubeError | None:
    """The one-line install hint for a missing optional dependency, or ``None`` if not one."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return MlkubeError(f"the Python package {top!r} is not installed: it comes with the "
                       f"{extra!r} extra, install it with pip install 'mlkube[{extra}]'")


# A full disk, as the OS says it (ENOSPC, EDQUOT) and as libraries that wrap it word it
# (SQLite's SQLITE_FULL "database or disk is full", PostgreSQL's "could not extend file ...:
# No space left on device", torch's writer).
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_WORDS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def disk_full(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain (causes, contexts, a SQLAlchemy error's ``orig``) that
    says a disk is full, preferring an ``OSError`` that names its file; ``None`` if none does."""
    found: list[BaseException] = []
    seen: set[int] = set()
    queue: list[BaseException | None] = [exc]
    while queue:
        item = queue.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in _DISK_FULL_ERRNOS:
            found.append(item)
        elif any(words in str(item).lower() for words in _DISK_FULL_WORDS):
            found.append(item)
        queue += [getattr(item, "orig", None), item.__cause__, item.__context__]
    def rank(item: BaseException) -> int:
        if isinstance(item, OSError) and item.errno in _DISK_FULL_ERRNOS:
            return 0 if item.filename else 1
        line = first_line(item).lower()
        return 2 if any(words in line for words in _DISK_FULL_WORDS) else 3

    # The most telling one; among equals the innermost (a wrapper's first line is its own).
    return min(reversed(found), key=rank) if found else None


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _free(path: Path) -> str:
    """`` (N free now)`` for the file system holding ``path`` (or its nearest existing parent)."""
    for place in (path, *path.parents):
        if os.path.exists(place):
            try:
                return f" ({_size(shutil.disk_usage(place).free)} free now)"
            except OSError:
                return ""
    return ""


def disk_full_error(exc: BaseException, state_dir: Path | None) -> MlkubeError:
    """The one line for a full disk: what was written where, and what to do.

    The place is the file the ``OSError`` names, else ``state_dir`` (where the embedded
    SQLite databases, checkpoints and artifacts live).
    """
    found = disk_full(exc) or exc
    filename = getattr(found, "filename", None) if isinstance(found, OSError) else None
    if isinstance(found, OSError) and found.errno == errno.EDQUOT:
        what = "the disk quota is exhausted"
    else:
        what = "the disk is full"
    reason = (found.strerror if isinstance(found, OSError) and found.strerror
              else first_line(found))
    if filename:
        where = Path(os.fsdecode(filename))
        place = f"writing {where}"
    elif state_dir is not None:
        where = state_dir
        place = f"writing under the state directory {state_dir}"
    else:
        return MlkubeError(f"{what} ({reason}): free space on the disk it names, then run the "
                           "step again")
    return MlkubeError(f"{what} ({reason}) {place}{_free(where)}: free space on that file "
                       "system, or set MLKUBE_STATE_DIR (and --artifact-root) to a directory on "
                       "a larger one, then run the step again")


# -- the extras a command needs, checked before it runs ------------------------------------

# Each extra's distributions (pyproject.toml's optional-dependencies, without dev and all) and
# the module that shows one is installed; tests/test_extras.py holds the two to each other.
EXTRA_PACKAGES: dict[str, dict[str, str]] = {
    "ml": {"mlflow": "mlflow", "optuna": "optuna", "torch": "torch", "pandas": "pandas",
           "pyarrow": "pyarrow", "scikit-learn": "sklearn", "matplotlib": "matplotlib",
           "psycopg": "psycopg"},
    "serve": {"mlflow": "mlflow", "torch": "torch", "starlette": "starlette",
              "uvicorn": "uvicorn", "httptools": "httptools", "uvloop": "uvloop"},
    "airflow": {"apache-airflow": "airflow",
                "apache-airflow-providers-cncf-kubernetes": "airflow.providers.cncf.kubernetes"},
    "argo": {"hera": "hera", "kubernetes": "kubernetes", "jsonschema": "jsonschema",
             "kubernetes-validate": "kubernetes_validate"},
    "kube": {"kubernetes": "kubernetes"},
}
_NOT_ON_WINDOWS = {"uvloop"}  # pyproject.toml: uvloop; sys_platform != 'win32'
# The extra to name for a missing top-level module: the smallest that installs it (numpy comes
# with ml's pandas and torch).
EXTRAS: dict[str, str] = {"numpy": "ml"}
for _extra in ("kube", "ml", "serve", "argo", "airflow"):
    for _module in EXTRA_PACKAGES[_extra].values():
        EXTRAS.setdefault(_module.split(".")[0], _extra)


def _importable(module: str) -> bool:
    import importlib.util
    import sys

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return module in sys.modules


def needs_extras(what: str, extras: tuple[str, ...] | list[str]) -> MlkubeError | None:
    """The one line naming every extra ``what`` needs, when a package of any is missing.

    Looks for each distribution's module without importing it; ``None`` when all are there.
    """
    import sys

    missing: list[str] = []
    for extra in extras:
        for distribution, module in EXTRA_PACKAGES[extra].items():
            if module in _NOT_ON_WINDOWS and sys.platform == "win32":
                continue
            if distribution not in missing and not _importable(module):
                missing.append(distribution)
    if not missing:
        return None
    names = " and ".join((", ".join(extras[:-1]), extras[-1])) if len(extras) > 1 else extras[0]
    return MlkubeError(f"{what} needs the extra{'s' if len(extras) > 1 else ''} {names} "
                       f"(missing: {', '.join(missing)}); install "
                       f"{'them' if len(extras) > 1 else 'it'} with pip install "
                       f"'mlkube[{','.join(extras)}]'")
