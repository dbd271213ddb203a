"""The systemd units pass `systemd-analyze verify`.

verify insists that ExecStart/ExecReload binaries exist, so the units are
checked inside a temporary root (`--root=`): it holds a copy of the host's
unit directory (for targets such as multi-user.target), the units under
/etc/systemd/system, and stub executables at the paths the units name.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import require

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("push-jobs-server.service", "push-jobs-client.service")
HOST_UNIT_DIR = Path("/usr/lib/systemd/system")


def unit_options(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case sensitive
    parser.read(ROOT / "systemd" / name)
    return parser


def exec_paths(text: str) -> list[str]:
    paths = []
    for line in text.splitlines():
        if line.startswith(("ExecStart=", "ExecReload=", "ExecStop=")):
            paths.append(line.split("=", 1)[1].split()[0].lstrip("-@+!"))
    return paths


def make_root(tmp_path: Path, unit_texts: dict[str, str]) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree(HOST_UNIT_DIR, root / "usr/lib/systemd/system", symlinks=True)
    for name, text in unit_texts.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for exe in exec_paths(text):
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}",
         *[f"/etc/systemd/system/{n}" for n in names]],
        capture_output=True, text=True, timeout=60)


def test_units_verify(tmp_path: Path) -> None:
    require("systemd-analyze")
    texts = {n: (ROOT / "systemd" / n).read_text() for n in UNITS}
    res = verify(make_root(tmp_path, texts), list(UNITS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "push-jobs" not in res.stderr, res.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check has teeth: a missing binary fails it."""
    require("systemd-analyze")
    text = (ROOT / "systemd" / UNITS[0]).read_text()
    root = make_root(tmp_path, {UNITS[0]: text})
    (root / "opt/push-jobs-server/bin/push-jobs-server").unlink()
    res = verify(root, [UNITS[0]])
    assert res.returncode != 0
    assert "push-jobs-server" in res.stderr


def test_server_unit_settings() -> None:
    svc = unit_options("push-jobs-server.service")["Service"]
    assert svc["User"] == "push-jobs"
    assert svc["ExecStart"] == ("/opt/push-jobs-server/bin/push-jobs-server"
                                " -c /etc/push-jobs-server/push-jobs-server.rb")
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert set(svc["ReadWritePaths"].split()) == {"/var/lib/push-jobs-server",
                                                  "/var/log/push-jobs-server"}
    assert svc["PrivateTmp"] == "yes" and svc["ProtectHome"] == "yes"


def test_client_unit_settings() -> None:
    opts = unit_options("push-jobs-client.service")
    unit, svc = opts["Unit"], opts["Service"]
    assert "User" not in svc  # root: jobs may switch users
    assert "network-online.target" in unit["After"].split()
    assert "network-online.target" in unit["Wants"].split()
    assert unit["StartLimitIntervalSec"] == "0"  # never stop restarting
    assert svc["Restart"] == "always"
    assert int(svc["RestartSec"]) <= 10
    assert svc["ExecStart"] == ("/opt/push-jobs-client/bin/push-jobs-client"
                                " -c /etc/push-jobs-client/push-jobs-client.yml")
