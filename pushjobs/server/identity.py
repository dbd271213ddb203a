"""Orgs, users, clients and groups: the identity operations shared by the ctl and the auth layer.

Rules of this file:
* Functions work on the bound store (`pushjobs.server.store.db`); the caller
  owns the connection. Writes run in one transaction each.
* Errors an operator or a request can cause raise `IdentityError`
  (`NotFound`, `AlreadyExists`, `InvalidName`, `InvalidKey`), whose str is
  one line fit for the ctl's stderr.
* Users are global and join orgs (OrgUser); clients belong to one org.
* Groups live in an org; a member is a user, a client or another group of the
  same org. Membership is resolved recursively through nested groups and is
  safe against cycles (a group that contains itself, directly or not).
* `users` and `clients` behave like Chef's built-in groups (every user /
  client of the org) without rows of their own (BUILTIN_GROUPS).
* Principal lookup follows Chef: in an org, a client of that name wins over a
  user of the same name (`lookup_principal`). Public keys are stored as SPKI
  PEM ("-----BEGIN PUBLIC KEY-----"), whatever PEM form was given.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import peewee as pw
from pushjobs.protocol import keys
from pushjobs.protocol.errors import ProtocolError
from pushjobs.server import store
from pushjobs.server.store import Client, Group, GroupMember, Org, OrgUser, User, db

log = logging.getLogger(__name__)

ADMINS_GROUP = "admins"
WRITERS_GROUP = "pushy_job_writers"
READERS_GROUP = "pushy_job_readers"
#: Groups `create_org` makes. Only `admins`: with no pushy_job_writers group,
#: admins may start jobs, and with no pushy_job_readers group every member may
#: read (PROTOCOL.md §10.3); the operator adds the other two with group-add.
DEFAULT_GROUPS = (ADMINS_GROUP,)

USER, CLIENT, GROUP = "user", "client", "group"
#: Chef's built-in groups, kept implicit: `users` holds every user of the org and
#: `clients` every client, so `group-add ORG pushy_job_readers group:clients`
#: works as on a Chef server. Explicit members added to them count too.
BUILTIN_GROUPS = ("users", "clients")

_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,254}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")


class IdentityError(Exception):
    """An identity operation that cannot be done; str() is one line for the operator."""


class NotFound(IdentityError):
    pass


class AlreadyExists(IdentityError):
    pass


class InvalidName(IdentityError):
    pass


class InvalidKey(IdentityError):
    pass


# ---------------------------------------------------------------------------
# keys


def normalize_public_key(pem: Union[str, bytes]) -> str:
    """An RSA public key as SPKI PEM text, from SPKI, PKCS#1 ("BEGIN RSA PUBLIC KEY") or a private key PEM.

    A private key is accepted (its public half is taken) because operators
    often have only the .pem that knife wrote; the private part is not kept."""
    try:
        key = keys.load_public_key(pem)
    except ProtocolError as e:
        detail = str(e.detail if hasattr(e, "detail") else e).splitlines()[0]
        if "not an RSA key" in detail:
            raise InvalidKey("not an RSA key (Chef keys are RSA)") from None
        raise InvalidKey(f"not a PEM RSA public key ({detail})") from None
    if key.key_size < 1024:
        raise InvalidKey(f"RSA key of {key.key_size} bits is too short (at least 2048 recommended)")
    return keys.public_key_pem(key)


def new_key_pair(bits: int = 2048) -> tuple[str, str]:
    """(private PEM in PKCS#1 "BEGIN RSA PRIVATE KEY" form like Chef's, public SPKI PEM)."""
    key = keys.generate_rsa_key(bits)
    return keys.private_key_pem(key), keys.public_key_pem(key)


# ---------------------------------------------------------------------------
# orgs


def check_org_name(name: str) -> None:
    if not _ORG_NAME.match(name or ""):
        raise InvalidName(f"invalid org name '{name}': use lowercase letters, digits, '-' and '_'")


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name or ""):
        raise InvalidName(f"invalid {kind} name '{name}': use letters, digits, '.', '-', '_' and '@'")


def find_org(name: str) -> Optional[Org]:
    """The org called `name`, or None."""
    return Org.get_or_none(Org.name == name)


def get_org(name: str) -> Org:
    org = find_org(name)
    if org is None:
        raise NotFound(f"org '{name}' does not exist")
    return org


def _org(org: Union[Org, str]) -> Org:
    return org if isinstance(org, Org) else get_org(org)


def create_org(name: str, guid: Optional[str] = None) -> Org:
    """A new org with a random 32-hex-char guid and the DEFAULT_GROUPS."""
    check_org_name(name)
    guid = guid or secrets.token_hex(16)
    if not re.fullmatch(r"[0-9a-f]{32}", guid):
        raise IdentityError(f"org guid must be 32 lowercase hex characters, got '{guid}'")
    with db.atomic():
        if find_org(name) is not None:
            raise AlreadyExists(f"org '{name}' already exists")
        org = Org.create(name=name, guid=guid)
        for g in DEFAULT_GROUPS:
            Group.create(org=org, name=g)
    log.info("created org %s (%s)", name, guid)
    return org


def list_orgs() -> list[Org]:
    return list(Org.select().order_by(Org.name))


# ---------------------------------------------------------------------------
# users


def find_user(name: str) -> Optional[User]:
    return User.get_or_none(User.name == name)


def is_org_member(org: Union[Org, str], user: Union[User, str]) -> bool:
    org = _org(org)
    u = user if isinstance(user, User) else find_user(user)
    if u is None:
        return False
    return OrgUser.select().where((OrgUser.org == org) & (OrgUser.user == u)).exists()


@dataclass(frozen=True)
class UserResult:
    user: User
    created: bool  # False: the user existed and was (at most) joined to the org
    joined: bool  # newly added to the org
    admin_added: bool  # newly added to the org's admins group


def create_user(
    name: str, public_key: Optional[str], org: Union[Org, str, None] = None, admin: bool = False
) -> UserResult:
    """Create a global user (or reuse an existing one) and join it to `org`.

    An existing user keeps its key; `public_key` may be None only then."""
    check_name("user", name)
    key = normalize_public_key(public_key) if public_key is not None else None
    with db.atomic():
        o = _org(org) if org is not None else None
        user = find_user(name)
        created = user is None
        if created:
            if key is None:
                raise InvalidKey(f"user '{name}' does not exist and no public key was given")
            user = User.create(name=name, public_key=key)
        joined = False
        admin_added = False
        if o is not None:
            if not is_org_member(o, user):
                OrgUser.create(org=o, user=user)
                joined = True
            if admin:
                admin_added = _add_member(o, ADMINS_GROUP, USER, name, create_group=True)
    return UserResult(user, created, joined, admin_added)


def list_users(org: Union[Org, str, None] = None) -> list[User]:
    q = User.select().order_by(User.name)
    if org is not None:
        q = q.join(OrgUser).where(OrgUser.org == _org(org))
    return list(q)


def user_orgs(user: User) -> list[str]:
    return [ou.org.name for ou in OrgUser.select(OrgUser, Org).join(Org).where(OrgUser.user == user).order_by(Org.name)]


def delete_user(name: str) -> None:
    """Delete a user, its org memberships and its group memberships in every org."""
    with db.atomic():
        user = find_user(name)
        if user is None:
            raise NotFound(f"user '{name}' does not exist")
        GroupMember.delete().where((GroupMember.kind == USER) & (GroupMember.name == name)).execute()
        OrgUser.delete().where(OrgUser.user == user).execute()
        user.delete_instance()
    log.info("deleted user %s", name)


# ---------------------------------------------------------------------------
# clients


def find_client(org: Union[Org, str], name: str) -> Optional[Client]:
    o = org if isinstance(org, Org) else find_org(org)
    if o is None:
        return None
    return Client.get_or_none((Client.org == o) & (Client.name == name))


def create_client(org: Union[Org, str], name: str, public_key: str) -> Client:
    check_name("client", name)
    key = normalize_public_key(public_key)
    with db.atomic():
        o = _org(org)
        if find_client(o, name) is not None:
            raise AlreadyExists(f"client '{name}' already exists in org '{o.name}'")
        c = Client.create(org=o, name=name, public_key=key)
    log.info("created client %s in org %s", name, o.name)
    return c


def create_clients_bulk(org: Union[Org, str], prefix: str, count: int, public_key: str, start: int = 1) -> int:
    """Clients PREFIX1..PREFIXN sharing one key, in batched inserts (labs, benchmarks).

    All or nothing: if any name already exists, nothing is created."""
    if count < 1:
        raise IdentityError(f"--count must be at least 1, got {count}")
    check_name("client", f"{prefix}{start}")
    key = normalize_public_key(public_key)
    names = [f"{prefix}{i}" for i in range(start, start + count)]
    now = store.utcnow()
    with db.atomic():
        o = _org(org)
        existing = set()
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            existing.update(
                c.name for c in Client.select(Client.name).where((Client.org == o) & (Client.name.in_(chunk)))
            )
        if existing:
            first = sorted(existing)[0]
            raise AlreadyExists(
                f"{len(existing)} of these clients already exist in org '{o.name}' (e.g. '{first}'); nothing created"
            )
        rows = [{"org": o.id, "name": n, "public_key": key, "created_at": now} for n in names]
        batch = 100 if isinstance(db.obj, pw.SqliteDatabase) else 1000  # SQLite's bound-variable limit
        for i in range(0, len(rows), batch):
            Client.insert_many(rows[i:i + batch]).execute()
    log.info("created %d clients %s%d..%s%d in org %s", count, prefix, start, prefix, start + count - 1, o.name)
    return count


def list_clients(org: Union[Org, str]) -> list[Client]:
    return list(Client.select().where(Client.org == _org(org)).order_by(Client.name))


def delete_client(org: Union[Org, str], name: str) -> None:
    """Delete a client and its group memberships in its org."""
    with db.atomic():
        o = _org(org)
        c = find_client(o, name)
        if c is None:
            raise NotFound(f"client '{name}' does not exist in org '{o.name}'")
        GroupMember.delete().where(
            (GroupMember.kind == CLIENT) & (GroupMember.name == name)
            & (GroupMember.group.in_(Group.select(Group.id).where(Group.org == o)))
        ).execute()
        c.delete_instance()
    log.info("deleted client %s of org %s", name, o.name)


# ---------------------------------------------------------------------------
# principals (who signs a request)


@dataclass(frozen=True)
class Principal:
    """Who a request's X-Ops-UserId names, seen from one org."""

    name: str
    kind: str  # "user" | "client"
    public_key: str  # SPKI PEM
    org_member: bool  # clients: always True; users: joined to the org


def lookup_principal(org: Union[Org, str], name: str) -> Optional[Principal]:
    """The client of `org` called `name`, else the (global) user called `name`, else None.

    A user who is not a member of the org is returned with org_member=False, so
    the caller can answer 403 rather than 401."""
    o = org if isinstance(org, Org) else find_org(org)
    if o is None:
        return None
    c = find_client(o, name)
    if c is not None:
        return Principal(name, CLIENT, c.public_key, True)
    u = find_user(name)
    if u is not None:
        return Principal(name, USER, u.public_key, is_org_member(o, u))
    return None


@dataclass(frozen=True)
class RequestIdentity:
    """What authenticating and authorizing one request needs from the store.

    `org` is an Org instance built from the row (id, name, guid: usable in
    queries without another lookup); `principal` as `lookup_principal`
    answers it; `groups` maps each asked group name that exists in the org to
    its id."""

    org: Org
    principal: Optional[Principal]
    groups: dict[str, int]


_REQUEST_SQL: dict[tuple[str, int], str] = {}


def _request_identity_sql(database: pw.Database, n_groups: int) -> str:
    """The one query of `lookup_request_identity`, built once per back end and group count.

    Plain SQL from the models' table and column names: peewee's query builder
    costs ~0.3 ms per query, more than the query itself (indexed lookups)."""
    key = (type(database).__name__, n_groups)
    sql = _REQUEST_SQL.get(key)
    if sql is None:
        p = database.param

        def q(model: type, field: Optional[str] = None) -> str:
            if field is None:
                return f'"{model._meta.table_name}"'
            return f'"{getattr(model, field).column_name}"'

        group_cols = "".join(
            f", (SELECT g.{q(Group, 'id')} FROM {q(Group)} g WHERE g.{q(Group, 'org')} = o.{q(Org, 'id')}"
            f" AND g.{q(Group, 'name')} = {p})"
            for _ in range(n_groups))
        sql = (
            f"SELECT o.{q(Org, 'id')}, o.{q(Org, 'guid')}, c.{q(Client, 'public_key')}, u.{q(User, 'public_key')},"
            f" ou.{q(OrgUser, 'id')}{group_cols}"
            f" FROM {q(Org)} o"
            f" LEFT JOIN {q(Client)} c ON c.{q(Client, 'org')} = o.{q(Org, 'id')} AND c.{q(Client, 'name')} = {p}"
            f" LEFT JOIN {q(User)} u ON u.{q(User, 'name')} = {p}"
            f" LEFT JOIN {q(OrgUser)} ou ON ou.{q(OrgUser, 'org')} = o.{q(Org, 'id')}"
            f" AND ou.{q(OrgUser, 'user')} = u.{q(User, 'id')}"
            f" WHERE o.{q(Org, 'name')} = {p}"
        )
        _REQUEST_SQL[key] = sql
    return sql


def lookup_request_identity(org_name: str, name: str, groups: Iterable[str] = ()) -> Optional[RequestIdentity]:
    """Org, principal (`lookup_principal`'s rules) and which of `groups` exist, in ONE query; None: no such org.

    The auth layer calls this on every request: nothing here is cached, so a
    key changed or a client deleted by the ctl (another process) counts from
    the next request on."""
    groups = tuple(groups)
    database = db.obj
    sql = _request_identity_sql(database, len(groups))
    cursor = database.execute_sql(sql, (*groups, name, name, org_name))
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()  # never leave a statement open on a pooled connection
    if row is None:
        return None
    org_id, guid, client_key, user_key, org_user_id = row[:5]
    org = Org(id=org_id, name=org_name, guid=guid)
    if client_key is not None:
        principal: Optional[Principal] = Principal(name, CLIENT, client_key, True)
    elif user_key is not None:
        principal = Principal(name, USER, user_key, org_user_id is not None)
    else:
        principal = None
    found = {g: gid for g, gid in zip(groups, row[5:]) if gid is not None}
    return RequestIdentity(org, principal, found)


# ---------------------------------------------------------------------------
# groups


def find_group(org: Union[Org, str], name: str) -> Optional[Group]:
    o = org if isinstance(org, Org) else find_org(org)
    if o is None:
        return None
    return Group.get_or_none((Group.org == o) & (Group.name == name))


def group_exists(org: Union[Org, str], name: str) -> bool:
    return find_group(org, name) is not None


def create_group(org: Union[Org, str], name: str) -> Group:
    check_name("group", name)
    with db.atomic():
        o = _org(org)
        if find_group(o, name) is not None:
            raise AlreadyExists(f"group '{name}' already exists in org '{o.name}'")
        return Group.create(org=o, name=name)


def delete_group(org: Union[Org, str], name: str) -> None:
    """Delete a group and every membership of it in other groups."""
    with db.atomic():
        o = _org(org)
        g = find_group(o, name)
        if g is None:
            raise NotFound(f"group '{name}' does not exist in org '{o.name}'")
        GroupMember.delete().where(
            (GroupMember.kind == GROUP) & (GroupMember.name == name)
            & (GroupMember.group.in_(Group.select(Group.id).where(Group.org == o)))
        ).execute()
        g.delete_instance()


def list_groups(org: Union[Org, str]) -> list[Group]:
    return list(Group.select().where(Group.org == _org(org)).order_by(Group.name))


def group_members(org: Union[Org, str], name: str) -> dict[str, list[str]]:
    """Direct members in Chef's group shape: {"users": [...], "clients": [...], "groups": [...]}."""
    g = find_group(org, name)
    if g is None:
        raise NotFound(f"group '{name}' does not exist")
    out: dict[str, list[str]] = {"users": [], "clients": [], "groups": []}
    for m in GroupMember.select().where(GroupMember.group == g).order_by(GroupMember.kind, GroupMember.name):
        out[m.kind + "s"].append(m.name)
    return out


def is_member(org: Union[Org, str], group: str, kind: str, name: str, *, group_id: Optional[int] = None) -> bool:
    """Is the user/client `name` in `group` of `org`, directly or through nested groups?

    False when the org or the group does not exist. Cycle-safe: each group is
    visited once. One query per group level visited. `group_id`: the group's
    id when the caller has just read it (saves the lookup)."""
    if kind not in (USER, CLIENT):
        raise ValueError(f"kind must be 'user' or 'client', got {kind!r}")
    o = org if isinstance(org, Org) else find_org(org)
    if o is None:
        return False
    if _in_builtin(o, group, kind, name):
        return True
    if group_id is None:
        start = find_group(o, group)
        if start is None:
            return False
        group_id = start.id
    seen = {group_id}
    frontier = [group_id]
    while frontier:
        rows = list(
            GroupMember.select(GroupMember.kind, GroupMember.name).where(
                GroupMember.group.in_(frontier)
                & ((GroupMember.kind == GROUP) | ((GroupMember.kind == kind) & (GroupMember.name == name)))
            ).tuples()
        )
        if any(k == kind for k, _ in rows):
            return True
        sub_names = {n for k, n in rows if k == GROUP}
        if not sub_names:
            return False
        if any(_in_builtin(o, g, kind, name) for g in sub_names & set(BUILTIN_GROUPS)):
            return True
        subs = [g.id for g in Group.select(Group.id).where((Group.org == o) & (Group.name.in_(list(sub_names))))]
        frontier = [gid for gid in subs if gid not in seen]
        seen.update(frontier)
    return False


def _in_builtin(o: Org, group: str, kind: str, name: str) -> bool:
    """Chef's `users` / `clients` groups: every user / every client of the org."""
    if group == "users" and kind == USER:
        return is_org_member(o, name)
    if group == "clients" and kind == CLIENT:
        return find_client(o, name) is not None
    return False


def member_groups(org: Union[Org, str], kind: str, name: str, groups: Iterable[str]) -> set[str]:
    """Those of `groups` that (recursively) contain the principal."""
    return {g for g in groups if is_member(org, g, kind, name)}


@dataclass(frozen=True)
class MemberRef:
    kind: str  # "user" | "client" | "group"
    name: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}'"


def resolve_principal_spec(org: Union[Org, str], spec: str) -> MemberRef:
    """`group:NAME`, `user:NAME`, `client:NAME`, or a bare name that is a user of the org or a client of it.

    A bare name that is both a user and a client is ambiguous: say which."""
    o = _org(org)
    if ":" in spec:
        prefix, _, name = spec.partition(":")
        if prefix not in (USER, CLIENT, GROUP):
            raise IdentityError(f"'{spec}': a principal is NAME, user:NAME, client:NAME or group:NAME")
        if prefix == GROUP:
            if find_group(o, name) is None and name not in BUILTIN_GROUPS:
                raise NotFound(f"group '{name}' does not exist in org '{o.name}'")
        elif prefix == CLIENT:
            if find_client(o, name) is None:
                raise NotFound(f"client '{name}' does not exist in org '{o.name}'")
        else:
            u = find_user(name)
            if u is None:
                raise NotFound(f"user '{name}' does not exist")
            if not is_org_member(o, u):
                raise IdentityError(f"user '{name}' is not a member of org '{o.name}' (user-create {name} --org {o.name})")
        return MemberRef(prefix, name)
    is_client = find_client(o, spec) is not None
    u = find_user(spec)
    is_user = u is not None and is_org_member(o, u)
    if is_client and is_user:
        raise IdentityError(f"'{spec}' is both a user and a client of org '{o.name}': write user:{spec} or client:{spec}")
    if is_client:
        return MemberRef(CLIENT, spec)
    if is_user:
        return MemberRef(USER, spec)
    if u is not None:
        raise IdentityError(f"user '{spec}' is not a member of org '{o.name}' (user-create {spec} --org {o.name})")
    raise NotFound(f"no user or client '{spec}' in org '{o.name}' (for a group write group:{spec})")


def _add_member(o: Org, group: str, kind: str, name: str, create_group: bool) -> bool:
    g = find_group(o, group)
    if g is None:
        if not create_group:
            raise NotFound(f"group '{group}' does not exist in org '{o.name}'")
        check_name("group", group)
        g = Group.create(org=o, name=group)
    if GroupMember.select().where(
        (GroupMember.group == g) & (GroupMember.kind == kind) & (GroupMember.name == name)
    ).exists():
        return False
    GroupMember.create(group=g, kind=kind, name=name)
    return True


def _group_contains_group(o: Org, outer: str, inner: str) -> bool:
    """Does group `outer` contain group `inner`, directly or through nested groups?

    Used to refuse a nesting that would make a cycle (membership lookups
    survive cycles, but a cycle is always an admin mistake). One query per level."""
    seen = {outer}
    frontier = [outer]
    while frontier:
        rows = (GroupMember.select(GroupMember.name).join(Group)
                .where((Group.org == o) & Group.name.in_(frontier) & (GroupMember.kind == GROUP)).tuples())
        names = {n for (n,) in rows}
        if inner in names:
            return True
        frontier = [n for n in names if n not in seen]
        seen.update(frontier)
    return False


@dataclass(frozen=True)
class GroupChange:
    member: MemberRef
    group_created: bool
    changed: bool  # False: already a member (add) / was not a member (remove)


def group_add(org: Union[Org, str], group: str, spec: str) -> GroupChange:
    """Add a principal (see resolve_principal_spec) to a group, creating the group if missing."""
    check_name("group", group)
    with db.atomic():
        o = _org(org)
        ref = resolve_principal_spec(o, spec)
        if ref.kind == GROUP:
            if ref.name == group:
                raise IdentityError(f"group '{group}' cannot be a member of itself")
            if _group_contains_group(o, ref.name, group):
                raise IdentityError(
                    f"group '{ref.name}' already contains group '{group}' (directly or nested): "
                    "adding it would create a cycle")
        created = find_group(o, group) is None
        changed = _add_member(o, group, ref.kind, ref.name, create_group=True)
    return GroupChange(ref, created, changed)


def group_remove(org: Union[Org, str], group: str, spec: str) -> GroupChange:
    """Remove a direct member from a group (nested memberships through other groups stay)."""
    with db.atomic():
        o = _org(org)
        g = find_group(o, group)
        if g is None:
            raise NotFound(f"group '{group}' does not exist in org '{o.name}'")
        if ":" in spec:
            kind, _, name = spec.partition(":")
            if kind not in (USER, CLIENT, GROUP):
                raise IdentityError(f"'{spec}': a principal is NAME, user:NAME, client:NAME or group:NAME")
            ref = MemberRef(kind, name)
        else:
            kinds = [
                m.kind for m in GroupMember.select(GroupMember.kind).where(
                    (GroupMember.group == g) & (GroupMember.name == spec) & (GroupMember.kind != GROUP)
                )
            ]
            if len(kinds) > 1:
                raise IdentityError(f"'{spec}' is both a user and a client member: write user:{spec} or client:{spec}")
            ref = MemberRef(kinds[0] if kinds else USER, spec)
            if not kinds:
                return GroupChange(ref, False, False)
        n = GroupMember.delete().where(
            (GroupMember.group == g) & (GroupMember.kind == ref.kind) & (GroupMember.name == ref.name)
        ).execute()
    return GroupChange(ref, False, n > 0)
