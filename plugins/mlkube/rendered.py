"""Rendered manifests on disk: written on request, or compared with what is committed.

Both ``mlkube argo render`` and ``mlkube platform render`` write their files with
:func:`write_or_check`: ``--check`` writes nothing and fails when the folder is stale.
"""

from __future__ import annotations

from pathlib import Path

from mlkube.errors import MlkubeError


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write ``files`` under ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        paths.append(path)
    return paths


def stale(files: dict[str, str], out: Path) -> list[str]:
    """Names of ``files`` missing from ``out`` or different there."""
    return [name for name, text in files.items()
            if not (out / name).is_file() or (out / name).read_text() != text]


def write_or_check(files: dict[str, str], out: Path, *, check: bool, command: str) -> int:
    """Write ``files`` under ``out`` (printing each path), or with ``check`` fail when any is
    stale there, naming ``command`` (e.g. ``mlkube argo render``) as what regenerates them."""
    if check:
        old = stale(files, out)
        if old:
            raise MlkubeError(f"stale under {out}: {', '.join(old)}; regenerate with "
                              f"`{command} --out {out}` and commit")
        print(f"{len(files)} files under {out} are up to date")
        return 0
    for path in write(files, out):
        print(f"wrote {path}")
    return 0
