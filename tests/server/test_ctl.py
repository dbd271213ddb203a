"""push-jobs-server-ctl as a real subprocess, on SQLite (every verb) and PostgreSQL (the main ones)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pushjobs.server import store
from pushjobs.server.settings import Settings

CTL = str(Path(sys.executable).parent / "push-jobs-server-ctl")


class Ctl:
    """A settings file in a temp dir and a way to run the ctl against it."""

    def __init__(self, root: Path, database_url: str | None = None, extra: str = "", subprocess: bool = True):
        self.subprocess = subprocess  # False: call ctl.main() in this process (same code, much faster)
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "push-jobs-server.rb"
        lines = [f'data_dir "{self.data_dir}"', "server_name 127.0.0.1",
                 'zeromq_listen_address "tcp://127.0.0.1"']
        if database_url:
            lines.append(f'database_url "{database_url}"')
        self.config.write_text("\n".join(lines) + "\n" + extra)

    def run(self, *args: str, config_first: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [CTL, "-c", str(self.config), *args] if config_first else [CTL, *args, "-c", str(self.config)]
        if self.subprocess or env is not None:
            return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env or dict(os.environ))
        from pushjobs.server import ctl

        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            try:
                rc = ctl.main(argv[1:])
            except SystemExit as ex:  # argparse usage errors
                rc = ex.code
        return subprocess.CompletedProcess(argv, rc, o.getvalue(), e.getvalue())

    def ok(self, *args: str, **kw) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: rc={r.returncode} stderr={r.stderr}"
        return r.stdout

    def fails(self, *args: str, rc: int = 1) -> str:
        r = self.run(*args)
        assert r.returncode == rc, f"{args}: rc={r.returncode} stdout={r.stdout} stderr={r.stderr}"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr  # one clear line, no traceback
        assert lines[0].startswith("push-jobs-server-ctl: error: ")
        return lines[0]

    def settings(self) -> Settings:
        from pushjobs.server.settings import load_settings

        return load_settings(str(self.config), env={})


@pytest.fixture
def ctl(tmp_path) -> Ctl:
    """An initialized instance whose verbs run in-process (see test_every_verb_as_a_subprocess)."""
    c = Ctl(tmp_path, subprocess=False)
    c.ok("init")
    return c


def _pub_key_file(path: Path) -> Path:
    from pushjobs.server.identity import new_key_pair

    _, pub = new_key_pair()
    path.write_text(pub)
    return path


def test_init_creates_dir_schema_and_keys_idempotently(tmp_path):
    c = Ctl(tmp_path)
    out = c.ok("init")
    assert f"created {c.data_dir} (mode 0700)" in out
    assert "created database schema version" in out
    assert stat.S_IMODE(os.stat(c.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(c.data_dir / "push-jobs-server.sqlite3").st_mode) == 0o600
    priv, pub = c.data_dir / "pushy_priv.pem", c.data_dir / "pushy_pub.pem"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    key = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    assert key.key_size == 2048
    loaded_pub = serialization.load_pem_public_key(pub.read_bytes())
    assert loaded_pub.public_numbers() == key.public_key().public_numbers()
    before = priv.read_bytes()
    out2 = c.ok("init", config_first=False)  # -c after the verb
    assert "exists (kept)" in out2 and "up to date" in out2
    assert priv.read_bytes() == before  # never overwritten
    # a lost public key is rebuilt from the private one
    pub.unlink()
    assert "from the existing private key" in c.ok("init")
    assert serialization.load_pem_public_key(pub.read_bytes()).public_numbers() == loaded_pub.public_numbers()
    # a looser mode is corrected, a damaged key is reported, not replaced
    os.chmod(priv, 0o644)
    assert "mode was too open, set to 0600" in c.ok("init")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    priv.write_text("garbage")
    assert f"{priv}: cannot load RSA private key" in c.fails("init")
    assert priv.read_text() == "garbage"
    # a public key without its private key is not silently replaced
    priv.unlink()
    assert "exists without" in c.fails("init")


def test_init_tls_writes_a_self_signed_certificate(tmp_path):
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    c = Ctl(tmp_path, extra=f'ssl_certificate "{cert}"\nssl_certificate_key "{key}"\n', subprocess=False)
    assert "init --tls" in c.ok("init")  # a hint, nothing written
    assert not cert.exists()
    out = c.ok("init", "--tls")
    assert "generated self-signed TLS certificate" in out
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    crt = x509.load_pem_x509_certificate(cert.read_bytes())
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert "exists (kept)" in c.ok("init", "--tls")
    (tmp_path / "plain").mkdir()
    plain = Ctl(tmp_path / "plain", subprocess=False)
    assert "--tls needs ssl_certificate" in plain.fails("init", "--tls")


def _serve_tls(cert: Path, key: Path):
    """A real HTTPS listener on 127.0.0.1 presenting `cert` (answers 200 "ok"); returns (server, port)."""
    import ssl

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


@pytest.mark.parametrize("server_name", ["127.0.0.1", "push.example.test"])
def test_init_tls_certificate_is_a_strict_ca_file(tmp_path, server_name):
    """The `init --tls` certificate is accepted as its own CA file with verification on by
    OpenSSL's X509_STRICT (what urllib3 2.x uses on Python 3.13+), by requests, and by Ruby."""
    import ssl
    import urllib.request

    import requests
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    c = Ctl(tmp_path, extra=f'server_name "{server_name}"\nssl_certificate "{cert}"\nssl_certificate_key "{key}"\n',
            subprocess=False)
    c.ok("init", "--tls")
    crt = x509.load_pem_x509_certificate(cert.read_bytes())
    ext = {e.oid: e for e in crt.extensions}
    bc = crt.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = crt.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.digital_signature and ku.key_encipherment
    assert ExtendedKeyUsageOID.SERVER_AUTH in crt.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ski = crt.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = crt.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest and len(ext) == 6
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if server_name != "127.0.0.1":
        assert san.get_values_for_type(x509.DNSName)[0] == server_name

    srv, port = _serve_tls(cert, key)
    try:
        url = f"https://127.0.0.1:{port}/"
        strict = ssl.create_default_context(cafile=str(cert))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        with urllib.request.urlopen(url, context=strict, timeout=10) as r:
            assert r.read() == b"ok"
        with urllib.request.urlopen(f"https://localhost:{port}/", context=strict, timeout=10) as r:
            assert r.read() == b"ok"
        assert requests.get(url, verify=str(cert), timeout=10).text == "ok"
        # and a client that does not trust it still refuses it
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=True, timeout=10)
        ruby = shutil.which("ruby")
        if ruby:
            script = ("require 'net/http'; require 'openssl'; "
                      "st = OpenSSL::X509::Store.new; st.add_file(ARGV[0]); "
                      "st.flags = OpenSSL::X509::V_FLAG_X509_STRICT; "
                      "crt = OpenSSL::X509::Certificate.new(File.read(ARGV[0])); "
                      "st.verify(crt) or abort(st.error_string); "
                      "h = Net::HTTP.new('127.0.0.1', ARGV[1].to_i); h.use_ssl = true; "
                      "h.verify_mode = OpenSSL::SSL::VERIFY_PEER; h.cert_store = st; "
                      "print h.get('/').body")
            cp = subprocess.run([ruby, "-e", script, str(cert), str(port)], capture_output=True, text=True,
                                timeout=30)
            assert cp.returncode == 0 and cp.stdout == "ok", cp.stderr
    finally:
        srv.shutdown()
        srv.server_close()


def test_parallel_ctl_writers_and_a_running_server(server_factory, tmp_path):
    """Eight ctl processes write at once while the server stores jobs: none gets
    "database is locked" (SQLite transactions begin IMMEDIATE, so they wait their turn)."""
    from concurrent.futures import ThreadPoolExecutor

    srv = server_factory()
    srv.create_org("acme")
    http = srv.client(srv.create_user("alice", org="acme", admin=True))
    stop, codes = threading.Event(), []

    def post_jobs() -> None:
        while not stop.is_set():
            codes.append(http.post("jobs", json={"command": "chef-client", "nodes": ["a", "b", "c"]}).status_code)

    poster = threading.Thread(target=post_jobs)
    poster.start()
    try:
        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda i: srv.ctl("client-create", f"c{i}", "--org", "acme", "--key-out",
                                                    str(tmp_path / f"c{i}.pem"), check=False), range(8)))
    finally:
        stop.set()
        poster.join(30)
    assert [r.stderr for r in results if r.returncode] == []
    assert codes and set(codes) == {201}, codes
    assert sorted(srv.ctl("client-list", "--org", "acme").stdout.split()) == [f"c{i}" for i in range(8)]
    assert "database is locked" not in srv.log_text()


def test_orgs_users_clients_groups(ctl, tmp_path):
    out = ctl.ok("org-create", "acme")
    assert "created org 'acme'" in out and "admins" in out
    assert "already exists" in ctl.fails("org-create", "acme")
    ctl.ok("org-create", "beta")
    lines = ctl.ok("org-list").splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["acme", "beta"]
    assert all(len(ln.split("\t")[1]) == 32 for ln in lines)

    alice_key = tmp_path / "alice.pem"
    out = ctl.ok("user-create", "alice", "--org", "acme", "--admin", "--key-out", str(alice_key))
    assert out.strip() == (f"created user 'alice', joined org 'acme', added to group 'admins', "
                           f"private key written to {alice_key} (0600)")
    assert stat.S_IMODE(os.stat(alice_key).st_mode) == 0o600
    assert alice_key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    out = ctl.ok("user-create", "alice", "--org", "beta")
    assert out.strip() == "user 'alice' exists, joined org 'beta'"
    assert "refusing to overwrite" in ctl.fails("user-create", "bob", "--org", "acme", "--key-out", str(alice_key))
    assert "needs --public-key" in ctl.fails("user-create", "bob", "--org", "acme")
    bob_pub = _pub_key_file(tmp_path / "bob.pub")
    assert "created user 'bob'" in ctl.ok("user-create", "bob", "--org", "acme", "--public-key", str(bob_pub))
    assert "different public key" in ctl.fails("user-create", "bob", "--org", "beta", "--public-key",
                                                str(_pub_key_file(tmp_path / "other.pub")))
    assert ctl.ok("user-list").splitlines() == ["alice\tacme,beta", "bob\tacme"]
    assert ctl.ok("user-list", "--org", "acme").splitlines() == ["alice\tadmin", "bob"]
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    assert f"{bad}: not a PEM RSA public key" in ctl.fails("user-create", "carol", "--org", "acme",
                                                           "--public-key", str(bad))
    assert "no such file" in ctl.fails("user-create", "carol", "--org", "acme", "--public-key",
                                       str(tmp_path / "missing.pem"))
    # a failed creation leaves no key file behind
    assert "org 'nope' does not exist" in ctl.fails("user-create", "carol", "--org", "nope", "--key-out",
                                                    str(tmp_path / "carol.pem"))
    assert not (tmp_path / "carol.pem").exists()

    n1_key = tmp_path / "n1.pem"
    out = ctl.ok("client-create", "n1", "--org", "acme", "--key-out", str(n1_key))
    assert out.strip() == f"created client 'n1' in org 'acme', private key written to {n1_key} (0600)"
    ctl.ok("client-create", "n2", "--org", "acme", "--public-key", str(bob_pub))
    assert "already exists" in ctl.fails("client-create", "n2", "--org", "acme", "--public-key", str(bob_pub))
    assert ctl.ok("client-list", "--org", "acme").split() == ["n1", "n2"]

    assert ctl.ok("group-add", "acme", "pushy_job_writers", "alice").strip() == \
        "added user 'alice' to group 'pushy_job_writers' of org 'acme' (group created)"
    assert ctl.ok("group-add", "acme", "pushy_job_readers", "n1").strip() == \
        "added client 'n1' to group 'pushy_job_readers' of org 'acme' (group created)"
    assert ctl.ok("group-add", "acme", "pushy_job_readers", "group:admins").strip() == \
        "added group 'admins' to group 'pushy_job_readers' of org 'acme'"
    assert "is already in" in ctl.ok("group-add", "acme", "pushy_job_readers", "n1")
    assert "no user or client 'ghost'" in ctl.fails("group-add", "acme", "g", "ghost")
    assert ctl.ok("group-list", "acme").splitlines() == [
        "admins\tuser:alice", "pushy_job_readers\tclient:n1 group:admins", "pushy_job_writers\tuser:alice"]
    assert ctl.ok("group-remove", "acme", "pushy_job_readers", "n1").strip() == \
        "removed client 'n1' from group 'pushy_job_readers' of org 'acme'"
    assert "nothing changed" in ctl.ok("group-remove", "acme", "pushy_job_readers", "n1")

    assert "deleted client 'n2'" in ctl.ok("client-delete", "n2", "--org", "acme")
    assert "does not exist" in ctl.fails("client-delete", "n2", "--org", "acme")
    assert "deleted user 'alice'" in ctl.ok("user-delete", "alice")
    assert ctl.ok("user-list").splitlines() == ["bob\tacme"]
    assert ctl.ok("group-list", "acme", "admins").strip() == "admins"


def test_bulk_clients_are_fast(ctl, tmp_path):
    ctl.ok("org-create", "lab")
    pub = _pub_key_file(tmp_path / "shared.pub")
    t0 = time.monotonic()
    out = ctl.ok("client-create", "--org", "lab", "--count", "10000", "--prefix", "node", "--public-key", str(pub))
    elapsed = time.monotonic() - t0
    assert out.strip() == "created 10000 clients node1..node10000 in org 'lab'"
    assert elapsed < 20, elapsed  # a few seconds even on a loaded 2-core machine
    names = ctl.ok("client-list", "--org", "lab").split()
    assert len(names) == 10000 and "node10000" in names
    assert "nothing created" in ctl.fails("client-create", "--org", "lab", "--count", "2", "--prefix", "node",
                                          "--public-key", str(pub))
    assert "--count needs --prefix" in ctl.fails("client-create", "--org", "lab", "--count", "2",
                                                 "--public-key", str(pub))
    assert "not both" in ctl.fails("client-create", "x", "--org", "lab", "--count", "2", "--prefix", "p",
                                   "--public-key", str(pub))


def test_usage_and_settings_errors_are_one_line(tmp_path):
    c = Ctl(tmp_path, subprocess=False)
    r = c.run("no-such-verb")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "invalid choice" in r.stderr
    c.config.write_text(c.config.read_text() + "api_port 99999\n")
    assert c.fails("org-list") == f"push-jobs-server-ctl: error: {c.config}:4: api_port must be a port number " \
                                  "1-65535, got 99999"
    missing = tmp_path / "nope.rb"
    r = subprocess.run([CTL, "-c", str(missing), "org-list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == f"push-jobs-server-ctl: error: {missing}: no such settings file"
    # before init there is no database directory: say so
    (tmp_path / "x").mkdir()
    fresh = Ctl(tmp_path / "x", subprocess=False)
    assert "run push-jobs-server-ctl init" in fresh.fails("org-list")


def test_config_from_environment(tmp_path):
    c = Ctl(tmp_path)
    c.ok("init")
    env = dict(os.environ, PUSHJOBS_SERVER_CONFIG=str(c.config))
    r = subprocess.run([CTL, "org-create", "envorg"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "envorg" in c.ok("org-list")


def test_show_config_prints_values_and_sources(ctl):
    out = ctl.ok("show-config")
    assert out.splitlines()[0] == f"# settings file: {ctl.config}"
    line = next(ln for ln in out.splitlines() if ln.startswith("server_name "))
    assert '"127.0.0.1"' in line and f"# {ctl.config}:2" in line
    line = next(ln for ln in out.splitlines() if ln.startswith("api_port "))
    assert "10003" in line and line.endswith("# default")
    data = json.loads(ctl.ok("show-config", "--json"))
    assert data["settings"]["data_dir"] == {"value": str(ctl.data_dir), "source": f"{ctl.config}:1"}
    assert data["settings"]["database_url"]["value"].endswith("push-jobs-server.sqlite3")


def test_show_config_masks_the_database_password(tmp_path):
    c = Ctl(tmp_path, database_url="postgresql://pushy:s3cret@db.example:5432/pushy", subprocess=False)
    out = c.ok("show-config")
    assert "s3cret" not in out
    line = next(ln for ln in out.splitlines() if ln.startswith("database_url "))
    assert "postgresql://pushy:***@db.example:5432/pushy" in line
    js = c.ok("show-config", "--json")
    assert "s3cret" not in js
    assert json.loads(js)["settings"]["database_url"]["value"] == "postgresql://pushy:***@db.example:5432/pushy"


def test_group_add_refuses_self_and_cycles(tmp_path):
    c = Ctl(tmp_path, subprocess=False)
    c.ok("init")
    c.ok("org-create", "acme")
    err = c.fails("group-add", "acme", "admins", "group:admins")
    assert err == "push-jobs-server-ctl: error: group 'admins' cannot be a member of itself"
    c.ok("group-add", "acme", "inner", "group:admins")  # creates inner
    c.ok("group-add", "acme", "outer", "group:inner")  # creates outer
    err = c.fails("group-add", "acme", "admins", "group:outer")
    assert "cycle" in err
    assert "group:outer" not in c.ok("group-list", "acme", "admins")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_running_and_not_running(tmp_path):
    port = _free_port()
    c = Ctl(tmp_path, extra=f"api_port {port}\n", subprocess=False)
    err = c.fails("status")
    assert "push-jobs-server is not running" in err and f"127.0.0.1:{port}" in err

    body = {"status": "it's alive", "incarnation_id": "e0d96969-db1a-4df5-aabd-a029de131ca3",
            "node_fsm_count": 3, "job_processes": ["a" * 32]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = json.dumps(body).encode() if self.path == "/pushy/_status" else b"{}"
            self.send_response(200 if self.path == "/pushy/_status" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    # a stand-in answering like push-jobs-server's /pushy/_status (that server is tested on its own)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        out = c.ok("status")
        assert out.strip() == (f"push-jobs-server is running at http://127.0.0.1:{port}/pushy/_status: it's alive, "
                               "incarnation e0d96969-db1a-4df5-aabd-a029de131ca3, 3 nodes, 1 live jobs")
        assert json.loads(c.ok("status", "--json")) == body
    finally:
        srv.shutdown()
        srv.server_close()


def _make_jobs(settings: Settings) -> None:
    """Old and new, finished and live jobs, each with nodes, output and events."""
    store.open_database(settings)
    try:
        org = store.Org.create(name="jobs", guid="0" * 32)
        old = store.utcnow() - dt.timedelta(days=10)
        new = store.utcnow() - dt.timedelta(hours=1)
        for i, (status, when) in enumerate([
            ("complete", old), ("aborted", old), ("crashed", old), ("quorum_failed", old), ("timed_out", old),
            ("complete", new), ("running", old), ("voting", old), ("new", old),
        ]):
            job = store.Job.create(id=f"{i:032x}", org=org, command="chef-client", status=status, run_timeout=60,
                                   quorum=1, requestor="alice", created_at=when, updated_at=when)
            store.JobNode.create(job=job, node_name="n1", status="succeeded")
            store.JobOutput.create(job=job, node_name="n1", stdout=b"x", stderr=b"")
            store.JobEvent.create(job=job, seq=1, name="start", data="{}")
    finally:
        store.close_database()


def _job_statuses(settings: Settings) -> list[str]:
    store.open_database(settings)
    try:
        statuses = sorted(j.status for j in store.Job.select())
        counts = {m.__name__: m.select().count() for m in (store.JobNode, store.JobOutput, store.JobEvent)}
        assert set(counts.values()) == {len(statuses)}, counts  # no orphans
        return statuses
    finally:
        store.close_database()


def test_purge_jobs_keeps_live_and_recent_jobs(ctl):
    settings = ctl.settings()
    _make_jobs(settings)
    assert ctl.ok("purge-jobs", "--older-than", "3").strip() == "purged 5 finished jobs older than 3 days"
    assert _job_statuses(settings) == ["complete", "new", "running", "voting"]
    assert ctl.ok("purge-jobs", "--older-than", "0").strip() == "purged 1 finished job older than 0 days"
    assert _job_statuses(settings) == ["new", "running", "voting"]
    assert "needs --older-than" in ctl.fails("purge-jobs")
    assert "must not be negative" in ctl.fails("purge-jobs", "--older-than", "-1")


@pytest.mark.postgres
def test_main_verbs_on_postgresql(tmp_path, fresh_postgres_url):
    c = Ctl(tmp_path, database_url=fresh_postgres_url, subprocess=False)
    out = c.ok("init")
    assert "created database schema version" in out and "postgresql://" in out
    assert "up to date" in c.ok("init")
    c.ok("org-create", "acme")
    c.ok("user-create", "alice", "--org", "acme", "--admin", "--key-out", str(tmp_path / "alice.pem"))
    pub = _pub_key_file(tmp_path / "shared.pub")
    c.ok("client-create", "--org", "acme", "--count", "2000", "--prefix", "node", "--public-key", str(pub))
    assert len(c.ok("client-list", "--org", "acme").split()) == 2000
    assert "added client 'node7'" in c.ok("group-add", "acme", "pushy_job_readers", "node7")
    assert "added group 'admins'" in c.ok("group-add", "acme", "pushy_job_writers", "group:admins")
    assert c.ok("user-list", "--org", "acme").split() == ["alice", "admin"]
    _make_jobs(c.settings())
    assert "purged 5 finished jobs" in c.ok("purge-jobs", "--older-than", "3")
    assert "deleted user 'alice'" in c.ok("user-delete", "alice")


@pytest.mark.postgres
def test_unreachable_postgresql_is_one_line(tmp_path):
    port = _free_port()
    c = Ctl(tmp_path, database_url=f"postgresql://nobody:secret@127.0.0.1:{port}/nope", subprocess=False)
    err = c.fails("init")
    assert "cannot open database postgresql://nobody:***@127.0.0.1" in err
    assert "secret" not in err


def test_every_verb_as_a_subprocess(tmp_path):
    """The installed console script, once per verb form (the detailed cases above run in-process)."""
    port = _free_port()
    c = Ctl(tmp_path, extra=f"api_port {port}\n")
    assert "created database schema" in c.ok("init")
    assert "created org 'acme'" in c.ok("org-create", "acme")
    assert c.ok("org-list").startswith("acme\t")
    assert "created user 'alice'" in c.ok("user-create", "alice", "--org", "acme", "--admin", "--key-out",
                                          str(tmp_path / "alice.pem"))
    pub = _pub_key_file(tmp_path / "n.pub")
    assert "created user 'bob'" in c.ok("user-create", "bob", "--org", "acme", "--public-key", str(pub))
    assert c.ok("user-list").split() == ["alice", "acme", "bob", "acme"]
    assert "created client 'n1'" in c.ok("client-create", "n1", "--org", "acme", "--public-key", str(pub),
                                         config_first=False)
    assert "created client 'n2'" in c.ok("client-create", "n2", "--org", "acme", "--key-out", str(tmp_path / "n2.pem"))
    assert "created 3 clients" in c.ok("client-create", "--org", "acme", "--count", "3", "--prefix", "p",
                                       "--public-key", str(pub))
    assert c.ok("client-list", "--org", "acme").split() == ["n1", "n2", "p1", "p2", "p3"]
    assert "added client 'n1'" in c.ok("group-add", "acme", "pushy_job_writers", "n1")
    assert "removed client 'n1'" in c.ok("group-remove", "acme", "pushy_job_writers", "n1")
    assert "deleted client 'n2'" in c.ok("client-delete", "n2", "--org", "acme")
    assert "deleted user 'bob'" in c.ok("user-delete", "bob")
    assert "# settings file" in c.ok("show-config")
    assert "purged 0 finished jobs" in c.ok("purge-jobs", "--older-than", "30")
    assert "is not running" in c.fails("status")
    r = c.run("--help")
    assert r.returncode == 0 and "purge-jobs" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_root_hands_files_in_data_dir_to_the_service_user(tmp_path):
    """The package makes data_dir belong to the service user; root's ctl must not leave root-owned files there."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    c = Ctl(tmp_path, subprocess=False)
    c.data_dir.mkdir(mode=0o700)
    os.chown(c.data_dir, nobody.pw_uid, nobody.pw_gid)
    c.ok("init")
    c.ok("org-create", "acme")
    for name in os.listdir(c.data_dir):
        st = os.stat(c.data_dir / name)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
    assert stat.S_IMODE(os.stat(c.data_dir / "pushy_priv.pem").st_mode) == 0o600
