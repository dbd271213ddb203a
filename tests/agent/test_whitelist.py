"""Whitelist formats, regex back-references and injection attempts."""
import re
import shlex
import subprocess

import pytest

from pushjobs.agent.whitelist import Whitelist, WhitelistError, default_whitelist


def run(resolved):
    """Execute a resolution for real and return stdout."""
    return subprocess.run(list(resolved.argv), capture_output=True, text=True, timeout=10).stdout


def test_default_whitelist_has_chef_client_only():
    wl = default_whitelist()
    r = wl.resolve("chef-client")
    assert r.argv == ("chef-client",) and not r.shell and r.lock is None
    assert wl.resolve("rm -rf /") is None


def test_exact_string_without_shell_syntax_runs_as_argv():
    wl = Whitelist.from_mapping({"apt-get-update": "apt-get update -q", "say": "echo 'a b'"})
    assert wl.resolve("apt-get-update").argv == ("apt-get", "update", "-q")
    assert wl.resolve("say").argv == ("echo", "a b")


def test_exact_string_with_shell_syntax_runs_through_sh():
    wl = Whitelist.from_mapping({"pipe": "echo hi | tr a-z A-Z"})
    r = wl.resolve("pipe")
    assert r.shell and r.argv == ("/bin/sh", "-c", "echo hi | tr a-z A-Z")
    assert run(r) == "HI\n"


def test_hash_value_with_command_line_and_lock():
    wl = Whitelist.from_mapping({
        "cc": {"command_line": "chef-client -o x", "lock": True},
        "cc2": {":command_line": "chef-client", ":lock": "/var/run/x.lock"},
        "cc3": {"command_line": "true", "lock": False},
    })
    assert wl.resolve("cc").lock is True and wl.resolve("cc").argv == ("chef-client", "-o", "x")
    assert wl.resolve("cc2").lock == "/var/run/x.lock"
    assert wl.resolve("cc3").lock is None


@pytest.mark.parametrize("bad", [
    {"x": ""}, {"x": 3}, {"x": {"lock": True}}, {"x": {"command_line": "a", "user": "b"}},
    {"/(unclosed/": "x"}, {"/^a(\\w+)$/": "echo \\2"}, {"/^a(?P<n>\\w+)$/": "echo \\k<m>"},
    {"/^a(\\w+)$/": "echo \\\\\\1"}, {"x": {"command_line": "a", "lock": 3}},
])
def test_bad_entries_are_rejected_at_load(bad):
    with pytest.raises(WhitelistError):
        Whitelist.from_mapping(bad)


def test_regex_key_yaml_spelling_with_back_reference():
    wl = Whitelist.from_mapping({r"/^restart-(\w+)$/": r"echo systemctl restart \1"})
    r = wl.resolve("restart-nginx")
    assert r.argv == ("echo", "systemctl", "restart", "nginx") and not r.shell
    assert wl.resolve("restart-") is None
    assert wl.resolve("stop-nginx") is None


def test_regex_flags_and_re_prefix_and_compiled_patterns():
    wl = Whitelist.from_mapping({"/^HELLO (\\w+)$/i": "echo hi \\1", "re:^bye$": "echo bye",
                                 re.compile(r"^x(\d)$"): "echo \\1\\0"})
    assert wl.resolve("hello bob").argv == ("echo", "hi", "bob")
    assert wl.resolve("bye").argv == ("echo", "bye")
    assert wl.resolve("x7").argv == ("echo", "7x7")


def test_exact_match_wins_over_regex_and_first_regex_wins():
    wl = Whitelist.from_mapping({"/^run (.+)$/": "echo first \\1", "/^run a$/": "echo second",
                                 "run b": "echo exact"})
    assert wl.resolve("run b").argv == ("echo", "exact")
    assert wl.resolve("run a").argv == ("echo", "first", "a")


def test_original_deliverance_example():
    wl = Whitelist.from_mapping({"chef-client": "chef-client",
                                 "/^deliverance (.+)$/": "echo deliverance eats at \\1"})
    assert run(wl.resolve("deliverance lunchtime")) == "deliverance eats at lunchtime\n"
    assert wl.resolve("rm -rf /") is None


@pytest.mark.parametrize("attack", [
    "restart-x; rm -rf /tmp/pwned", "restart-x && touch /tmp/pwned", "restart-$(touch /tmp/pwned)",
    "restart-`touch /tmp/pwned`", "restart-x | touch /tmp/pwned", "restart-'; touch /tmp/pwned; '",
    'restart-"; touch /tmp/pwned; "', "restart-x\ntouch /tmp/pwned", "restart-$HOME",
])
@pytest.mark.parametrize("template", [
    r"echo restarting \1",                   # argv, no shell
    r"echo restarting \1 | cat",             # shell, unquoted insertion
    r"echo 'restarting \1' | cat",           # shell, inside single quotes
    r'echo "restarting \1" | cat',           # shell, inside double quotes
])
def test_injection_attempts_never_reach_a_shell(tmp_path, attack, template):
    marker = tmp_path / "pwned"
    attack = attack.replace("/tmp/pwned", str(marker))
    wl = Whitelist.from_mapping({r"/^restart-(.+)$/m": template})
    r = wl.resolve(attack)
    assert r is not None
    out = run(r)
    assert not marker.exists()
    # the captured text arrives literally, as one piece
    assert out.strip().endswith(attack[len("restart-"):].strip()) or "\n" in attack


def test_unanchored_regex_leaving_user_text_outside_the_match_is_refused():
    wl = Whitelist.from_mapping({r"/restart (\w+)/": r"systemctl restart \1"})
    assert wl.resolve("restart nginx").argv == ("systemctl", "restart", "nginx")
    assert wl.resolve("restart nginx; rm -rf /") is None
    assert wl.resolve("x; restart nginx") is None
    assert "only partly" in wl.why_not("restart nginx; rm -rf /")
    assert "not in the whitelist" in wl.why_not("nope")


def test_gsub_replaces_every_match():
    wl = Whitelist.from_mapping({r"/(\w)-/": r"\1+"})
    r = wl.resolve("a-b-")
    assert r.command_line == "a+b+"


def test_back_reference_in_hash_value_keeps_lock():
    wl = Whitelist.from_mapping({r"/^cc (\w+)$/": {"command_line": r"chef-client -o \1",
                                                   "lock": "/tmp/l"}})
    r = wl.resolve("cc base")
    assert r.argv == ("chef-client", "-o", "base") and r.lock == "/tmp/l"


def test_capture_with_spaces_stays_one_argument():
    wl = Whitelist.from_mapping({r"/^say (.+)$/": r"echo \1"})
    r = wl.resolve("say a  b")
    assert r.argv == ("echo", "a  b")
    assert shlex.split(r.command_line) == ["echo", "a  b"]


def test_nul_and_empty_commands_are_refused():
    wl = Whitelist.from_mapping({r"/^(.*)$/": r"echo \1"})
    assert wl.resolve("") is None
    assert wl.resolve("a\x00b") is None
