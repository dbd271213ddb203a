"""Orgs, users, clients, groups (nested, cyclic) and principal lookup, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushjobs.server import identity as idn
from pushjobs.server import store

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUB_SPKI = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
PUB_PKCS1 = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
PRIV_PKCS1 = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption()).decode()


def test_public_key_forms_are_normalized():
    assert idn.normalize_public_key(PUB_SPKI) == PUB_SPKI
    assert idn.normalize_public_key(PUB_PKCS1) == PUB_SPKI
    assert idn.normalize_public_key(PRIV_PKCS1) == PUB_SPKI  # only the public half is kept
    with pytest.raises(idn.InvalidKey, match="not a PEM RSA public key"):
        idn.normalize_public_key("hello")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(idn.InvalidKey, match="not an RSA key"):
        idn.normalize_public_key(ec_pub)


def test_new_key_pair_is_chef_style():
    priv, pub = idn.new_key_pair()
    assert priv.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert idn.normalize_public_key(priv) == pub


def test_org_create_list_and_defaults(store_db):
    org = idn.create_org("acme")
    assert re.fullmatch(r"[0-9a-f]{32}", org.guid)
    assert [g.name for g in idn.list_groups("acme")] == ["admins"]
    idn.create_org("beta")
    assert [o.name for o in idn.list_orgs()] == ["acme", "beta"]
    assert idn.find_org("nope") is None
    with pytest.raises(idn.AlreadyExists, match="org 'acme' already exists"):
        idn.create_org("acme")
    with pytest.raises(idn.InvalidName):
        idn.create_org("Bad Name")
    with pytest.raises(idn.NotFound, match="org 'nope' does not exist"):
        idn.get_org("nope")


def test_users_are_global_and_join_orgs(store_db):
    idn.create_org("acme")
    idn.create_org("beta")
    r = idn.create_user("alice", PUB_PKCS1, org="acme", admin=True)
    assert (r.created, r.joined, r.admin_added) == (True, True, True)
    r2 = idn.create_user("alice", None, org="beta")
    assert (r2.created, r2.joined, r2.admin_added) == (False, True, False)
    assert idn.user_orgs(idn.find_user("alice")) == ["acme", "beta"]
    assert idn.is_member("acme", "admins", "user", "alice")
    assert not idn.is_member("beta", "admins", "user", "alice")
    assert [u.name for u in idn.list_users("beta")] == ["alice"]
    with pytest.raises(idn.InvalidKey, match="no public key"):
        idn.create_user("bob", None, org="acme")
    idn.create_user("bob", PUB_SPKI)  # no org
    assert [u.name for u in idn.list_users()] == ["alice", "bob"]
    assert [u.name for u in idn.list_users("acme")] == ["alice"]


def test_principal_lookup(store_db):
    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_user("alice", PUB_SPKI, org="acme")
    idn.create_client("acme", "node1", PUB_PKCS1)
    p = idn.lookup_principal("acme", "alice")
    assert p == idn.Principal("alice", "user", PUB_SPKI, True)
    assert idn.lookup_principal("beta", "alice").org_member is False  # 403, not 401
    c = idn.lookup_principal("acme", "node1")
    assert (c.kind, c.org_member, c.public_key) == ("client", True, PUB_SPKI)
    assert idn.lookup_principal("beta", "node1") is None  # clients belong to one org
    assert idn.lookup_principal("acme", "ghost") is None
    assert idn.lookup_principal("no-such-org", "alice") is None
    # a client and a user of the same name: the client wins, as in Chef
    idn.create_client("acme", "alice", PUB_SPKI)
    assert idn.lookup_principal("acme", "alice").kind == "client"


def test_nested_groups_and_cycles(store_db):
    idn.create_org("acme")
    idn.create_user("alice", PUB_SPKI, org="acme")
    idn.create_user("bob", PUB_SPKI, org="acme")
    idn.create_client("acme", "n1", PUB_SPKI)
    ch = idn.group_add("acme", "pushy_job_writers", "group:admins")
    assert (str(ch.member), ch.group_created, ch.changed) == ("group 'admins'", True, True)
    idn.create_group("acme", "ops")
    idn.group_add("acme", "admins", "group:ops")
    idn.group_add("acme", "ops", "alice")
    idn.group_add("acme", "ops", "n1")
    # alice: ops -> admins -> pushy_job_writers
    assert idn.is_member("acme", "pushy_job_writers", "user", "alice")
    assert idn.is_member("acme", "pushy_job_writers", "client", "n1")
    assert not idn.is_member("acme", "pushy_job_writers", "user", "n1")  # n1 is a client, not a user
    assert not idn.is_member("acme", "pushy_job_writers", "user", "bob")
    # group_add refuses a cycle: writers -> admins -> ops -> writers
    with pytest.raises(idn.IdentityError, match="would create a cycle"):
        idn.group_add("acme", "ops", "group:pushy_job_writers")
    assert idn.group_members("acme", "ops")["groups"] == []
    # a cycle that exists anyway (older database, direct insert): lookups still end
    idn._add_member(idn.get_org("acme"), "ops", "group", "pushy_job_writers", create_group=False)
    assert idn.is_member("acme", "ops", "user", "alice")
    assert not idn.is_member("acme", "ops", "user", "bob")
    assert not idn.is_member("acme", "admins", "user", "bob")
    # a group containing itself
    idn.create_group("acme", "selfish")
    with pytest.raises(idn.IdentityError, match="cannot be a member of itself"):
        idn.group_add("acme", "selfish", "group:selfish")
    idn._add_member(idn.get_org("acme"), "selfish", "group", "selfish", create_group=False)
    assert not idn.is_member("acme", "selfish", "user", "alice")
    assert idn.member_groups("acme", "user", "alice", ["admins", "pushy_job_readers", "selfish"]) == {"admins"}
    assert not idn.is_member("acme", "missing_group", "user", "alice")
    assert idn.group_members("acme", "ops") == {"users": ["alice"], "clients": ["n1"],
                                                "groups": ["pushy_job_writers"]}


def test_group_add_resolution_and_errors(store_db):
    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_user("alice", PUB_SPKI, org="acme")
    idn.create_user("carol", PUB_SPKI, org="beta")
    idn.create_client("acme", "n1", PUB_SPKI)
    assert idn.group_add("acme", "g", "alice").member == idn.MemberRef("user", "alice")
    assert idn.group_add("acme", "g", "n1").member == idn.MemberRef("client", "n1")
    again = idn.group_add("acme", "g", "n1")
    assert again.changed is False and again.group_created is False
    with pytest.raises(idn.IdentityError, match="not a member of org 'acme'"):
        idn.group_add("acme", "g", "carol")
    with pytest.raises(idn.NotFound, match="no user or client 'ghost'"):
        idn.group_add("acme", "g", "ghost")
    with pytest.raises(idn.NotFound, match="group 'nope' does not exist"):
        idn.group_add("acme", "g", "group:nope")
    with pytest.raises(idn.IdentityError, match="user:NAME"):
        idn.group_add("acme", "g", "robot:x")
    # same name as a user and a client: ambiguous unless prefixed
    idn.create_client("acme", "alice", PUB_SPKI)
    with pytest.raises(idn.IdentityError, match="both a user and a client"):
        idn.group_add("acme", "h", "alice")
    assert idn.group_add("acme", "h", "client:alice").member.kind == "client"
    assert idn.group_add("acme", "h", "user:alice").member.kind == "user"
    with pytest.raises(idn.IdentityError, match="both a user and a client member"):
        idn.group_remove("acme", "h", "alice")
    assert idn.group_remove("acme", "h", "client:alice").changed is True
    assert idn.group_remove("acme", "h", "alice").member.kind == "user"
    assert idn.group_remove("acme", "h", "alice").changed is False
    with pytest.raises(idn.NotFound):
        idn.group_remove("acme", "nope", "alice")


def test_bulk_clients(store_db):
    idn.create_org("acme")
    assert idn.create_clients_bulk("acme", "node", 1200, PUB_PKCS1) == 1200
    names = [c.name for c in idn.list_clients("acme")]
    assert len(names) == 1200 and "node1" in names and "node1200" in names and "node0" not in names
    assert store.Client.get(store.Client.name == "node777").public_key == PUB_SPKI
    with pytest.raises(idn.AlreadyExists, match="nothing created"):
        idn.create_clients_bulk("acme", "node", 1201, PUB_SPKI)
    assert len(idn.list_clients("acme")) == 1200  # all or nothing


def test_deletes_clean_up_memberships(store_db):
    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_user("alice", PUB_SPKI, org="acme", admin=True)
    idn.create_user("alice", None, org="beta", admin=True)
    idn.create_client("acme", "n1", PUB_SPKI)
    idn.create_client("beta", "n1", PUB_SPKI)
    idn.group_add("acme", "readers", "n1")
    idn.group_add("beta", "readers", "n1")
    idn.delete_client("acme", "n1")
    assert idn.group_members("acme", "readers")["clients"] == []
    assert idn.group_members("beta", "readers")["clients"] == ["n1"]  # the other org's n1 stays
    with pytest.raises(idn.NotFound):
        idn.delete_client("acme", "n1")
    idn.delete_user("alice")
    assert idn.find_user("alice") is None
    assert idn.group_members("acme", "admins")["users"] == []
    assert store.OrgUser.select().count() == 0
    with pytest.raises(idn.NotFound):
        idn.delete_user("alice")
    idn.group_add("acme", "outer", "group:readers")
    idn.delete_group("acme", "readers")
    assert idn.group_members("acme", "outer")["groups"] == []


def test_builtin_users_and_clients_groups(store_db):
    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_user("alice", PUB_SPKI, org="acme")
    idn.create_user("carol", PUB_SPKI, org="beta")
    idn.create_client("acme", "n1", PUB_SPKI)
    idn.create_client("beta", "n9", PUB_SPKI)
    assert idn.group_add("acme", "pushy_job_readers", "group:clients").member == idn.MemberRef("group", "clients")
    idn.group_add("acme", "pushy_job_readers", "group:users")
    assert idn.is_member("acme", "pushy_job_readers", "client", "n1")
    assert idn.is_member("acme", "pushy_job_readers", "user", "alice")
    assert not idn.is_member("acme", "pushy_job_readers", "user", "carol")  # another org's user
    assert not idn.is_member("acme", "pushy_job_readers", "client", "n9")  # another org's client
    assert idn.is_member("acme", "users", "user", "alice") and not idn.is_member("acme", "users", "client", "n1")
    assert idn.is_member("acme", "clients", "client", "n1")
    # nested one level further down
    idn.group_add("acme", "pushy_job_writers", "group:pushy_job_readers")
    assert idn.is_member("acme", "pushy_job_writers", "client", "n1")


def test_request_identity_is_lookup_principal_in_one_query(store_db):
    """The auth layer's one-query lookup answers exactly as lookup_principal (client wins,
    user membership, unknown names and orgs) and says which of the asked groups exist."""
    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_user("alice", PUB_SPKI, org="acme", admin=True)
    idn.create_user("dave", PUB_SPKI)  # in no org
    idn.create_client("acme", "node1", PUB_PKCS1)
    idn.create_group("acme", "pushy_job_readers")
    asked = ("pushy_job_readers", "pushy_job_writers", "admins")
    for org, name in [("acme", "alice"), ("beta", "alice"), ("acme", "node1"), ("beta", "node1"),
                      ("acme", "ghost"), ("acme", "dave"), ("beta", "dave")]:
        got = idn.lookup_request_identity(org, name, asked)
        assert got.principal == idn.lookup_principal(org, name), (org, name)
        o = idn.get_org(org)
        assert (got.org.id, got.org.name, got.org.guid) == (o.id, o.name, o.guid)
    assert idn.lookup_request_identity("no-such-org", "alice", asked) is None
    acme = idn.lookup_request_identity("acme", "alice", asked)
    assert acme.groups == {"pushy_job_readers": idn.find_group("acme", "pushy_job_readers").id,
                           "admins": idn.find_group("acme", "admins").id}
    assert idn.lookup_request_identity("beta", "alice", asked).groups == {"admins": idn.find_group("beta", "admins").id}
    assert idn.lookup_request_identity("acme", "alice").groups == {}
    # membership walks from the group id it returned
    assert idn.is_member(acme.org, "admins", "user", "alice", group_id=acme.groups["admins"])
    assert not idn.is_member(acme.org, "pushy_job_readers", "user", "alice",
                             group_id=acme.groups["pushy_job_readers"])
    # a client and a user of the same name: the client wins, as in Chef
    idn.create_client("acme", "alice", PUB_SPKI)
    assert idn.lookup_request_identity("acme", "alice").principal.kind == "client"


def test_request_identity_sees_every_change_at_once(store_db):
    """Nothing is cached: a deleted client or a new key counts from the next lookup on."""
    idn.create_org("acme")
    idn.create_client("acme", "n1", PUB_SPKI)
    assert idn.lookup_request_identity("acme", "n1").principal.public_key == PUB_SPKI
    idn.delete_client("acme", "n1")
    assert idn.lookup_request_identity("acme", "n1").principal is None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    idn.create_client("acme", "n1", other)
    assert idn.lookup_request_identity("acme", "n1").principal.public_key == other
