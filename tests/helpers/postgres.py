"""A throwaway PostgreSQL cluster for the test session, and database fixtures.

Fixtures (this module is a pytest plugin, registered by the root conftest):

* `postgres_cluster` (session): the running `PostgresCluster`; call
  `create_database()` for a fresh, empty database URL.
* `postgres_url` (session): the URL of one database created for the session.
* `fresh_postgres_url` (function): a new empty database for this test.
* `db_backend` (function, parametrized "sqlite"/"postgresql"): a `DbBackend`
  with `name` and `url` (a SQLite file in the test's tmp dir, or a fresh
  PostgreSQL database); the postgresql case carries the `postgres` mark.
* `store_db` (function, parametrized like `db_backend`): `(settings, database)`
  with `pushjobs.server.store` opened on an empty database and closed
  afterwards (PostgreSQL: a shared database, emptied before each test).
* `fresh_store_db` (function): the same on a database of its own, for tests
  that change the schema.

The cluster is `initdb` + `pg_ctl` into a temp dir, listening on 127.0.0.1 on a
free port (and a unix socket in the temp dir), trust auth, fsync off. initdb
refuses to run as root, so as root the binaries run as the `postgres` system
user (or a created `pushjobs-pg` user, or `nobody`) through `runuser`. When
PostgreSQL is not installed the fixtures FAIL: the Makefile installs it, and a
skipped back end would hide a broken one.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest

_PG_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_postgres_bindir() -> Optional[str]:
    """The directory holding initdb, pg_ctl and postgres (PATH first, then the newest Debian version)."""
    found = shutil.which("initdb")
    candidates = []
    if found:
        candidates.append(os.path.dirname(os.path.realpath(found)))
        candidates.append(os.path.dirname(found))

    def version_key(path: str) -> tuple:
        v = path.split("/")[-2]
        return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in _PG_BINARIES):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_user() -> str:
    for name in ("postgres", "pushjobs-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    useradd = shutil.which("useradd")
    if useradd:
        r = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pushjobs-pg"],
            capture_output=True,
        )
        if r.returncode == 0:
            return "pushjobs-pg"
    return "nobody"


class PostgresCluster:
    """One initdb'd cluster in a temp dir; `start()` once, `create_database()` many times, `stop()`."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="pushjobs-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.sockdir = os.path.join(self.root, "sock")
        self.logfile = os.path.join(self.root, "postgres.log")
        self.port = 0
        self.superuser = "postgres"
        self._names = itertools.count(1)
        self._run_as: Optional[str] = None
        self.running = False
        if os.geteuid() == 0:
            self._run_as = _unprivileged_user()
            os.chmod(self.root, 0o755)
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _cmd(self, argv: list[str]) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--"] + argv
        return argv

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        r = subprocess.run(
            self._cmd(argv), capture_output=True, text=True, timeout=timeout, cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if r.returncode != 0:
            log = ""
            if os.path.exists(self.logfile):
                with open(self.logfile, errors="replace") as f:
                    log = f.read()[-2000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()} {r.stdout.strip()[-500:]} {log}")

    def start(self) -> None:
        self._run(self._cmd_initdb())
        os.mkdir(self.sockdir)
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.sockdir, pw.pw_uid, pw.pw_gid)
        last: Optional[Exception] = None
        for _ in range(5):  # another process may grab the free port before postgres binds it
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -F "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=150 -c shared_buffers=32MB"
            )
            try:
                self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-o", opts,
                           "-l", self.logfile, "-w", "-t", "60", "start"])
                self.running = True
                atexit.register(self.stop)
                return
            except RuntimeError as e:
                last = e
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def _cmd_initdb(self) -> list[str]:
        return [os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-A", "trust", "-U", self.superuser,
                "-E", "UTF8", "--locale=C", "--no-sync"]

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: Optional[str] = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg2

        name = name or f"t{os.getpid()}_{next(self._names)}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.superuser, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w", "stop"],
                          timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    """Start a cluster or fail the test loudly (never skip)."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin); "
                    "run `make sysdeps`", pytrace=False)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
    except Exception as e:  # noqa: BLE001 - turned into a loud test failure
        cluster.stop()
        pytest.fail(f"could not start the throwaway PostgreSQL cluster: {e}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """One database for the whole session; use `fresh_postgres_url` for an empty one."""
    return postgres_cluster.create_database()


@pytest.fixture
def fresh_postgres_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.create_database()


@dataclass(frozen=True)
class DbBackend:
    name: str  # "sqlite" | "postgresql"
    url: str


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request, tmp_path) -> DbBackend:
    if request.param == "sqlite":
        return DbBackend("sqlite", f"sqlite:///{tmp_path}/push-jobs-server.sqlite3")
    cluster = request.getfixturevalue("postgres_cluster")
    return DbBackend("postgresql", cluster.create_database())


def _open_store(url: str, tmp_path):
    from pushjobs.server import store
    from pushjobs.server.settings import Settings

    settings = Settings(data_dir=str(tmp_path), database_url=url, server_name="127.0.0.1")
    return settings, store.open_database(settings)


@pytest.fixture(scope="session")
def _shared_store_postgres_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_db(request, tmp_path):
    """The store opened on an empty database; yields (settings, database).

    SQLite: a new file in tmp_path. PostgreSQL: one database for the session
    whose tables are emptied before each test (creating a database costs most
    of a second). Tests that change the schema itself use `fresh_store_db`."""
    from pushjobs.server import store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/push-jobs-server.sqlite3"
    else:
        url = request.getfixturevalue("_shared_store_postgres_url")
    settings, database = _open_store(url, tmp_path)
    try:
        if request.param == "postgresql":
            tables = ", ".join(f'"{m._meta.table_name}"' for m in store.MODELS if m is not store.SchemaVersion)
            database.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        yield settings, database
    finally:
        store.close_database()


@pytest.fixture
def fresh_store_db(db_backend: DbBackend, tmp_path):
    """Like `store_db`, on a database of its own (PostgreSQL: a new one); for schema changes."""
    from pushjobs.server import store

    settings, database = _open_store(db_backend.url, tmp_path)
    try:
        yield settings, database
    finally:
        store.close_database()
