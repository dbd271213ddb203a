"""packaging/build.py's pure parts: version, wheel checks, nfpm configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pushjobs_packaging_build",
                                               ROOT / "packaging" / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = build  # dataclasses look their module up there
_spec.loader.exec_module(build)


def test_version_comes_from_setup_cfg(tmp_path: Path) -> None:
    cfg = tmp_path / "setup.cfg"
    cfg.write_text("[metadata]\nname = x\nversion = 2.3.4\n")
    assert build.project_version(cfg) == "2.3.4"


@pytest.mark.parametrize("name, glibc", [
    ("flask-3.1.3-py3-none-any.whl", None),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", (2, 34)),
    ("cffi-2.1.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (2, 17)),
    ("x-1-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl", (2, 5)),
    ("y-1-cp311-cp311-manylinux_2_39_x86_64.whl", (2, 39)),
])
def test_wheel_glibc(name: str, glibc) -> None:
    assert build.wheel_glibc(name) == glibc


@pytest.mark.parametrize("name, ok", [
    ("flask-3.1.3-py3-none-any.whl", True),
    ("gevent-26.9.0-cp311-cp311-manylinux_2_28_x86_64.whl", True),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", True),
    ("gevent-26.9.0-cp312-cp312-manylinux_2_28_x86_64.whl", False),
    ("pyzmq-27-cp311-cp311-macosx_10_15_universal2.whl", False),
    ("pyzmq-27-cp311-cp311-manylinux_2_28_aarch64.whl", False),
])
def test_wheel_tags_for_cpython_311_x86_64(name: str, ok: bool) -> None:
    assert bool(build._OK_TAG.search(name)) is ok


def test_nfpm_config_of_the_server(tmp_path: Path) -> None:
    wheel = tmp_path / "pushjobs-0.1.0-py3-none-any.whl"
    cfg = build.nfpm_config(build.SERVER, "0.1.0", [wheel])
    assert cfg["name"] == "push-jobs-server" and cfg["version"] == "0.1.0"
    by_dst = {c["dst"]: c for c in cfg["contents"]}
    conf = by_dst["/etc/push-jobs-server/push-jobs-server.rb"]
    assert conf["type"] == "config|noreplace"
    assert by_dst["/lib/systemd/system/push-jobs-server.service"]["packager"] == "deb"
    assert by_dst["/usr/lib/systemd/system/push-jobs-server.service"]["packager"] == "rpm"
    for cmd in ("push-jobs-server", "push-jobs-server-ctl"):
        link = by_dst[f"/usr/bin/{cmd}"]
        assert link["type"] == "symlink" and link["src"] == f"/opt/push-jobs-server/bin/{cmd}"
    assert "/usr/share/push-jobs-server/wheels/pushjobs-0.1.0-py3-none-any.whl" in by_dst
    assert set(cfg["scripts"]) == {"preinstall", "postinstall", "preremove", "postremove"}
    for script in cfg["scripts"].values():
        assert Path(script).is_file()
    assert "python3-venv" in cfg["overrides"]["deb"]["depends"]
    assert cfg["overrides"]["rpm"]["depends"][0] == "python3.11"


def test_nfpm_config_of_the_client(tmp_path: Path) -> None:
    cfg = build.nfpm_config(build.CLIENT, "0.1.0", [])
    by_dst = {c["dst"]: c for c in cfg["contents"]}
    assert by_dst["/etc/push-jobs-client/push-jobs-client.yml"]["type"] == "config|noreplace"
    assert {"/usr/bin/push-jobs-client", "/usr/bin/pushjobs"} <= set(by_dst)
    assert "preinstall" not in cfg["scripts"]  # no user: the agent runs as root


def test_unknown_package_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build.main(["--packages", "nope"])
    assert exc.value.code == 2
    assert "unknown package" in capsys.readouterr().err
