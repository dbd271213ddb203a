"""The Vagrant lab, short of booting it: the Vagrantfile runs (against a
recorder), its provisioning scripts parse, and what they write -- the
server's settings line, each node's attributes -- is read correctly by the
server's loader, the cookbook and the agent's loader."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pushjobs.agent.settings import load_settings as load_agent_settings
from pushjobs.agent.whitelist import Whitelist
from pushjobs.server.settings import load_settings as load_server_settings
from tests.packaging.conftest import require
from tests.packaging.test_cookbook import merged, render

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("load_vagrantfile.rb")


@pytest.fixture(scope="module")
def lab() -> dict:
    require("ruby", "bash")
    res = subprocess.run(["ruby", str(DRIVER), str(ROOT / "vagrant" / "Vagrantfile")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def calls(lab: dict, path: str) -> list[tuple[list, dict]]:
    return [(args, kw) for p, args, kw in lab["calls"] if p == path]


def test_three_debian_12_machines(lab: dict) -> None:
    assert [args[0] for args, _ in calls(lab, "vm.define")] == ["server", "node1", "node2"]
    assert calls(lab, "vm.box=") == [(["debian/bookworm64"], {})]
    ips = [kw["ip"] for _, kw in calls(lab, "vm.network")]
    assert ips == [lab["server_ip"], *lab["nodes"].values()]
    provisions = calls(lab, "vm.provision")
    assert len(provisions) == 3 and all(args == ["shell"] for args, _ in provisions)


@pytest.mark.parametrize("script", ["server_script", "node_script"])
def test_provisioning_scripts_parse(lab: dict, script: str) -> None:
    res = subprocess.run(["bash", "-n"], input=lab[script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert lab[script].startswith("set -eu\n")


def test_server_settings_line_is_read_by_the_server(lab: dict, tmp_path: Path) -> None:
    conf = tmp_path / "push-jobs-server.rb"
    conf.write_text((ROOT / "config" / "push-jobs-server.rb").read_text())
    printf = next(line for line in lab["server_script"].splitlines()
                  if "server_name" in line and line.strip().startswith("printf"))
    cmd = printf.strip().replace('"$conf"', '"$1"')
    subprocess.run(["sh", "-c", cmd, "sh", str(conf)], check=True)
    assert load_server_settings(str(conf), env={}).server_name == lab["server_ip"]


def node_attributes(lab: dict, tmp_path: Path, node: str) -> dict:
    """Run the node script's here-document (only it) as the node would."""
    script = lab["node_script"]
    m = re.search(r"^cat > (\S+) <<JSON\n.*?^JSON$", script, re.M | re.S)
    assert m, "the node script writes its attributes with a JSON here-document"
    target = tmp_path / "lab.json"
    snippet = m.group(0).replace(m.group(1), str(target), 1)
    subprocess.run(["sh", "-c", f'node="$1"; deb="$2"\n{snippet}', "sh", node,
                    "/pushjobs/packaging/out/push-jobs-client_0.1.0-1_amd64.deb"], check=True)
    return json.loads(target.read_text())


def test_node_attributes_converge_into_settings_the_agent_reads(lab: dict,
                                                                tmp_path: Path) -> None:
    require("ruby")
    data = node_attributes(lab, tmp_path, "node1")
    assert data["run_list"] == ["recipe[push_jobs]"]
    attrs = data["push_jobs"]
    assert attrs["local_package_path"].endswith(".deb")
    merged_attrs = merged(**{k: v for k, v in attrs.items() if k != "local_package_path"})
    res, out, _ = render(merged_attrs, tmp_path, fallback={})
    assert res.returncode == 0, res.stderr
    s = load_agent_settings(str(out))
    assert s.org == lab["org"] and s.node_name == "node1"
    assert s.chef_server_url == f"http://{lab['server_ip']}:10003/organizations/{lab['org']}"
    assert s.client_key == "/etc/push-jobs-client/client.pem"
    assert s.tags == ["lab"]
    wl = Whitelist.from_mapping(s.whitelist)
    assert wl.resolve("hello").command_line == "echo hello from node1"
    sleep = wl.resolve("sleep 5")
    assert sleep is not None and sleep.argv[-1] == "5", sleep
    locked = wl.resolve("locked-uptime")
    assert locked.lock is True and locked.command_line == "uptime"
    assert wl.resolve("rm -rf /") is None
