"""A real PostgreSQL server for tests: initdb on a temp dir, loopback only, stopped at the end.

PostgreSQL 15 is on every development and CI machine (Debian's package). As root, the server
runs as the ``postgres`` user. TCP logins need a password (scram-sha-256), so a wrong one is
refused as on a cluster; the superuser logs in over the Unix socket in the data dir.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlkube_testing import free_port

USER, PASSWORD = "mlkube", "s3cret-pw"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    """Whether initdb and pg_ctl are installed."""
    return _binary("initdb") is not None and _binary("pg_ctl") is not None


class Postgres:
    """One server; ``database()`` makes a new empty database owned by ``mlkube``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlkube-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, text=True)

    def start(self) -> Postgres:
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(_binary("initdb")), "-D", str(self.data), "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256")
        self._run(str(_binary("pg_ctl")), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200",
                  "start")
        self.query(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self._made = 0
        return self

    def database(self, prefix: str) -> str:
        """A new, empty database; its name."""
        self._made += 1
        name = f"{prefix}_{self._made}"
        self.query(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def stop(self) -> None:
        try:
            self._run(str(_binary("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, password: str | None = PASSWORD) -> str:
        login = f"{USER}:{password}" if password is not None else USER
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Run ``sql`` as the superuser over the Unix socket; the rows it returns."""
        import psycopg

        connection = psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                                     dbname="postgres", autocommit=True)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def connections(self, database: str) -> int:
        """Client connections open to ``database`` now."""
        rows = self.query(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'")
        return int(rows[0][0])  # type: ignore[call-overload]
