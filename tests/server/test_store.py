"""The store: opening, schema creation and in-place migration, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import time

import peewee as pw
import pytest
from playhouse.migrate import SchemaMigrator, migrate

from pushjobs.server import store
from pushjobs.server.settings import Settings


def test_default_database_is_a_sqlite_file_in_data_dir(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path}/push-jobs-server.sqlite3"
    database = store.open_database(settings)
    try:
        assert isinstance(database, pw.SqliteDatabase)
        assert os.path.exists(tmp_path / "push-jobs-server.sqlite3")
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.current_schema_version(database) == store.SCHEMA_VERSION
    finally:
        store.close_database()


def test_relative_sqlite_path_is_inside_data_dir(tmp_path):
    assert store.sqlite_path("sqlite:///x.db", str(tmp_path)) == str(tmp_path / "x.db")
    assert store.sqlite_path("sqlite:////abs/x.db", str(tmp_path)) == "/abs/x.db"
    with pytest.raises(store.StoreError):
        store.sqlite_path("sqlite:///", str(tmp_path))


def test_missing_data_dir_is_a_clear_error(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "nope"))
    with pytest.raises(store.StoreError, match="does not exist"):
        store.open_database(settings)


def test_unknown_url_scheme_is_a_clear_error(tmp_path):
    with pytest.raises(store.StoreError, match="expected sqlite"):
        store.open_database(Settings(data_dir=str(tmp_path), database_url="mysql://x/y"))


def test_redact_url_hides_password():
    assert store.redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert store.redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_open_twice_keeps_one_version_row(fresh_store_db):
    settings, _ = fresh_store_db
    store.close_database()
    store.open_database(settings)
    assert store.SchemaVersion.select().count() == 1


def _org(name="acme"):
    return store.Org.create(name=name, guid=("%032x" % abs(hash(name)))[:32])


def test_models_roundtrip_and_cascade(store_db):
    org = _org()
    job = store.Job.create(
        id="a" * 32, org=org, command="chef-client", status="complete", run_timeout=3600, quorum=1, requestor="alice"
    )
    store.JobNode.create(job=job, node_name="n1", status="succeeded")
    store.JobOutput.create(job=job, node_name="n1", stdout=b"out\x00bin", stderr=b"")
    store.JobEvent.create(job=job, seq=1, name="start", data="{}")
    assert bytes(store.JobOutput.get().stdout) == b"out\x00bin"
    job.delete_instance()  # foreign keys are on: the children go with it
    assert store.JobNode.select().count() == 0
    assert store.JobOutput.select().count() == 0
    assert store.JobEvent.select().count() == 0


def test_unique_constraints_hold(store_db):
    org = _org()
    store.Client.create(org=org, name="n1", public_key="k")
    with pytest.raises(pw.IntegrityError):
        with store.db.atomic():
            store.Client.create(org=org, name="n1", public_key="k")


def test_migration_from_an_older_version_stamp(fresh_store_db):
    """A database stamped at version N is brought to N+1 by MIGRATIONS[N+1], in place."""
    database = store.db.obj
    v = store.SCHEMA_VERSION
    org = _org()

    def add_org_full_name(d: pw.Database) -> None:
        migrate(SchemaMigrator.from_database(d).add_column("org", "full_name", pw.TextField(default="")))

    found = store.migrate_schema(database, target=v + 1, migrations={v + 1: add_org_full_name})
    assert found == v
    assert store.current_schema_version(database) == v + 1
    cols = {c.name for c in database.get_columns("org")}
    assert "full_name" in cols
    assert store.Org.get_by_id(org.id).name == "acme"  # data kept
    # a second run is a no-op
    assert store.migrate_schema(database, target=v + 1, migrations={}) == v + 1


def test_interrupted_migration_resumes(fresh_store_db):
    database = store.db.obj
    v = store.SCHEMA_VERSION
    ran = []

    def ok(d):
        ran.append("ok")

    def boom(d):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.migrate_schema(database, target=v + 2, migrations={v + 1: ok, v + 2: boom})
    assert store.current_schema_version(database) == v + 1
    store.migrate_schema(database, target=v + 2, migrations={v + 1: ok, v + 2: ok})
    assert ran == ["ok", "ok"]
    assert store.current_schema_version(database) == v + 2


def test_newer_database_is_refused(fresh_store_db):
    database = store.db.obj
    store.SchemaVersion.create(version=store.SCHEMA_VERSION + 5)
    with pytest.raises(store.StoreError, match="newer"):
        store.migrate_schema(database)


def test_missing_migration_is_refused(fresh_store_db):
    with pytest.raises(store.StoreError, match="no migration"):
        store.migrate_schema(store.db.obj, target=store.SCHEMA_VERSION + 1, migrations={})


def test_naive_utc_datetimes(store_db):
    org = _org()
    got = store.Org.get_by_id(org.id).created_at
    assert got.tzinfo is None
    assert abs(got - dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)) < dt.timedelta(seconds=60)


def test_sqlite_transactions_take_the_write_lock_first(tmp_path):
    """A transaction that reads, then writes while another connection committed in between,
    must not fail with "database is locked": under WAL a DEFERRED read->write upgrade gets
    SQLITE_BUSY at once (no busy handler). IMMEDIATE makes the other writer wait instead."""
    import threading

    url = f"sqlite:///{tmp_path / 'lock.db'}"
    a = store._make_database(url, str(tmp_path), 1)
    b = store._make_database(url, str(tmp_path), 1)
    assert isinstance(a, store.ImmediateSqliteDatabase)
    a.execute_sql("CREATE TABLE t (x INTEGER)")
    b_started, b_done, errors = threading.Event(), threading.Event(), []

    def other_writer() -> None:
        try:
            b_started.set()
            with b.atomic():
                b.execute_sql("INSERT INTO t VALUES (2)")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            b.close()
            b_done.set()

    with a.atomic():
        assert a.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (0,)
        t = threading.Thread(target=other_writer)
        t.start()
        assert b_started.wait(5)
        assert not b_done.wait(0.3)  # it waits for our lock instead of slipping in before our write
        a.execute_sql("INSERT INTO t VALUES (1)")
    t.join(10)
    assert errors == []
    assert [r[0] for r in a.execute_sql("SELECT x FROM t ORDER BY rowid")] == [1, 2]
    a.close()


_COOPERATIVE_SCRIPT = r'''
import sys, time
from gevent import monkey; monkey.patch_all()
import gevent
from pushjobs.server import store
from pushjobs.server.settings import Settings
store.make_cooperative()
store.open_database(Settings(data_dir=sys.argv[2], database_url=sys.argv[1]))
def sleeper():
    with store.db.connection_context():
        store.db.execute_sql("SELECT pg_sleep(0.6)")
t = time.monotonic()
gevent.joinall([gevent.spawn(sleeper) for _ in range(4)], raise_error=True)
print(round(time.monotonic() - t, 3))
store.close_database()
'''


@pytest.mark.postgres
def test_postgresql_queries_are_cooperative_under_gevent(fresh_postgres_url, tmp_path):
    """With psycogreen, four greenlets each waiting 0.6 s on PostgreSQL finish together, not in turn."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _COOPERATIVE_SCRIPT, fresh_postgres_url, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip()) < 2.0  # serial would be >= 2.4 s


@pytest.mark.parametrize("url, message", [
    ("postgresql://u@h", "names no database"),
    ("postgresql://u@h/db?bogus=1", "invalid URI query parameter"),
])
def test_bad_postgresql_urls_are_clear_errors(tmp_path, url, message):
    with pytest.raises(store.StoreError, match=message):
        store.open_database(Settings(data_dir=str(tmp_path), database_url=url), migrate=False)


@pytest.mark.postgres
def test_postgresql_url_with_unix_socket_dir(postgres_cluster, tmp_path):
    """libpq's `?host=/socket/dir` form reaches the cluster through its unix socket."""
    postgres_cluster.create_database("unixsock")
    url = f"postgresql://postgres@/unixsock?host={postgres_cluster.sockdir}&port={postgres_cluster.port}"
    database = store.open_database(Settings(data_dir=str(tmp_path), database_url=url))
    try:
        assert store.current_schema_version(database) == store.SCHEMA_VERSION
    finally:
        store.close_database()


# ---------------------------------------------------------------------------
# connection pools: no set-up per request, no connection shared while in use,
# and every query sees what other processes (the ctl) committed


def _sqlite(tmp_path, name: str = "pool.db") -> store.ImmediateSqliteDatabase:
    database = store._make_database(f"sqlite:///{tmp_path / name}", str(tmp_path), 1)
    assert isinstance(database, store.ImmediateSqliteDatabase)
    return database


def test_sqlite_connections_are_reused_and_set_up_once(tmp_path):
    database = _sqlite(tmp_path)
    try:
        database.connect()
        first = database.connection()
        database.close()
        statements: list[str] = []
        database.connect()
        conn = database.connection()
        assert conn is first  # from the pool: no connect, no PRAGMAs
        conn.set_trace_callback(statements.append)
        database.execute_sql("SELECT 1")
        database.close()
        conn.set_trace_callback(None)
        assert statements == ["SELECT 1"]
        # the PRAGMAs set when it was opened hold
        with database.connection_context():
            assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
            assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 10000
    finally:
        database.close_all()


def test_sqlite_pool_keeps_a_bounded_number_of_idle_connections(tmp_path):
    import threading

    database = _sqlite(tmp_path)
    n = store.SQLITE_IDLE_CONNECTIONS + 4
    barrier = threading.Barrier(n)
    conns: list = []

    def user() -> None:
        database.connect()
        conns.append(database.connection())
        barrier.wait(10)  # all in use at once: each thread has its own connection
        database.close()

    threads = [threading.Thread(target=user) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert len({id(c) for c in conns}) == n
        assert len(database._connections) == store.SQLITE_IDLE_CONNECTIONS
        assert not database._in_use
    finally:
        database.close_all()


def test_sqlite_reads_during_a_write_transaction_see_the_last_commit(tmp_path):
    """The job writer (another greenlet/thread, its own pooled connection) holds a write
    transaction: a request reads at once, without waiting, and sees the last commit;
    the next request after the commit sees the new row."""
    import threading

    database = _sqlite(tmp_path)
    database.execute_sql("CREATE TABLE t (x INTEGER)")
    database.execute_sql("INSERT INTO t VALUES (1)")
    database.close()
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    writer_conn: list = []

    def writer() -> None:
        with database.atomic():
            writer_conn.append(database.connection())
            database.execute_sql("INSERT INTO t VALUES (2)")
            inside.set()
            release.wait(10)
        database.close()
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(10)
        t0 = time.monotonic()
        with database.connection_context():
            assert database.connection() is not writer_conn[0]
            assert [r[0] for r in database.execute_sql("SELECT x FROM t ORDER BY x")] == [1]
        assert time.monotonic() - t0 < 1.0  # WAL: the reader never waits for the writer
        release.set()
        assert done.wait(10)
        with database.connection_context():  # the next request, on a reused connection
            assert [r[0] for r in database.execute_sql("SELECT x FROM t ORDER BY x")] == [1, 2]
    finally:
        release.set()
        t.join(10)
        database.close_all()


def test_sqlite_a_transaction_left_open_is_rolled_back_when_given_back(tmp_path):
    database = _sqlite(tmp_path)
    other = _sqlite(tmp_path)  # another process, e.g. the ctl
    try:
        database.execute_sql("CREATE TABLE t (x INTEGER)")
        conn = database.connection()
        conn.execute("BEGIN IMMEDIATE")  # behind peewee's back
        conn.execute("INSERT INTO t VALUES (1)")
        database.close()
        assert not conn.in_transaction
        with other.atomic():  # the write lock is free again
            other.execute_sql("INSERT INTO t VALUES (2)")
        assert [r[0] for r in other.execute_sql("SELECT x FROM t")] == [2]
    finally:
        database.close_all()
        other.close_all()


def test_sqlite_a_half_read_cursor_does_not_freeze_the_next_users_view(tmp_path):
    """A statement not read to its end keeps a read snapshot; a pooled connection given back
    with such a cursor still referenced must not show the next request old data (e.g. a
    client that the ctl has deleted since)."""
    database = _sqlite(tmp_path)
    ctl = _sqlite(tmp_path)
    try:
        database.execute_sql("CREATE TABLE t (x INTEGER)")
        for i in range(10):
            database.execute_sql("INSERT INTO t VALUES (?)", (i,))
        database.close()
        lingering = database.execute_sql("SELECT x FROM t")
        assert lingering.fetchone() == (0,)
        conn = database.connection()
        database.close()  # the request ends; the cursor object lives on
        ctl.execute_sql("DELETE FROM t WHERE x = 0")
        ctl.close()
        with database.connection_context():
            assert database.connection() is conn
            assert database.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (9,)
    finally:
        database.close_all()
        ctl.close_all()


@pytest.mark.postgres
def test_postgresql_pool_skips_the_ping_for_a_just_returned_connection(fresh_postgres_url, tmp_path):
    """Check-out within POSTGRES_PING_AFTER_IDLE of check-in hands the connection out as it is
    (no `SELECT 1` round trip per request); an older one is pinged, and a dead one replaced."""
    database = store.open_database(Settings(data_dir=str(tmp_path), database_url=fresh_postgres_url))
    killer = store._make_database(fresh_postgres_url, str(tmp_path), 2)
    try:
        assert isinstance(database, store.PostgresDatabase)
        with database.connection_context():
            pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            conn = database.connection()
        with database.connection_context():  # reused: same backend
            assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == pid
        killer.execute_sql("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it is gone
        killer.close()
        # just given back: no ping, so the dead connection comes out; its first query fails
        database.connect()
        assert database.connection() is conn
        with pytest.raises((pw.OperationalError, pw.InterfaceError)):
            database.execute_sql("SELECT 1")
        database.close()  # not reusable: closed, not pooled
        with database.connection_context():
            pid2 = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            conn2 = database.connection()
        assert pid2 != pid
        # idle longer than the threshold: pinged at check-out, the dead one is replaced
        killer.execute_sql("SELECT pg_terminate_backend(%s, 5000)", (pid2,))
        killer.close()
        key = database.conn_key(conn2)
        database._returned[key] -= store.POSTGRES_PING_AFTER_IDLE + 1
        with database.connection_context():
            assert database.connection() is not conn2
            assert database.execute_sql("SELECT 1").fetchone() == (1,)
    finally:
        killer.close_all()
        store.close_database()
