"""A PostgreSQL server for tests: ``$DFKD_PG_URL`` if set, else a throwaway local one.

``pg_url`` (session fixture) yields a ``postgresql://`` URL:

1. ``$DFKD_PG_URL`` (exported by ``.ci/start-postgres`` in CI); it must answer, else the
   test fails (a CI server that is down is an error, not a skip);
2. otherwise a temporary cluster: ``initdb`` into a temp dir (as the ``postgres`` user when
   running as root), ``pg_ctl start`` on a free 127.0.0.1 port, database ``dfkd``, random
   password; stopped and deleted at the end of the session;
3. otherwise ``pytest.skip`` saying why (no binaries, no psycopg2, no ``postgres`` user...).

Import it explicitly where needed: ``from pg_fixture import pg_url``.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


class PgUnavailable(RuntimeError):
    """No server can be started here (the message says why)."""


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _bin_dir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: [int(x) for x in re.findall(r"\d+", d)])
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise PgUnavailable("no initdb/pg_ctl (install Debian's 'postgresql' package)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_url(url: str) -> None:
    """Raise if ``url`` does not accept a connection."""
    import psycopg2
    psycopg2.connect(url, connect_timeout=10).close()


class TempPostgres:
    """A throwaway cluster in a temp dir, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = os.geteuid() == 0
        if self.root:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgUnavailable("running as root and there is no 'postgres' user") from exc
        self.dir = Path(tempfile.mkdtemp(prefix="dfkd-pg-"))
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.url = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/dfkd"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if not self.root:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", "postgres", "--", *cmd]
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise PgUnavailable(f"{Path(cmd[0]).name} failed: {(r.stderr or r.stdout)[-800:]}")

    def start(self) -> "TempPostgres":
        pw = self.dir / "pwfile"
        pw.write_text(self.password + "\n")
        os.chmod(self.dir, 0o700)
        if self.root:
            for p in (self.dir, pw):
                os.chown(p, self.owner.pw_uid, self.owner.pw_gid)
        data = self.dir / "data"
        self._run([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                   "--auth=scram-sha-256", f"--pwfile={pw}", "--no-sync"])
        pw.unlink()
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self._run([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"),
                   "-w", "-t", "60", "-o", opts, "start"])
        import psycopg2
        conn = psycopg2.connect(self.url.rsplit("/", 1)[0] + "/postgres", connect_timeout=10)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE dfkd")
        conn.close()
        return self

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                       "-w", "stop"])
        except PgUnavailable:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url():
    """URL of a reachable PostgreSQL server (see module docstring)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    url = os.environ.get("DFKD_PG_URL")
    if url:
        try:
            check_url(url)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"DFKD_PG_URL={_masked(url)} is set but does not answer: {exc}")
        yield url
        return
    server = None
    try:
        server = TempPostgres()
        server.start()
    except (PgUnavailable, OSError, subprocess.SubprocessError, ImportError) as exc:
        if server is not None:
            server.stop()
        pytest.skip(f"no PostgreSQL server for this test: DFKD_PG_URL is unset and a local "
                    f"one could not be started ({exc}). Run `export DFKD_PG_URL="
                    f"$(.ci/start-postgres)` or install Debian's postgresql package.")
    except Exception as exc:  # noqa: BLE001 - e.g. psycopg2 OperationalError on CREATE DATABASE
        server.stop()
        pytest.skip(f"a local PostgreSQL server started but is not usable: {exc}")
    try:
        yield server.url
    finally:
        server.stop()
