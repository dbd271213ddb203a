"""The example settings files in config/ stay in step with the code.

config/push-jobs-server.rb documents every server setting as a commented
`# key default` line; these tests compare it with the Settings dataclass
through the server's own loader, so a setting added to the code without a
line here (or a default changed on one side only) fails the suite.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pushjobs.server import settings as server_settings

ROOT = Path(__file__).resolve().parents[2]
SERVER_RB = ROOT / "config" / "push-jobs-server.rb"
CLIENT_YML = ROOT / "config" / "push-jobs-client.yml"
#: Defaults computed at run time (the example shows a sample value instead).
DYNAMIC = {"server_name"}

_LINE = re.compile(r"^# ([a-z_][a-z0-9_]*) (.+)$")


def documented_lines() -> dict[str, list[str]]:
    """setting name -> the commented `# name value` lines that set it."""
    names = set(server_settings.setting_names())
    found: dict[str, list[str]] = {}
    for line in SERVER_RB.read_text().splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in names:
            found.setdefault(m.group(1), []).append(line[2:])
    return found


def test_every_server_setting_is_documented_once() -> None:
    found = documented_lines()
    names = server_settings.setting_names()
    missing = [n for n in names if n not in found]
    assert not missing, f"add `# NAME DEFAULT` lines to {SERVER_RB.name} for: {missing}"
    doubled = {n: v for n, v in found.items() if len(v) > 1}
    assert not doubled, doubled


def test_documented_values_are_the_defaults(tmp_path: Path) -> None:
    """Uncomment every documented line and load it with the server's loader:
    each value must equal the dataclass default."""
    lines = [line for name, ls in documented_lines().items() if name not in DYNAMIC for line in ls]
    cfg = tmp_path / "push-jobs-server.rb"
    cfg.write_text("\n".join(lines) + "\n")
    loaded = server_settings.load_settings(str(cfg), env={})
    defaults = server_settings.Settings()
    for name in server_settings.setting_names():
        if name in DYNAMIC:
            continue
        assert getattr(loaded, name) == getattr(defaults, name), (
            f"{SERVER_RB.name} documents {name} = {getattr(loaded, name)!r}, "
            f"the code's default is {getattr(defaults, name)!r}")
        assert loaded.source_of(name) != "default", f"{name} was not read from the file"


def test_shipped_server_file_loads_as_defaults() -> None:
    loaded = server_settings.load_settings(str(SERVER_RB), env={})
    defaults = server_settings.Settings()
    for f in dataclasses.fields(server_settings.Settings):
        if f.metadata.get("internal"):
            continue
        assert getattr(loaded, f.name) == getattr(defaults, f.name), f.name


def test_example_client_settings_load_with_the_agent_loader() -> None:
    agent_settings = pytest.importorskip("pushjobs.agent.settings")
    s = agent_settings.load_settings(str(CLIENT_YML))
    assert s.org == "example"
    assert s.whitelist["chef-client"] == "chef-client"
    assert s.whitelist["cc-locked"] == {"command_line": "chef-client", "lock": True}
    assert any(k.startswith("/") for k in s.whitelist), "the example shows a regex key"
    from pushjobs.agent.whitelist import Whitelist

    wl = Whitelist.from_mapping(s.whitelist)
    assert wl is not None
