"""The one error type a user sees: a single line saying what, where, and what to do."""

from __future__ import annotations

import re


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a library's exception message (MLflow keeps it in .message)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safe_url(url: str) -> str:
    """``url`` with its password, if it holds one, masked: for messages and logs."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def database_unusable(what: str, url: str, exc: BaseException, setting: str) -> MlkubeError:
    """The one line for a database that cannot be reached or refuses the login."""
    reason = first_line(getattr(exc, "orig", None) or exc)
    return MlkubeError(f"{what} {safe_url(url)} is not usable: {reason}; check {setting} (host, "
                       "port, user, database) and the password (in the URL or PGPASSWORD)")


class MlkubeError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    Step programs turn it into a one-line message on stderr and a non-zero exit; every
    other exception is a bug and keeps its traceback.
    """


# The extra that installs each optional top-level module (pyproject.toml's optional-dependencies).
EXTRAS = {
    "mlflow": "ml", "torch": "ml", "optuna": "ml", "pandas": "ml", "pyarrow": "ml",
    "sklearn": "ml", "numpy": "ml", "matplotlib": "ml", "airflow": "airflow", "hera": "argo",
    "jsonschema": "argo", "kubernetes": "kube",
}


def missing_extra(exc: ModuleNotFoundError) -> MlkubeError | None:
    """The one-line install hint for a missing optional dependency, or ``None`` if not one."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return MlkubeError(f"the Python package {top!r} is not installed: it comes with the "
                       f"{extra!r} extra, install it with pip install 'mlkube[{extra}]'")
