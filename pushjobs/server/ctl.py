"""push-jobs-server-ctl: the local admin command (init, orgs, users, clients, groups, purge, status).

Rules of this file:
* The verbs and options are a contract (tests, packages and docs use them):
  see `build_parser`. `-c CONFIG` is accepted before or after the verb.
* Each verb prints what it did on stdout; an error prints ONE line
  `push-jobs-server-ctl: error: ...` on stderr and exits 1 (usage errors 2).
  No tracebacks for anything an operator can cause.
* Identity changes go through `pushjobs.server.identity`; this module only
  parses arguments, reads files and writes keys.
* Run as root against a data_dir that belongs to the service user, files it
  creates there are handed to that user (`_fix_ownership`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
import stat
import sys
from typing import Callable, Optional, Sequence

import peewee as pw

from pushjobs.protocol import keys
from pushjobs.protocol.errors import ProtocolError
from pushjobs.server import identity, store
from pushjobs.server.settings import (
    Settings,
    SettingsError,
    effective_settings,
    load_settings,
    render_value,
)

PROG = "push-jobs-server-ctl"
log = logging.getLogger(PROG)


class CtlError(Exception):
    """An error for the operator: printed as one line, exit status 1."""


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


# ---------------------------------------------------------------------------
# files and keys


def _read_pem(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise CtlError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CtlError(f"{path}: is a directory") from None
    except PermissionError:
        raise CtlError(f"{path}: permission denied") from None


def _read_public_key(path: str) -> str:
    try:
        return identity.normalize_public_key(_read_pem(path))
    except identity.InvalidKey as e:
        raise CtlError(f"{path}: {e}") from None


class _NewKeyFile:
    """A private key file reserved before the database change (O_EXCL, 0600) and written after it.

    If the change fails the file is removed, so neither a key without a
    principal nor a principal whose key was never saved is left behind."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise CtlError(f"{path}: directory {parent} does not exist")
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CtlError(f"{path} already exists; refusing to overwrite a key") from None
        except OSError as e:
            raise CtlError(f"{path}: {e.strerror}") from None
        os.fchmod(self.fd, 0o600)
        self.private_pem, self.public_pem = identity.new_key_pair()

    def commit(self) -> None:
        with os.fdopen(self.fd, "w") as f:
            f.write(self.private_pem)

    def abandon(self) -> None:
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _with_key_file(path: Optional[str], action: Callable[[Optional[str]], None]) -> None:
    """Run `action(public_pem)` with a fresh key when `path` is given, saving the private key on success."""
    if path is None:
        action(None)
        return
    kf = _NewKeyFile(path)
    try:
        action(kf.public_pem)
    except BaseException:
        kf.abandon()
        raise
    kf.commit()


def _service_owner(settings: Settings) -> Optional[tuple[int, int]]:
    """(uid, gid) of data_dir when we run as root and the server runs as someone else.

    The package makes data_dir belong to the service user; files that root
    creates there (the SQLite database and its -wal/-shm, the server keys)
    must belong to that user too, or the server cannot open them."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(settings.data_dir)
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    return st.st_uid, st.st_gid


def _fix_ownership(settings: Settings, extra: Sequence[Optional[str]] = ()) -> None:
    owner = _service_owner(settings)
    if owner is None:
        return
    paths = [settings.server_private_key_path, settings.server_public_key_path, *extra]
    url = settings.resolved_database_url()
    if url.startswith("sqlite:"):
        db_path = store.sqlite_path(url, settings.data_dir)
        paths += [db_path, db_path + "-wal", db_path + "-shm"]
    for p in paths:
        if not p:
            continue
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if st.st_uid == 0 and not stat.S_ISLNK(st.st_mode):
            os.chown(p, *owner)


def _write_new_file(path: str, data: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)


# ---------------------------------------------------------------------------
# verbs


def cmd_init(settings: Settings, args: argparse.Namespace) -> None:
    data_dir = settings.data_dir
    if not os.path.isdir(data_dir):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        os.chmod(data_dir, 0o700)
        out(f"created {data_dir} (mode 0700)")
    else:
        out(f"{data_dir} exists")
    url = settings.resolved_database_url()
    if url.startswith("sqlite:"):
        path = store.sqlite_path(url, data_dir)
        parent = os.path.dirname(path)
        if path != ":memory:" and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            out(f"created {parent} (mode 0700)")
    database = store.open_database(settings, migrate=False)
    try:
        with database.connection_context():
            before = store.current_schema_version(database)
            store.migrate_schema(database)
    except pw.OperationalError as e:
        raise CtlError(f"cannot open database {store.redact_url(url)}: {str(e).strip().splitlines()[0]}") from None
    if url.startswith("sqlite:") and path != ":memory:":
        os.chmod(path, 0o600)  # job output and keys; SQLite gives -wal/-shm the same mode
    if before is None:
        out(f"created database schema version {store.SCHEMA_VERSION} in {store.redact_url(url)}")
    elif before < store.SCHEMA_VERSION:
        out(f"migrated database schema from version {before} to {store.SCHEMA_VERSION}")
    else:
        out(f"database schema version {before} is up to date")

    priv_path, pub_path = settings.server_private_key_path, settings.server_public_key_path
    if os.path.exists(priv_path):
        try:
            key = keys.load_private_key(open(priv_path, "rb").read())
        except ProtocolError as e:
            raise CtlError(f"{priv_path}: {e.detail}") from None
        if stat.S_IMODE(os.stat(priv_path).st_mode) & 0o077:
            os.chmod(priv_path, 0o600)
            out(f"{priv_path}: mode was too open, set to 0600")
        out(f"server key {priv_path} exists (kept)")
        if not os.path.exists(pub_path):
            _write_new_file(pub_path, keys.public_key_pem(key), 0o644)
            out(f"wrote {pub_path} from the existing private key")
    else:
        if os.path.exists(pub_path):
            raise CtlError(
                f"{pub_path} exists without {priv_path}; restore the private key or remove the public one"
            )
        private_pem, public_pem = identity.new_key_pair()
        _write_new_file(priv_path, private_pem, 0o600)
        _write_new_file(pub_path, public_pem, 0o644)
        out(f"generated server key pair {priv_path} (0600) and {pub_path}")

    cert, key_path = settings.ssl_certificate, settings.ssl_certificate_key
    _fix_ownership(settings)
    if args.tls:
        if not cert or not key_path:
            raise CtlError("--tls needs ssl_certificate and ssl_certificate_key in the settings file")
        have_cert, have_key = os.path.exists(cert), os.path.exists(key_path)
        if have_cert and have_key:
            out(f"TLS certificate {cert} exists (kept)")
        elif have_cert or have_key:
            raise CtlError(f"only one of {cert} and {key_path} exists; remove it or restore the other")
        else:
            write_self_signed_certificate(settings.server_name, cert, key_path)
            _fix_ownership(settings, [cert, key_path])  # the server user reads the key
            out(f"generated self-signed TLS certificate {cert} and key {key_path} (0600) for {settings.server_name}")
    elif cert and not os.path.exists(cert):
        out(f"note: {cert} does not exist; `{PROG} init --tls` makes a self-signed one")


def write_self_signed_certificate(server_name: str, cert_path: str, key_path: str, days: int = 3650) -> None:
    """Write a new self-signed certificate for `server_name` (plus localhost/127.0.0.1) and its key (0600).

    Why it is its own CA: clients pin it as their trust root (the agent's
    `ca_file`, the CLI's `--ca-file`, knife's trusted_certs), and strict
    verifiers refuse a trust anchor that is not a proper CA certificate.
    urllib3 2.x (requests) turns on OpenSSL's VERIFY_X509_STRICT, which wants
    basicConstraints CA:TRUE (critical), keyUsage with keyCertSign and the
    subject/authority key identifiers; Ruby's OpenSSL (knife, the original
    client) checks the same. keyUsage digitalSignature/keyEncipherment and
    extendedKeyUsage serverAuth keep it acceptable as the server's own leaf.
    Existing files are never overwritten (O_EXCL). The test harness
    (tests/helpers/server.py) uses this same function."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    for p in (cert_path, key_path):
        parent = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o755, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        names.insert(0, x509.IPAddress(ipaddress.ip_address(server_name)))
    except ValueError:
        names.insert(0, x509.DNSName(server_name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name[:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode(),
        0o600,
    )
    _write_new_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM).decode(), 0o644)


def cmd_org_create(settings: Settings, args: argparse.Namespace) -> None:
    org = identity.create_org(args.org)
    out(f"created org '{org.name}' (guid {org.guid}) with group {', '.join(identity.DEFAULT_GROUPS)}")


def cmd_org_list(settings: Settings, args: argparse.Namespace) -> None:
    for org in identity.list_orgs():
        out(f"{org.name}\t{org.guid}")


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> None:
    existing = identity.find_user(args.user)
    public_key = _read_public_key(args.public_key) if args.public_key else None
    if existing is None and not (args.public_key or args.key_out):
        raise CtlError("a new user needs --public-key PEM_FILE or --key-out PATH")
    if existing is not None and args.key_out:
        raise CtlError(f"user '{args.user}' already exists with its own key; --key-out cannot change it")
    if existing is not None and public_key is not None and public_key != existing.public_key:
        raise CtlError(f"user '{args.user}' already exists with a different public key")
    result: list[identity.UserResult] = []

    def action(new_public: Optional[str]) -> None:
        result.append(identity.create_user(args.user, new_public or public_key, org=args.org, admin=args.admin))

    _with_key_file(args.key_out, action)
    r = result[0]
    what = f"created user '{args.user}'" if r.created else f"user '{args.user}' exists"
    parts = [what]
    if r.joined:
        parts.append(f"joined org '{args.org}'")
    elif not r.created:
        parts.append(f"already in org '{args.org}'")
    else:
        parts[0] += f" in org '{args.org}'"
    if args.admin:
        parts.append("added to group 'admins'" if r.admin_added else "already in group 'admins'")
    if args.key_out:
        parts.append(f"private key written to {args.key_out} (0600)")
    out(", ".join(parts))


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> None:
    for u in identity.list_users(args.org):
        if args.org:
            admin = identity.is_member(args.org, identity.ADMINS_GROUP, identity.USER, u.name)
            out(f"{u.name}\t{'admin' if admin else ''}".rstrip())
        else:
            out(f"{u.name}\t{','.join(identity.user_orgs(u))}".rstrip())


def cmd_user_delete(settings: Settings, args: argparse.Namespace) -> None:
    identity.delete_user(args.user)
    out(f"deleted user '{args.user}' (and its org and group memberships)")


def cmd_client_create(settings: Settings, args: argparse.Namespace) -> None:
    if args.count is not None:
        if args.node:
            raise CtlError("give either NODE or --count N --prefix P, not both")
        if not args.prefix:
            raise CtlError("--count needs --prefix P")
        if not (args.public_key or args.key_out):
            raise CtlError("--count needs --public-key PEM_FILE (or --key-out PATH for one shared new key)")
        public_key = _read_public_key(args.public_key) if args.public_key else None
        _with_key_file(
            args.key_out,
            lambda new_public: identity.create_clients_bulk(args.org, args.prefix, args.count,
                                                            new_public or public_key),
        )
        out(f"created {args.count} clients {args.prefix}1..{args.prefix}{args.count} in org '{args.org}'"
            + (f", shared private key written to {args.key_out} (0600)" if args.key_out else ""))
        return
    if not args.node:
        raise CtlError("client-create needs NODE (or --count N --prefix P)")
    if args.prefix:
        raise CtlError("--prefix goes with --count")
    if not (args.public_key or args.key_out):
        raise CtlError("client-create needs --public-key PEM_FILE or --key-out PATH")
    public_key = _read_public_key(args.public_key) if args.public_key else None
    identity.get_org(args.org)
    _with_key_file(args.key_out, lambda new_public: identity.create_client(args.org, args.node,
                                                                          new_public or public_key))
    out(f"created client '{args.node}' in org '{args.org}'"
        + (f", private key written to {args.key_out} (0600)" if args.key_out else ""))


def cmd_client_list(settings: Settings, args: argparse.Namespace) -> None:
    for c in identity.list_clients(args.org):
        out(c.name)


def cmd_client_delete(settings: Settings, args: argparse.Namespace) -> None:
    identity.delete_client(args.org, args.node)
    out(f"deleted client '{args.node}' of org '{args.org}'")


def cmd_group_add(settings: Settings, args: argparse.Namespace) -> None:
    ch = identity.group_add(args.org, args.group, args.principal)
    where = f"group '{args.group}' of org '{args.org}'"
    if ch.changed:
        out(f"added {ch.member} to {where}" + (" (group created)" if ch.group_created else ""))
    else:
        out(f"{ch.member} is already in {where}")


def cmd_group_remove(settings: Settings, args: argparse.Namespace) -> None:
    ch = identity.group_remove(args.org, args.group, args.principal)
    where = f"group '{args.group}' of org '{args.org}'"
    if ch.changed:
        out(f"removed {ch.member} from {where}")
    else:
        out(f"'{ch.member.name}' was not a member of {where}; nothing changed")


def cmd_group_list(settings: Settings, args: argparse.Namespace) -> None:
    groups = [args.group] if args.group else [g.name for g in identity.list_groups(args.org)]
    for name in groups:
        m = identity.group_members(args.org, name)
        members = [f"user:{n}" for n in m["users"]] + [f"client:{n}" for n in m["clients"]] + \
                  [f"group:{n}" for n in m["groups"]]
        out(f"{name}\t{' '.join(members)}".rstrip())


def cmd_show_config(settings: Settings, args: argparse.Namespace) -> None:
    # The database password must never reach a terminal or a pasted bug report.
    rows = [(k, store.redact_url(v) if k == "database_url" and isinstance(v, str) else v, s)
            for k, v, s in effective_settings(settings)]
    if args.json:
        out(json.dumps({"config_file": settings.config_path,
                        "settings": {k: {"value": v, "source": s} for k, v, s in rows}}, indent=2))
        return
    out(f"# settings file: {settings.config_path or '(none: defaults only)'}")
    width = max(len(k) + 1 + len(render_value(v)) for k, v, _ in rows)
    for k, v, s in rows:
        out(f"{(k + ' ' + render_value(v)).ljust(width)}  # {s}")
    for k, s in sorted(settings.provenance.items()):
        if s.endswith("(ignored)"):
            out(f"# {k}: {s}")


def status_url(settings: Settings) -> str:
    scheme = "https" if settings.ssl_certificate else "http"
    host = settings.api_listen_address
    if host in ("0.0.0.0", "::", "*", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.api_port}/pushy/_status"


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    import urllib.error
    import urllib.request

    url = status_url(settings)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # local, possibly self-signed
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=ctx) as r:
            body = json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise CtlError(f"push-jobs-server at {url} answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CtlError(f"push-jobs-server is not running ({url}: {reason})") from None
    except ValueError:
        raise CtlError(f"push-jobs-server at {url} answered something that is not JSON") from None
    if args.json:
        out(json.dumps(body))
        return
    jobs = body.get("job_processes") or []
    out(f"push-jobs-server is running at {url}: {body.get('status')}, incarnation {body.get('incarnation_id')}, "
        f"{body.get('node_fsm_count', 0)} nodes, {len(jobs)} live jobs")


def cmd_purge_jobs(settings: Settings, args: argparse.Namespace) -> None:
    days = args.older_than if args.older_than is not None else settings.job_retention_days
    if days is None:
        raise CtlError("purge-jobs needs --older-than DAYS (or job_retention_days in the settings)")
    if days < 0:
        raise CtlError(f"--older-than must not be negative, got {days}")
    n = purge_jobs(days)
    out(f"purged {n} finished job{'s' if n != 1 else ''} older than {days:g} days")


def purge_jobs(days: float, now: Optional[dt.datetime] = None) -> int:
    """Delete finished jobs whose last update is older than `days`, with their nodes, output and events.

    Jobs in new/voting/running are never touched, whatever their age."""
    cutoff = (now or store.utcnow()) - dt.timedelta(days=days)
    total = 0
    while True:
        with store.db.atomic():
            ids = [j.id for j in store.Job.select(store.Job.id).where(
                store.Job.status.in_(store.FINISHED_JOB_STATUSES) & (store.Job.updated_at < cutoff)
            ).limit(500)]
            if not ids:
                break
            for model in (store.JobNode, store.JobOutput, store.JobEvent):
                model.delete().where(model.job.in_(ids)).execute()
            total += store.Job.delete().where(store.Job.id.in_(ids)).execute()
    return total


# ---------------------------------------------------------------------------
# argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


_NEEDS_DB = {
    "org-create", "org-list", "user-create", "user-list", "user-delete", "client-create", "client-list",
    "client-delete", "group-add", "group-remove", "group-list", "purge-jobs",
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # default=SUPPRESS so that `-c` after the verb does not reset one given before it
    common.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
                        help="settings file (default: $PUSHJOBS_SERVER_CONFIG, "
                             "/etc/push-jobs-server/push-jobs-server.rb)")
    p = _Parser(prog=PROG, description="Local administration of push-jobs-server.")
    p.add_argument("-c", "--config", metavar="CONFIG", default=None,
                   help="settings file (default: $PUSHJOBS_SERVER_CONFIG, /etc/push-jobs-server/push-jobs-server.rb)")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    def verb(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    sp = verb("init", cmd_init, "create directories, the database schema and the server key pair")
    sp.add_argument("--tls", action="store_true",
                    help="also write a self-signed certificate to ssl_certificate/ssl_certificate_key if missing")
    sp = verb("org-create", cmd_org_create, "create an org (with its admins group)")
    sp.add_argument("org", metavar="ORG")
    verb("org-list", cmd_org_list, "list orgs and their guids")

    sp = verb("user-create", cmd_user_create, "create a user (or add an existing one to an org)")
    sp.add_argument("user", metavar="USER")
    sp.add_argument("--org", required=True, metavar="ORG")
    sp.add_argument("--admin", action="store_true", help="add the user to the org's admins group")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--public-key", metavar="PEM_FILE", help="the user's RSA public key")
    g.add_argument("--key-out", metavar="PATH", help="generate a key pair; write the private key here (0600)")
    sp = verb("user-list", cmd_user_list, "list users (of one org with --org)")
    sp.add_argument("--org", metavar="ORG")
    sp = verb("user-delete", cmd_user_delete, "delete a user from every org")
    sp.add_argument("user", metavar="USER")

    sp = verb("client-create", cmd_client_create, "create a client (node) in an org, or N of them with --count")
    sp.add_argument("node", metavar="NODE", nargs="?")
    sp.add_argument("--org", required=True, metavar="ORG")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--public-key", metavar="PEM_FILE", help="the client's RSA public key")
    g.add_argument("--key-out", metavar="PATH", help="generate a key pair; write the private key here (0600)")
    sp.add_argument("--count", type=_positive_int, metavar="N", help="create clients PREFIX1..PREFIXN sharing one key")
    sp.add_argument("--prefix", metavar="P")
    sp = verb("client-list", cmd_client_list, "list the clients of an org")
    sp.add_argument("--org", required=True, metavar="ORG")
    sp = verb("client-delete", cmd_client_delete, "delete a client of an org")
    sp.add_argument("node", metavar="NODE")
    sp.add_argument("--org", required=True, metavar="ORG")

    principal_help = "a user or client name (user:NAME / client:NAME if both exist), or group:NAME"
    sp = verb("group-add", cmd_group_add, "add a principal to a group (the group is created if missing)")
    sp.add_argument("org", metavar="ORG")
    sp.add_argument("group", metavar="GROUP")
    sp.add_argument("principal", metavar="PRINCIPAL", help=principal_help)
    sp = verb("group-remove", cmd_group_remove, "remove a principal from a group")
    sp.add_argument("org", metavar="ORG")
    sp.add_argument("group", metavar="GROUP")
    sp.add_argument("principal", metavar="PRINCIPAL", help=principal_help)
    sp = verb("group-list", cmd_group_list, "list the groups of an org and their direct members")
    sp.add_argument("org", metavar="ORG")
    sp.add_argument("group", metavar="GROUP", nargs="?")

    sp = verb("show-config", cmd_show_config, "print the effective settings and where each came from")
    sp.add_argument("--json", action="store_true")
    sp = verb("status", cmd_status, "ask the running server for /pushy/_status")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    sp = verb("purge-jobs", cmd_purge_jobs, "delete finished jobs older than DAYS days (never live ones)")
    sp.add_argument("--older-than", type=float, metavar="DAYS",
                    help="age in days (default: job_retention_days from the settings)")
    return p


def _positive_int(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{s}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.verb in _NEEDS_DB:
            try:
                store.open_database(settings)
                with store.db.connection_context():
                    args.func(settings, args)
            finally:
                store.close_database()
                _fix_ownership(settings)
        elif args.verb == "init":
            try:
                args.func(settings, args)
            finally:
                store.close_database()
                _fix_ownership(settings)
        else:
            args.func(settings, args)
    except (CtlError, SettingsError, store.StoreError, identity.IdentityError) as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except pw.DatabaseError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"{PROG}: error: database: {msg}\n")
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"{PROG}: error: {where}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
