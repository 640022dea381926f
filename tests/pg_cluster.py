"""A throwaway PostgreSQL server for the archive tests: Debian's ``postgresql`` binaries
(/usr/lib/postgresql/*/bin), a cluster made by initdb in a fresh temporary folder, on a free port on
127.0.0.1 with its unix socket in that folder, stopped and removed at the end.

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` system user (which the
Debian package creates) and every server command runs through ``runuser -u postgres``; as any other user it
runs as that user. Clients connect over TCP as the superuser ``postgres`` (trust authentication: the server
listens on the loopback only, and its socket folder is private).

`cluster_or_skip` is what fixtures call: a missing PostgreSQL skips with the reason, and fails under CI
(``CI`` set), where .ci/run installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from vitcodec.cloud.process import free_port

SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries (or the postgres user, as root) are missing, or the cluster did not start."""


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
                        if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable("PostgreSQL's server binaries (initdb, pg_ctl) are missing: apt-get install postgresql "
                              "(.ci/run installs it when run as root)")


class PostgresCluster:
    """initdb + pg_ctl in a temporary folder; `url()` names a database in it."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(f"running as root needs the {SERVER_USER!r} system user (the Debian "
                                          "postgresql package creates it)") from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root needs runuser (util-linux) to start PostgreSQL")
        self.root = Path(tempfile.mkdtemp(prefix="vitcodec-pg-"))
        if self.as_root:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        try:
            self._run("initdb", "-D", str(self.data), "--auth=trust", "--username=postgres", "--encoding=UTF8",
                      "--locale=C", "--no-sync")
        except BaseException:
            self.destroy()
            raise

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        argv = [str(self.bindir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{log}")
        return done.stdout

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server (on the port of the last start, else a free one)."""
        port = self.port or free_port()
        # fsync off: a test cluster whose machine does not crash; a stopped or killed server keeps its commits
        options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options)
        self.port = port

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session (clients see their connection break); ``immediate``
        is a crash (no shutdown checkpoint)."""
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "archive") -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (PostgresUnavailable, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def cluster_or_skip() -> PostgresCluster:
    """A started cluster; skip when PostgreSQL (or psycopg) is missing, fail instead under CI."""
    try:
        import psycopg  # noqa: F401 - the cloud extra installs it

        cluster = PostgresCluster()
    except (ImportError, PostgresUnavailable) as exc:
        reason = f"the PostgreSQL archive tests need a PostgreSQL server and psycopg: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
