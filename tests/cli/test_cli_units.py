"""CLI pieces that need no server: text layout, SSE parsing, config resolution, option checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pushjobs.cli.config import ConfigError, resolve
from pushjobs.cli.output import normalize_format, render, text_format
from pushjobs.cli.sse import SSEParser, parse_stream
from pushjobs.cli.verbs import job_exit_code, parse_quorum
from pushjobs.cli.client import CliError

PUSHJOBS = str(Path(sys.executable).parent / "pushjobs")

JOB = {
    "id": "26e98ba162fa7ba6fb2793125553c7ae",
    "command": "chef-client",
    "status": "complete",
    "run_timeout": 3600,
    "created_at": "Tue, 04 Sep 2018 23:01:02 GMT",
    "updated_at": "Tue, 04 Sep 2018 23:01:30 GMT",
    "capture_output": True,
    "nodes": {"succeeded": ["web01", "web02"]},
}


def test_text_layout_is_knifes() -> None:
    assert text_format(JOB) == (
        "capture_output: true\n"
        "command:        chef-client\n"
        "created_at:     Tue, 04 Sep 2018 23:01:02 GMT\n"
        "id:             26e98ba162fa7ba6fb2793125553c7ae\n"
        "nodes:\n"
        "  succeeded:\n"
        "    web01\n"
        "    web02\n"
        "run_timeout:    3600\n"
        "status:         complete\n"
        "updated_at:     Tue, 04 Sep 2018 23:01:30 GMT\n"
    )


def test_text_single_element_array_collapses_and_list_items_are_separated() -> None:
    assert text_format({"nodes": {"failed": ["db01"]}}) == "nodes:\n  failed: db01\n"
    assert text_format([{"a": 1}, {"a": 2}]) == "a: 1\n\na: 2\n"
    assert text_format({"env": {}, "x": []}) == "env:\nx:\n"


def test_json_and_yaml() -> None:
    import json

    assert json.loads(render(JOB, "json")) == JOB
    out = render(JOB, "yaml")
    assert out.startswith("---\n") and yaml.safe_load(out) == JOB


@pytest.mark.parametrize("given, fmt", [("json", "json"), ("j", "json"), ("YAML", "yaml"), ("summary", "text")])
def test_format_names(given: str, fmt: str) -> None:
    assert normalize_format(given) == fmt


def test_bad_format_name() -> None:
    with pytest.raises(ValueError):
        normalize_format("xml")


def test_sse_parser_handles_split_chunks_comments_and_unterminated_last_event() -> None:
    wire = (
        'event: start\nid: job-1\ndata: {"timestamp":"t","command":"x","node_count":2,"quorum":2}\n\n'
        ":keepalive\n"
        'event: run_start\nid: job-2\ndata: {"node":"web01"}\n\n'
        'event: job_complete\nid: job-3\ndata: {"status":"complete"}'
    )
    chunks = [wire[i:i + 7] for i in range(0, len(wire), 7)]
    events = list(parse_stream(chunks))
    assert [e.name for e in events] == ["start", "run_start", "job_complete"]
    assert events[1].data == {"node": "web01"} and events[2].id == "job-3"
    p = SSEParser()
    assert p.feed("event: x\r\ndata: {}\r\n\r\n")[0].name == "x"


@pytest.mark.parametrize("q, n, expected", [("100%", 3, 3), ("50%", 3, 2), ("1%", 10, 1), ("0%", 3, 0),
                                            ("2", 5, 2), ("90%", 10, 9)])
def test_quorum(q: str, n: int, expected: int) -> None:
    assert parse_quorum(q, n) == expected


@pytest.mark.parametrize("q", ["abc", "50 %", "-1", "1.5", "101%", ""])
def test_bad_quorum(q: str) -> None:
    with pytest.raises(CliError) as ei:
        parse_quorum(q, 3)
    assert ei.value.exit_code == 2


@pytest.mark.parametrize(
    "job, code",
    [
        ({"status": "complete", "nodes": {"succeeded": ["a"]}}, 0),
        ({"status": "complete", "nodes": {"succeeded": ["a"], "nacked": ["b"]}}, 1),
        ({"status": "complete", "nodes": {"succeeded": ["a"], "unavailable": ["b"]}}, 1),
        ({"status": "complete", "nodes": {"failed": ["a"]}}, 1),
        ({"status": "quorum_failed", "nodes": {"was_ready": ["a"]}}, 1),
        ({"status": "timed_out", "nodes": {"timed_out": ["a"]}}, 1),
    ],
)
def test_exit_code_rule(job: dict, code: int) -> None:
    assert job_exit_code(job) == code


# --- configuration ------------------------------------------------------------


def _home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(exist_ok=True)
    return h


def test_config_precedence(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / ".pushjobs").mkdir()
    (home / ".pushjobs" / "config.yml").write_text(
        "server_url: https://yml:10003/organizations/yml\nuser: ymluser\nkey: keys/yml.pem\n")
    (home / ".chef").mkdir()
    (home / ".chef" / "knife.rb").write_text(
        'current_dir = File.dirname(__FILE__)\n'
        'node_name "knifeuser"\n'
        'client_key "#{current_dir}/knife.pem"\n'
        'chef_server_url "https://chef.example/organizations/knifeorg"\n'
        'ssl_ca_file File.join(current_dir, "ca.pem")\n'
        'ssl_verify_mode :verify_none\n'
        'knife[:editor] = "vim"\n'
        'cookbook_path [Dir.pwd]\n')
    env = {"HOME": str(home)}
    c = resolve({}, env)
    assert c.server_url == "https://yml:10003/organizations/yml"
    assert c.user == "ymluser"
    assert c.key == str(home / ".pushjobs" / "keys" / "yml.pem")
    assert c.ca_file == str(home / ".chef" / "ca.pem")
    assert c.insecure is True
    assert c.org == "yml" and c.base_url == "https://yml:10003" and c.org_path == "/organizations/yml"

    env.update(PUSHJOBS_USER="envuser", PUSHJOBS_SERVER_URL="http://env:1/organizations/envorg")
    c = resolve({"user": "flaguser"}, env)
    assert c.user == "flaguser" and c.org == "envorg" and c.sources["user"] == "--user"
    assert c.sources["server_url"] == "PUSHJOBS_SERVER_URL"

    (home / ".pushjobs" / "config.yml").unlink()
    c = resolve({}, {"HOME": str(home)})
    assert (c.user, c.key) == ("knifeuser", str(home / ".chef" / "knife.pem"))
    assert c.server_url == "https://chef.example/organizations/knifeorg"


def test_config_rb_when_no_knife_rb(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / ".chef").mkdir()
    (home / ".chef" / "config.rb").write_text(
        "node_name 'cfg'\nclient_key '/k.pem'\nchef_server_url 'http://h/organizations/o'\n")
    c = resolve({}, {"HOME": str(home)})
    assert (c.user, c.key, c.org, c.insecure) == ("cfg", "/k.pem", "o", False)


def test_explicit_config_file_replaces_the_home_files(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / ".pushjobs").mkdir()
    (home / ".pushjobs" / "config.yml").write_text("server_url: http://h/organizations/home\nuser: u\nkey: /k\n")
    other = tmp_path / "team.rb"
    other.write_text("node_name 'team'\nclient_key 'team.pem'\nchef_server_url 'http://t/organizations/team'\n")
    c = resolve({"config": str(other)}, {"HOME": str(home)})
    assert (c.user, c.org, c.key) == ("team", "team", str(tmp_path / "team.pem"))
    y = tmp_path / "ci.yaml"
    y.write_text("server_url: http://c/organizations/ci\nuser: ci\nkey: ci.pem\ninsecure: true\n")
    c = resolve({}, {"HOME": str(home), "PUSHJOBS_CONFIG": str(y)})
    assert (c.user, c.org, c.insecure) == ("ci", "ci", True)
    with pytest.raises(ConfigError, match="not found"):
        resolve({"config": str(tmp_path / "nope.yml")}, {"HOME": str(home)})
    y.write_text("server_url: http://c/organizations/ci\nusr: typo\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({"config": str(y)}, {"HOME": str(home)})


@pytest.mark.parametrize(
    "flags, message",
    [
        ({}, "missing server_url"),
        ({"server_url": "ftp://x/organizations/o", "user": "u", "key": "k"}, "invalid server URL"),
        ({"server_url": "https://x:10003", "user": "u", "key": "k"}, "does not name an organization"),
    ],
)
def test_config_errors(tmp_path: Path, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        resolve(flags, {"HOME": str(_home(tmp_path))})
    assert message in str(ei.value)


# --- the command line without a server -------------------------------------------


def run_cli(*args: str, env: dict | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
    if home is not None:
        e["HOME"] = str(home)
    e.update(env or {})
    return subprocess.run([PUSHJOBS, *args], capture_output=True, text=True, env=e, timeout=30)


def _one_error_line(cp: subprocess.CompletedProcess) -> str:
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("ERROR: ")
    assert "Traceback" not in cp.stderr and "usage:" not in cp.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "required"),
        (["job"], "required"),
        (["job", "frobnicate"], "invalid choice"),
        (["job", "start"], "COMMAND"),
        (["job", "start", "x", "n1", "--timeout", "soon"], "--timeout"),
        (["job", "start", "x", "n1", "--timeout", "-5"], "--timeout"),
        (["job", "start", "x", "n1", "-q", "lots"], "invalid quorum"),
        (["job", "start", "x", "n1", "--with-env", "{bad"], "--with-env"),
        (["job", "start", "x", "n1", "--with-env", "[1]"], "--with-env"),
        (["job", "start", "x", "n1", "--with-env", '{"A":"1","A":"2"}'], "duplicate"),
        (["job", "start", "x", "n1", "--file", "/nonexistent/file"], "--file"),
        (["job", "start", "x"], "No nodes to run job on"),
        (["job", "output", "id", "node", "--channel", "stdin"], "--channel"),
        (["-F", "xml", "job", "list"], "invalid format"),
        (["job", "list", "--format", "xml"], "invalid format"),
        (["job", "status"], "ID"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same `main`) to keep the suite fast; the subprocess path is tested below."""
    from pushjobs.cli.main import main

    for k in list(os.environ):
        if k.startswith("PUSHJOBS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(_home(tmp_path)))
    rc = main(args)
    captured = capsys.readouterr()
    cp = subprocess.CompletedProcess(args, rc, captured.out, captured.err)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    assert needle in _one_error_line(cp)


def test_usage_error_in_a_subprocess(tmp_path: Path) -> None:
    cp = run_cli("job", "start", "x", "n1", "-q", "lots", home=_home(tmp_path))
    assert cp.returncode == 2
    assert "invalid quorum" in _one_error_line(cp)


def test_missing_configuration(tmp_path: Path) -> None:
    cp = run_cli("job", "list", home=_home(tmp_path))
    assert cp.returncode == 2
    assert "missing server_url" in _one_error_line(cp)


def test_unreadable_key(tmp_path: Path) -> None:
    cp = run_cli("--server-url", "http://127.0.0.1:9/organizations/o", "--user", "u",
                 "--key", str(tmp_path / "nokey.pem"), "job", "list", home=_home(tmp_path))
    assert cp.returncode == 2
    assert "cannot read key file" in _one_error_line(cp)


def test_unreachable_server(tmp_path: Path) -> None:
    from pushjobs.protocol.keys import generate_rsa_key, write_private_key
    from tests.helpers.server import free_port

    key = tmp_path / "u.pem"
    write_private_key(key, generate_rsa_key())
    cp = run_cli("--server-url", f"http://127.0.0.1:{free_port()}/organizations/o", "--user", "u",
                 "--key", str(key), "job", "list", home=_home(tmp_path))
    assert cp.returncode == 3
    line = _one_error_line(cp)
    assert "cannot reach server" in line and "refused" in line


def test_help_works() -> None:
    cp = run_cli("job", "start", "--help")
    assert cp.returncode == 0 and "--quorum" in cp.stdout and "--search" in cp.stdout


# --- progress display ------------------------------------------------------------------


class _Stream:
    def __init__(self, tty: bool):
        self.text = ""
        self.tty = tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def _feed(tty: bool) -> _Stream:
    from pushjobs.cli.sse import Event
    from pushjobs.cli.verbs import Output, Progress

    stream = _Stream(tty)
    p = Progress(Output("text", stdout=stream, stderr=stream), "j" * 32, tty=tty)  # type: ignore[arg-type]
    for name, data in [("start", {"node_count": 2, "quorum": 2}),
                       ("quorum_vote", {"node": "a", "status": "success"}),
                       ("quorum_vote", {"node": "b", "status": "success"}),
                       ("quorum_succeeded", {}),
                       ("run_start", {"node": "a"}), ("run_start", {"node": "b"}),
                       ("run_complete", {"node": "a", "status": "success"}),
                       ("run_complete", {"node": "b", "status": "crashed"}),
                       ("job_complete", {"status": "complete"})]:
        p.on_event(Event(name, "", data))
    p.finish({"status": "complete", "nodes": {"succeeded": ["a"], "crashed": ["b"]}})
    return stream


def test_progress_plain_lines() -> None:
    assert _feed(False).text.splitlines() == [
        "Voting: 2 nodes, quorum 2.", "  a: vote success", "  b: vote success", "Quorum succeeded: running.",
        "  a: running", "  b: running", "  a: succeeded", "  b: crashed", "Complete."]


def test_progress_terminal_rewrites_one_line() -> None:
    text = _feed(True).text
    assert text.count("\n") == 1 and text.count("\r\x1b[K") == 10
    assert "running: 2 nodes, 0 ready, 2 running, 0 succeeded, 0 failed" in text
    assert text.endswith("complete: 2 nodes, 0 ready, 0 running, 1 succeeded, 1 failed\n")


def test_progress_from_polled_job_uses_knife_state_lines() -> None:
    from pushjobs.cli.verbs import Output, Progress

    stream = _Stream(False)
    p = Progress(Output("text", stdout=stream, stderr=stream), "j", tty=False)  # type: ignore[arg-type]
    for job in ({"status": "voting", "nodes": {"new": ["a", "b"]}},
                {"status": "running", "nodes": {"running": ["a"], "succeeded": ["b"]}},
                {"status": "running", "nodes": {"running": ["a"], "succeeded": ["b"]}},
                {"status": "complete", "nodes": {"succeeded": ["a", "b"]}}):
        p.on_job(job)
    assert stream.text.splitlines() == ["Voting.", "Running (1/2 in progress) ...", "Complete."]
