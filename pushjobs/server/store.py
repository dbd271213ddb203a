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
schema (see `SCHEMA_VERSION`).
"""

from __future__ import annotations

import datetime as _dt

import peewee as pw

db = pw.DatabaseProxy()

SCHEMA_VERSION = 1


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
