"""The four packages: what they contain and what their scripts do.

Contents and metadata are read with dpkg-deb and rpm. What installing the .deb
packages does is tested in test_debian_root.py.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]  # the first test builds

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "packaging" / "scripts"


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["metadata"]["version"].strip()


def dependency_names() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    names = []
    for line in cfg["options"]["install_requires"].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("-", "_"))
    return names


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_maintainer_scripts_are_posix_sh(script: Path) -> None:
    res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert script.read_text().startswith("#!/bin/sh\n")
    assert "set -e" in script.read_text()


@pytest.mark.parametrize("name", ["push-jobs-server", "push-jobs-client"])
def test_deb_metadata_and_contents(built_packages, name: str) -> None:
    deb = built_packages[(name, "deb")]
    info = sh("dpkg-deb", "-I", str(deb))
    assert f"Package: {name}" in info
    assert f"Version: {version()}-1" in info
    depends = re.search(r"^ Depends: (.*)$", info, re.M).group(1)
    assert {d.strip() for d in depends.split(",")} == {
        "python3 (>= 3.11)", "python3 (<< 3.12)", "python3-venv", "libc6", "procps"}
    conf = "/etc/push-jobs-server/push-jobs-server.rb" if name == "push-jobs-server" \
        else "/etc/push-jobs-client/push-jobs-client.yml"
    assert sh("dpkg-deb", "-I", str(deb), "conffiles").split() == [conf]
    postinst = sh("dpkg-deb", "-I", str(deb), "postinst")
    assert "--no-index" in postinst and "venv --without-pip" in postinst
    scripts = {"postinst", "prerm", "postrm"} | ({"preinst"} if name == "push-jobs-server" else set())
    for s in scripts:
        assert f" {s} " in info or f" {s}\n" in info, (s, info)

    listing = sh("dpkg-deb", "-c", str(deb))
    files = {line.split()[5].lstrip("."): line for line in listing.splitlines()}
    unit = name + ".service"
    assert f"/lib/systemd/system/{unit}" in files
    assert f".{conf}" in listing
    cmds = ("push-jobs-server", "push-jobs-server-ctl") if name == "push-jobs-server" \
        else ("push-jobs-client", "pushjobs")
    for cmd in cmds:
        assert re.search(rf"\./usr/bin/{cmd} -> /opt/{name}/bin/{cmd}$", listing, re.M), cmd
    wheels = [p for p in files if p.startswith(f"/usr/share/{name}/wheels/")]
    names = {Path(w).name.split("-")[0].lower() for w in wheels}
    assert "pushjobs" in names
    missing = [d for d in dependency_names() if d not in names]
    assert not missing, f"wheels missing from {deb.name}: {missing}"
    doc = f"/usr/share/doc/{name}"
    assert {f"{doc}/copyright", f"{doc}/changelog.Debian.gz"} <= set(files)
    # nothing is shipped into the private virtualenv: postinst builds it
    assert not any(p.startswith(f"/opt/{name}/") for p in files)


@pytest.mark.parametrize("name", ["push-jobs-server", "push-jobs-client"])
def test_rpm_metadata_contents_and_scripts(built_packages, name: str) -> None:
    rpm = str(built_packages[(name, "rpm")])
    assert sh("rpm", "-qp", "--qf", "%{NAME} %{VERSION}", rpm) == f"{name} {version()}"
    files = sh("rpm", "-qlp", rpm).split()
    assert f"/usr/lib/systemd/system/{name}.service" in files
    assert f"/usr/share/{name}/wheels/pushjobs-{version()}-py3-none-any.whl" in files
    config = sh("rpm", "-qpc", rpm).split()
    assert config == [f"/etc/{name}/{name}" + (".rb" if name == "push-jobs-server" else ".yml")]
    requires = sh("rpm", "-qp", "--requires", rpm)
    assert "python3.11" in requires
    scripts = sh("rpm", "-qp", "--scripts", rpm)
    assert "postinstall scriptlet" in scripts and "preuninstall scriptlet" in scripts
    assert "--no-index" in scripts and "venv --without-pip" in scripts
    if name == "push-jobs-server":
        assert "useradd --system" in scripts
        assert "push-jobs-server-ctl\" init" in scripts
        assert "rm -rf /var/lib/$NAME" in scripts  # purge only (deb); rpm erase keeps data
    else:
        assert "useradd" not in scripts
