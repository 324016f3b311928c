"""The ``cluster`` and ``gpu`` markers do what README.md ("tests/") says: left out of a plain
run, run by ``-m cluster``, and skipped with the reason where there is no kubeconfig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, kubeconfig: Path) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *args, "tests/cluster"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return done.stdout


def test_cluster_tests_are_left_out_unless_asked_and_then_say_why_they_skip(
        tmp_path: Path) -> None:
    none = tmp_path / "no-kubeconfig"
    plain = _pytest("--collect-only", kubeconfig=none)
    assert "no tests collected" in plain and "deselected" in plain
    asked = _pytest("-m", "cluster", kubeconfig=none)
    assert "SKIPPED" in asked and "no kubeconfig: cluster tests need a cluster" in asked
    assert " passed" not in asked and " failed" not in asked
