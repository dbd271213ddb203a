"""The store: peewee models behind one database proxy.

Rules of this file:
* One schema for SQLite and PostgreSQL; no back-end specific SQL outside
  `open_database`/migrations.
* Heartbeats never reach this module. Node liveness lives in memory.
* Times are naive UTC datetimes (`utcnow()`); they are formatted for the wire
  elsewhere.
* Status columns hold the protocol's status names (`voting`, `ready`, ...)
  as text, not the original's integers: the table is ours, the names are the
  contract.

`open_database(settings)` binds `db` to SQLite or PostgreSQL and migrates the
schema (see `SCHEMA_VERSION` and `MIGRATIONS`).

Connections are per thread (per greenlet once gevent has patched
`threading.local`) and pooled on both back ends: `db.close()` gives the
connection back to the pool, `close_database()` really closes them. Why a
pool for SQLite too: opening a connection per request cost more than the
request (connect, six PRAGMAs, schema parse, and under WAL a checkpoint when
the last connection closed). A pooled SQLite connection is never shared by
two greenlets/threads at once (the pool hands it to one user at a time),
any transaction left open is rolled back when it comes back, and its PRAGMAs
are set once, when it is opened. Queries read in autocommit mode (peewee),
so each statement sees the latest committed data: a key changed or a client
deleted by `push-jobs-server-ctl` in another process is seen by the next
query of a running server. Code that runs in its own greenlet wraps its
work in `with db.connection_context():` so that connections go back to the
pool; the Flask app connects on a request's first query and gives the
connection back in teardown.

SQLite inside the gevent worker: sqlite3 calls are blocking C calls that
never yield, and the busy handler (`timeout`) sleeps in C, holding up the
whole worker. So a write transaction must never span a gevent switch: if
greenlet A yielded inside `BEGIN IMMEDIATE`, greenlet B's `BEGIN IMMEDIATE`
would sleep in C for the full timeout while A can never run to commit.
Checked (a greenlet switch tracer over the e2e, feed and agent suites
flagged no switch with a transaction open): the writer greenlet
(`jobs.DbWriter`) runs plain queries only inside its batch transaction,
`POST jobs` and the nodes PUT/POST write between authentication and the
response, never around I/O, and the SSE feeds read everything before
streaming. A parallel `push-jobs-server-ctl` holds the lock for one short
transaction (purge-jobs: batches of 500), which the worker waits out.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
import weakref
from typing import Callable, Optional
from urllib.parse import unquote

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

log = logging.getLogger(__name__)

db = pw.DatabaseProxy()

SCHEMA_VERSION = 1

# Job statuses after which the coordinator never writes the job again.
FINISHED_JOB_STATUSES = ("complete", "quorum_failed", "aborted", "timed_out", "crashed")
LIVE_JOB_STATUSES = ("new", "voting", "running")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False


class SchemaVersion(BaseModel):
    version = pw.IntegerField()
    applied_at = pw.DateTimeField(default=utcnow)


class Org(BaseModel):
    name = pw.CharField(max_length=255, unique=True)
    guid = pw.CharField(max_length=32, unique=True)  # 32 lowercase hex chars
    created_at = pw.DateTimeField(default=utcnow)


class User(BaseModel):
    """A person or workstation; global, associated with orgs through OrgUser."""

    name = pw.CharField(max_length=255, unique=True)
    public_key = pw.TextField()  # PEM, SPKI or PKCS#1
    created_at = pw.DateTimeField(default=utcnow)


class OrgUser(BaseModel):
    org = pw.ForeignKeyField(Org, on_delete="CASCADE", backref="members")
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="orgs")

    class Meta:
        indexes = ((("org", "user"), True),)


class Client(BaseModel):
    """A node's API client (Chef "client"): one per (org, name)."""

    org = pw.ForeignKeyField(Org, on_delete="CASCADE", backref="clients")
    name = pw.CharField(max_length=255)
    public_key = pw.TextField()
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("org", "name"), True),)


class Group(BaseModel):
    org = pw.ForeignKeyField(Org, on_delete="CASCADE", backref="groups")
    name = pw.CharField(max_length=255)

    class Meta:
        indexes = ((("org", "name"), True),)


class GroupMember(BaseModel):
    """Member of a group: a user, a client or (nested) another group of the org."""

    group = pw.ForeignKeyField(Group, on_delete="CASCADE", backref="members")
    kind = pw.CharField(max_length=8)  # "user" | "client" | "group"
    name = pw.CharField(max_length=255)

    class Meta:
        indexes = ((("group", "kind", "name"), True),)


class Node(BaseModel):
    """Node inventory for search, in Chef's node shape."""

    org = pw.ForeignKeyField(Org, on_delete="CASCADE", backref="nodes")
    name = pw.CharField(max_length=255)
    chef_environment = pw.CharField(max_length=255, default="_default")
    run_list = pw.TextField(default="[]")  # JSON array of "role[x]" / "recipe[y]"
    automatic = pw.TextField(default="{}")  # JSON objects
    normal = pw.TextField(default="{}")
    default = pw.TextField(default="{}")
    override = pw.TextField(default="{}")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("org", "name"), True),)


class Job(BaseModel):
    id = pw.CharField(max_length=32, primary_key=True)
    org = pw.ForeignKeyField(Org, on_delete="CASCADE", backref="jobs")
    command = pw.TextField()
    status = pw.CharField(max_length=16, index=True)  # new voting running complete ...
    run_timeout = pw.IntegerField()
    quorum = pw.IntegerField()
    requestor = pw.CharField(max_length=255)
    # job options (the original's job_options table, folded in)
    user = pw.CharField(max_length=255, null=True)
    dir = pw.TextField(null=True)
    env = pw.TextField(null=True)  # JSON object text
    file = pw.TextField(null=True)  # "raw:..." / "base64:..." as submitted
    capture_output = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow, index=True)
    updated_at = pw.DateTimeField(default=utcnow)


class JobNode(BaseModel):
    job = pw.ForeignKeyField(Job, on_delete="CASCADE", backref="job_nodes")
    node_name = pw.CharField(max_length=255)
    status = pw.CharField(max_length=16)  # new ready running succeeded failed ...
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("job", "node_name"), True),)


class JobOutput(BaseModel):
    job = pw.ForeignKeyField(Job, on_delete="CASCADE", backref="outputs")
    node_name = pw.CharField(max_length=255)
    stdout = pw.BlobField()
    stderr = pw.BlobField()
    truncated = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("job", "node_name"), True),)


class JobEvent(BaseModel):
    """The audit trail and the job feed's history: one row per SSE event."""

    job = pw.ForeignKeyField(Job, on_delete="CASCADE", backref="events")
    seq = pw.IntegerField()  # 1, 2, ... -> SSE id "job-<seq>"
    name = pw.CharField(max_length=32)
    data = pw.TextField()  # the JSON object sent as `data:`
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("job", "seq"), True),)


MODELS = [
    SchemaVersion,
    Org,
    User,
    OrgUser,
    Client,
    Group,
    GroupMember,
    Node,
    Job,
    JobNode,
    JobOutput,
    JobEvent,
]


# ---------------------------------------------------------------------------
# opening and migrating


class StoreError(Exception):
    """The database cannot be opened or migrated; str() is one line for the operator."""


def make_cooperative() -> None:
    """Make psycopg2 yield to the gevent loop while it waits on PostgreSQL.

    The server calls this once in its worker, after gevent's monkey patching
    and before `open_database`. Harmless without gevent; idempotent."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def sqlite_path(url: str, data_dir: str) -> str:
    """File name of a `sqlite:///…` URL; a relative path is taken inside `data_dir`.

    `sqlite:////var/lib/x.db` is absolute (SQLAlchemy's convention),
    `sqlite:///x.db` is `data_dir/x.db`, `sqlite:///:memory:` is in memory."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"database_url {url!r}: a SQLite URL starts with sqlite:///")
    path = unquote(url[len("sqlite:///"):].split("?", 1)[0])
    if not path:
        raise StoreError(f"database_url {url!r} names no file")
    if path == ":memory:" or os.path.isabs(path):
        return path
    return os.path.join(os.path.abspath(data_dir), path)


#: Idle SQLite connections the pool keeps (more are closed when given back).
SQLITE_IDLE_CONNECTIONS = 8
#: sqlite3's busy handler: how long a writer waits for another's write lock (s).
SQLITE_BUSY_TIMEOUT = 10
#: A pooled PostgreSQL connection given back less than this long ago (s) is handed
#: out again without a `SELECT 1` round trip (peewee pings on every check-out).
POSTGRES_PING_AFTER_IDLE = 2.0


class ImmediateSqliteDatabase(PooledSqliteDatabase):
    """Pooled SQLite whose transactions take the write lock when they begin (`BEGIN IMMEDIATE`).

    Why IMMEDIATE: with peewee's default `BEGIN` (DEFERRED) a transaction starts as a
    reader and upgrades to a writer at its first write. Under WAL, when
    another connection (a parallel `push-jobs-server-ctl`, the server's
    writer greenlet) holds the write lock or has committed since our read
    snapshot, that upgrade fails with SQLITE_BUSY at once: the busy handler
    is not called, because waiting could deadlock or read stale data. So
    `timeout=`/`busy_timeout` never helped and parallel writers died with
    "database is locked". `BEGIN IMMEDIATE` asks for the write lock first,
    and that wait does go through the busy handler.

    Every write path (`db.atomic()`/`db.transaction()` anywhere: API, job
    coordinator, identity, ctl, migrations) gets this by default; an
    explicit `lock_type` ("DEFERRED", "EXCLUSIVE") still wins. A single
    statement outside a transaction needs nothing: it takes its lock
    up front. PostgreSQL is unaffected (a different class).

    Why pooled: see the module docstring. No limit on connections in use (a
    request never waits for one; SQLite calls do not yield, so few are ever
    in use at once), at most `max_idle` kept idle. `check_same_thread` is off
    because a pooled connection may be handed to another thread later; the
    pool never gives it to two at once."""

    def __init__(self, database: str, *, max_idle: int = SQLITE_IDLE_CONNECTIONS,
                 busy_timeout: float = SQLITE_BUSY_TIMEOUT, **kwargs) -> None:
        self._max_idle = max_idle
        self._cursors: dict[int, weakref.WeakSet] = {}
        kwargs.setdefault("check_same_thread", False)
        super().__init__(database, max_connections=None, stale_timeout=None, **kwargs)
        self._timeout = busy_timeout  # sqlite3.connect(timeout=): the pool took `timeout` for itself

    def begin(self, lock_type: Optional[str] = None) -> None:
        super().begin(lock_type or "IMMEDIATE")

    def cursor(self, named_cursor=None):
        cur = super().cursor(named_cursor)
        key = self.conn_key(self._state.conn)
        live = self._cursors.get(key)
        if live is None:
            live = self._cursors[key] = weakref.WeakSet()
        live.add(cur)
        return cur

    def _close(self, conn, close_conn: bool = False) -> None:
        # A statement not read to its end keeps its read snapshot: a connection
        # given back with such a cursor still alive (held by a traceback, a
        # lingering object) would show the next user stale data, e.g. a client
        # the ctl has deleted. Its user is done with it: close its cursors.
        live = self._cursors.pop(self.conn_key(conn), None)
        if live:
            for cur in list(live):
                try:
                    cur.close()
                except Exception:  # noqa: BLE001 - a cursor of a broken connection
                    log.debug("closing a cursor failed", exc_info=True)
        super()._close(conn, close_conn)

    def _close_raw(self, conn) -> None:
        self._cursors.pop(self.conn_key(conn), None)
        super()._close_raw(conn)

    def _can_reuse(self, conn) -> bool:
        # Called under the pool lock when a connection comes back: keep at most
        # max_idle; the base class rolls back a transaction left open.
        if len(self._connections) >= self._max_idle:
            return False
        return super()._can_reuse(conn)


class PostgresDatabase(PooledPostgresqlDatabase):
    """peewee's PostgreSQL pool without a `SELECT 1` round trip on every check-out.

    peewee pings an idle connection each time it hands it out, which costs a
    round trip (and the server's CPU) per API request. A connection given
    back less than POSTGRES_PING_AFTER_IDLE seconds ago, idle and not closed,
    is handed out as it is; an older one is pinged as before. A connection
    the server dropped in between fails its first query (one 500) and is not
    reused."""

    def __init__(self, *args, **kwargs) -> None:
        self._returned: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def _is_closed(self, conn) -> bool:
        if conn.closed:
            return True
        last = self._returned.get(self.conn_key(conn))
        if (last is not None and time.monotonic() - last < POSTGRES_PING_AFTER_IDLE
                and self._adapter.txn_status(conn) == self._adapter.txn_idle):
            return False
        return super()._is_closed(conn)

    def _can_reuse(self, conn) -> bool:
        ok = super()._can_reuse(conn)
        if ok:
            self._returned[self.conn_key(conn)] = time.monotonic()
        return ok

    def _close_raw(self, conn) -> None:
        self._returned.pop(self.conn_key(conn), None)
        super()._close_raw(conn)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _make_database(url: str, data_dir: str, pool_size: int) -> pw.Database:
    if url.startswith("sqlite:"):
        path = sqlite_path(url, data_dir)
        if path != ":memory:":
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                raise StoreError(f"database directory {parent} does not exist (run push-jobs-server-ctl init)")
        return ImmediateSqliteDatabase(
            path,
            pragmas={
                "journal_mode": "wal",  # readers never block the writer
                "foreign_keys": 1,  # ON DELETE CASCADE for job nodes/output/events
                "synchronous": "normal",  # durable with WAL, much faster than FULL
                "busy_timeout": SQLITE_BUSY_TIMEOUT * 1000,
                "cache_size": -16000,  # 16 MB
                "temp_store": "memory",
            },
        )
    if is_postgres_url(url):
        import psycopg2.extensions

        try:
            params = psycopg2.extensions.parse_dsn(url)
        except psycopg2.ProgrammingError as e:
            raise StoreError(f"database_url: {str(e).strip()}") from None
        dbname = params.pop("dbname", None)
        if not dbname:
            raise StoreError("database_url names no database (postgresql://USER@HOST/DATABASE)")
        return PostgresDatabase(
            dbname, max_connections=pool_size, stale_timeout=300, timeout=30, **params
        )
    raise StoreError(f"database_url {url!r}: expected sqlite:///PATH or postgresql://...")


def _create_all(database: pw.Database) -> None:
    database.create_tables(MODELS, safe=True)


# Version N -> function that migrates a database at version N-1 to N, in place,
# inside a transaction. A fresh database gets the current models directly and
# is stamped SCHEMA_VERSION; these functions only ever see older databases.
# Write them with playhouse.migrate against the *old* shape, never with the
# current models (which may have moved on).
Migration = Callable[[pw.Database], None]
MIGRATIONS: dict[int, Migration] = {}


def current_schema_version(database: pw.Database) -> Optional[int]:
    """The stamped version, or None for a database without our tables."""
    if not database.table_exists(SchemaVersion._meta.table_name):
        return None
    with SchemaVersion.bind_ctx(database):
        v = SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar()
    return int(v) if v is not None else None


def migrate_schema(
    database: pw.Database,
    *,
    target: int = SCHEMA_VERSION,
    migrations: Optional[dict[int, Migration]] = None,
) -> int:
    """Create or migrate the schema to `target`; return the version found before (0 = fresh).

    Each step runs in its own transaction and stamps its version, so an
    interrupted migration resumes where it stopped."""
    migrations = MIGRATIONS if migrations is None else migrations
    with database.bind_ctx(MODELS):
        found = current_schema_version(database)
        if found is None:
            with database.atomic():
                # Read again under the write lock (SQLite: BEGIN IMMEDIATE): a parallel
                # ctl or server may have created the schema since, and must not get a
                # second version row.
                found = current_schema_version(database)
                if found is None:
                    if database.table_exists(Org._meta.table_name):
                        raise StoreError("database has pushjobs tables but no schema_version row; refusing to guess")
                    _create_all(database)
                    SchemaVersion.create(version=target)
                    log.info("created database schema version %d", target)
                    return 0
        if found > target:
            raise StoreError(
                f"database schema version {found} is newer than this pushjobs understands ({target}); upgrade pushjobs"
            )
        for v in range(found + 1, target + 1):
            step = migrations.get(v)
            if step is None:
                raise StoreError(f"no migration to schema version {v}")
            with database.atomic():
                step(database)
                SchemaVersion.create(version=v)
            log.info("migrated database schema to version %d", v)
        return found


def open_database(settings, *, migrate: bool = True) -> pw.Database:
    """Bind `db` to the database of `settings` (SQLite or PostgreSQL) and migrate it.

    Returns the concrete database (also reachable as `db`). Errors that an
    operator can fix (missing directory, bad URL, server down, newer schema)
    raise `StoreError` with one line."""
    url = settings.resolved_database_url()
    database = _make_database(url, settings.data_dir, getattr(settings, "db_pool_size", 20))
    db.initialize(database)
    if migrate:
        try:
            with database.connection_context():
                migrate_schema(database)
        except pw.OperationalError as e:
            raise StoreError(f"cannot open database {redact_url(url)}: {str(e).strip().splitlines()[0]}") from None
    return database


def close_database() -> None:
    """Close this thread's connection and, for a pool, every idle connection."""
    obj = db.obj
    if obj is None:
        return
    if not obj.is_closed():
        obj.close()
    close_all = getattr(obj, "close_all", None)
    if close_all is not None:
        close_all()


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    if ":" in cred:
        cred = cred.split(":", 1)[0] + ":***"
    return f"{scheme}://{cred}@{host}"
