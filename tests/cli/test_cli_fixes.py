"""Regression tests for operator-reported CLI bugs (CA file, error reasons, URL scheme, --version, progress words)."""

from __future__ import annotations

import datetime
import http.server
import os
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from pushjobs import __version__
from pushjobs.cli.client import _reason
from pushjobs.cli.main import main
from pushjobs.cli.verbs import Output, Progress, status_words


def _run(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`main` in-process (fast); the result shaped like a subprocess's."""
    for k in list(os.environ):
        if k.startswith("PUSHJOBS_") or k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(home))
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    rc = main(args)
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def _one_error_line(cp: subprocess.CompletedProcess) -> str:
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("ERROR: ") and "Traceback" not in cp.stderr
    return lines[0]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pushjobs.protocol.keys import generate_rsa_key, write_private_key

    p = tmp_path_factory.mktemp("key") / "u.pem"
    write_private_key(p, generate_rsa_key())
    return p


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


class _Refuser(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:  # keep test output clean
        pass


def _serve(server: http.server.HTTPServer) -> Iterator[int]:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_port() -> Iterator[int]:
    yield from _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser))


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[int]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(k, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    yield from _serve(srv)


# --- 1. missing CA file ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_missing_ca_file_is_one_line_exit_2(how: str, key: Path, home: Path, plain_port: int,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--server-url", f"https://127.0.0.1:{plain_port}/organizations/o", "--user", "u", "--key", str(key)]
    env: dict[str, str] = {}
    missing = home / "nope.pem"
    if how == "flag":
        args = base + ["--ca-file", str(missing), "job", "list"]
    elif how == "env":
        args, env = base + ["job", "list"], {"PUSHJOBS_CA_FILE": str(missing)}
    else:
        (home / ".pushjobs").mkdir()
        (home / ".pushjobs" / "config.yml").write_text(f"ca_file: {missing}\n")
        args = base + ["job", "list"]
    cp = _run(args, monkeypatch, capsys, home, env)
    assert cp.returncode == 2, cp.stderr
    line = _one_error_line(cp)
    assert "CA file" in line and "nope.pem" in line and "not found" in line


# --- 2. connection refused reason ----------------------------------------------------------


@pytest.mark.parametrize("text", [
    "HTTPConnectionPool(host='127.0.0.1', port=45433): Max retries exceeded with url: /x (Caused by "
    "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=45433): Failed to establish a new connection: "
    "[Errno 111] Connection refused\"))",
    "HTTPConnectionPool(host='127.0.0.1', port=45433): Max retries exceeded with url: /x (Caused by "
    "NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))",
])
def test_reason_has_no_stray_quotes(text: str) -> None:
    assert _reason(Exception(text)) == "Connection refused"


def test_reason_dns_failure() -> None:
    text = ("HTTPSConnectionPool(host='nohost', port=443): Max retries exceeded (Caused by NameResolutionError("
            "\"<urllib3.connection.HTTPSConnection object at 0x7f>: Failed to resolve 'nohost' "
            "([Errno -2] Name or service not known)\"))")
    assert _reason(Exception(text)) == "Name or service not known"


# --- 3. wrong scheme ----------------------------------------------------------------------


def test_https_url_against_plain_http_server(key: Path, home: Path, plain_port: int,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cp = _run(["--server-url", f"https://127.0.0.1:{plain_port}/organizations/o", "--user", "u",
               "--key", str(key), "job", "list"], monkeypatch, capsys, home)
    assert cp.returncode == 3
    line = _one_error_line(cp)
    assert "http:// vs https://" in line and "does not speak HTTPS" in line
    assert "--ca-file" not in line and "_ssl.c" not in line


def test_http_url_against_https_server(key: Path, home: Path, tls_port: int,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cp = _run(["--server-url", f"http://127.0.0.1:{tls_port}/organizations/o", "--user", "u",
               "--key", str(key), "job", "list"], monkeypatch, capsys, home)
    assert cp.returncode == 3
    line = _one_error_line(cp)
    assert "http:// vs https://" in line and "expect HTTPS" in line
    assert "ConnectionResetError" not in line and "(104" not in line


# --- 4. --version ---------------------------------------------------------------------------


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path) -> None:
    with pytest.raises(SystemExit) as ei:
        _run(["--version"], monkeypatch, capsys, home)
    assert ei.value.code == 0
    assert capsys.readouterr().out == f"pushjobs {__version__}\n"


# --- 6. progress words ------------------------------------------------------------------------


@pytest.mark.parametrize("status, words", [("quorum_failed", "Quorum failed"), ("timed_out", "Timed out"),
                                           ("crashed", "Crashed"), ("aborted", "Aborted"),
                                           ("complete", "Complete")])
def test_status_words(status: str, words: str) -> None:
    assert status_words(status) == words


class _Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_progress_lines_use_human_words_and_singular_node() -> None:
    from pushjobs.cli.sse import Event

    stream = _Stream()
    p = Progress(Output("text", stdout=stream, stderr=stream), "j", tty=False)  # type: ignore[arg-type]
    p.on_event(Event("start", "", {"node_count": 1, "quorum": 1}))
    p.on_event(Event("job_complete", "", {"status": "quorum_failed"}))
    assert stream.text.splitlines() == ["Voting: 1 node, quorum 1.", "Quorum failed."]
    stream.text = ""
    p2 = Progress(Output("text", stdout=stream, stderr=stream), "j", tty=False)  # type: ignore[arg-type]
    p2.on_job({"status": "timed_out", "nodes": {"timed_out": ["a"]}})
    assert stream.text.splitlines() == ["Timed out."]
