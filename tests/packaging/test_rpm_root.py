"""The .rpm packages' scriptlets, run for real by rpm.

There is no RPM-based distribution to install into here, but the host's
`rpm --root` installs into any root and runs the scriptlets chrooted there
with rpm's own arguments (%pre/%post 1 = install, 2 = upgrade; %preun/
%postun 0 = erase, 1 = upgrade). The Debian 12 root (debroot.py) has what
the scriptlets need (python3.11 with venv, useradd, runuser), so the rpm
argument handling is exercised end to end: user, offline virtualenvs, `ctl
init`, reinstall, erase keeping the data. Dependencies are not resolved
(`--nodeps`: the root's packages are in dpkg's database, not rpm's).
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging.conftest import require
from tests.packaging.debroot import DebianRoot

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def rpm_root(built_packages, bookworm_tarball) -> Iterator[DebianRoot]:
    require("rpm", "unshare")
    root = DebianRoot(bookworm_tarball, parent=Path("/var/tmp"))
    try:
        yield root
    finally:
        root.close()


def rpm(root: DebianRoot, *args: str, offline: bool = True) -> subprocess.CompletedProcess:
    cmd = (["unshare", "--net"] if offline else []) + ["rpm", "--root", str(root.path), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    # on Debian the scriptlets must not mistake rpm for dpkg
    assert "deb-systemd-helper" not in res.stderr, res.stderr
    return res


def test_rpm_install_reinstall_and_erase(rpm_root: DebianRoot, built_packages) -> None:
    root = rpm_root
    server = str(built_packages[("push-jobs-server", "rpm")])
    client = str(built_packages[("push-jobs-client", "rpm")])
    rpm(root, "--nodeps", "-i", server, client)
    assert rpm(root, "-q", "push-jobs-server", "push-jobs-client").stdout.count("x86_64") == 2

    uid, gid = root.ids("push-jobs")
    data = root.host_path("/var/lib/push-jobs-server")
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)
    keys = {p.name: p for p in data.iterdir() if p.suffix == ".pem"}
    assert keys and all(p.stat().st_uid == uid for p in keys.values())
    conf = root.host_path("/etc/push-jobs-server/push-jobs-server.rb")
    assert conf.stat().st_gid == gid and stat.S_IMODE(conf.stat().st_mode) == 0o640
    for cmd in ("push-jobs-server-ctl", "push-jobs-client", "pushjobs"):
        assert root.run(["test", "-x", f"/usr/bin/{cmd}"], check=False).returncode == 0, cmd
    assert root.host_path("/usr/lib/systemd/system/push-jobs-server.service").exists()
    root.run(["push-jobs-server-ctl", "org-create", "rpmorg"], user="push-jobs",
             env={"HOME": "/var/lib/push-jobs-server"})

    # reinstall: %post 2 (no second init), old %preun/%postun 1 (nothing removed)
    stamps = {n: p.stat().st_mtime_ns for n, p in keys.items()}
    rpm(root, "--nodeps", "-i", "--replacepkgs", server)
    assert root.run(["test", "-x", "/opt/push-jobs-server/bin/push-jobs-server"],
                    check=False).returncode == 0
    assert {n: p.stat().st_mtime_ns for n, p in keys.items()} == stamps
    orgs = root.run(["push-jobs-server-ctl", "org-list"], user="push-jobs",
                    env={"HOME": "/var/lib/push-jobs-server"}).stdout
    assert "rpmorg" in orgs

    # erase: %preun/%postun 0 -- the virtualenvs go, the data and the user stay
    rpm(root, "-e", "push-jobs-server", "push-jobs-client")
    assert not root.host_path("/opt/push-jobs-server").exists()
    assert not root.host_path("/opt/push-jobs-client").exists()
    assert {p.name for p in data.iterdir() if p.suffix == ".pem"} == set(keys)
    assert root.ids("push-jobs") == (uid, gid)
