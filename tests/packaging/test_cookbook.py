"""The push_jobs cookbook: its template renders agent settings that the
agent's own loader accepts, for representative attribute sets.

The template is rendered the way the config recipe does it (libraries/
helpers.rb + ERB with trim mode '-') by plain Debian `ruby`, with the
attributes passed as JSON -- so every key is a String, exactly like node
attributes (the original cookbook's hash whitelist entries broke on that).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

from pushjobs.agent.settings import AgentSettings, load_settings
from pushjobs.agent.whitelist import Whitelist
from tests.packaging.conftest import require

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
COOKBOOK = ROOT / "cookbook"
DRIVER = Path(__file__).with_name("render_cookbook_template.rb")

#: The attribute defaults of attributes/default.rb, as a node would carry them.
DEFAULTS: dict[str, Any] = {
    "whitelist": {"chef-client": "chef-client"},
    "file_dir": "/tmp/chef-push",
    "allow_unencrypted": False,
    "logging_level": "info",
    "log_location": None,
    "environment": None,
    "roles": None,
    "tags": None,
    "extra_settings": {},
    "chef": {
        "chef_server_url": None,
        "node_name": None,
        "client_key_path": "/etc/chef/client.pem",
        "verify_api_cert": True,
        "ssl_verify_mode": "verify_peer",
        "trusted_certs_path": None,
    },
}
#: What the converging chef-client would supply (Chef::Config, the node).
FALLBACK = {
    "chef_server_url": "https://push.example.com:10003/organizations/acme",
    "node_name": "web1.example.com",
    "environment": "_default",
    "roles": [],
    "tags": [],
}


def merged(**changes: Any) -> dict[str, Any]:
    attrs = json.loads(json.dumps(DEFAULTS))
    for key, value in changes.items():
        if key == "chef":
            attrs["chef"].update(value)
        else:
            attrs[key] = value
    return attrs


def render(attrs: dict[str, Any], tmp_path: Path, fallback: Optional[dict] = None,
           ) -> tuple[subprocess.CompletedProcess, Path, Path]:
    out = tmp_path / "push-jobs-client.yml"
    restart = tmp_path / "restart-settings.json"
    res = subprocess.run(
        ["ruby", str(DRIVER), str(COOKBOOK), json.dumps(FALLBACK if fallback is None else fallback),
         str(restart)],
        input=json.dumps(attrs), capture_output=True, text=True, timeout=60)
    out.write_text(res.stdout)
    return res, out, restart


def render_and_load(attrs: dict[str, Any], tmp_path: Path) -> tuple[AgentSettings, dict]:
    require("ruby")
    res, out, restart = render(attrs, tmp_path)
    assert res.returncode == 0, res.stderr
    settings = load_settings(str(out))
    Whitelist.from_mapping(settings.whitelist)  # the agent can use it
    return settings, json.loads(restart.read_text())


def test_defaults(tmp_path: Path) -> None:
    s, _ = render_and_load(merged(), tmp_path)
    assert s.chef_server_url == FALLBACK["chef_server_url"]
    assert s.org == "acme"
    assert s.node_name == "web1.example.com"
    assert s.client_key == "/etc/chef/client.pem"
    assert s.whitelist == {"chef-client": "chef-client"}
    assert s.file_dir == "/tmp/chef-push"
    assert s.allow_unencrypted is False
    assert s.verify_tls is True
    assert s.log_level == "info"
    assert s.log_location is None
    assert s.environment == "_default"


def test_simple_whitelist_and_explicit_identity(tmp_path: Path) -> None:
    attrs = merged(
        whitelist={"chef-client": "chef-client", "uptime": "uptime",
                   "yes": "true", "apt-update": "apt-get update -q"},
        chef={"chef_server_url": "http://10.0.0.5:10003/organizations/lab",
              "node_name": "node-1", "client_key_path": "/etc/push-jobs-client/node-1.pem"},
        logging_level="debug", log_location="/var/log/push-jobs-client.log",
        allow_unencrypted=True,
    )
    s, _ = render_and_load(attrs, tmp_path)
    assert s.org == "lab" and s.node_name == "node-1"
    assert s.client_key == "/etc/push-jobs-client/node-1.pem"
    # 'yes' must stay the string "yes", not become a YAML boolean
    assert s.whitelist == {"chef-client": "chef-client", "uptime": "uptime", "yes": "true",
                           "apt-update": "apt-get update -q"}
    assert s.log_level == "debug" and s.log_location == "/var/log/push-jobs-client.log"
    assert s.allow_unencrypted is True


def test_regex_keys(tmp_path: Path) -> None:
    attrs = merged(whitelist={
        "chef-client": "chef-client",
        "/^restart (\\w+)$/": "systemctl restart \\1",
        "/^echo (.*)$/i": "echo \\1 'quoted: \"x\"'",
    })
    s, _ = render_and_load(attrs, tmp_path)
    assert s.whitelist["/^restart (\\w+)$/"] == "systemctl restart \\1"
    wl = Whitelist.from_mapping(s.whitelist)
    resolved = wl.resolve("restart nginx")
    assert resolved is not None and "nginx" in resolved.command_line


def test_hash_entries_with_string_keys_and_lock(tmp_path: Path) -> None:
    """The original's hash entries needed Symbol keys; attributes have String keys."""
    attrs = merged(whitelist={
        "cc-locked": {"command_line": "chef-client", "lock": True},
        "backup": {"command_line": "/usr/local/bin/backup --full", "lock": "/run/backup.lock"},
        "plain": {"command_line": "uptime"},
    })
    s, _ = render_and_load(attrs, tmp_path)
    assert s.whitelist["cc-locked"] == {"command_line": "chef-client", "lock": True}
    assert s.whitelist["backup"] == {"command_line": "/usr/local/bin/backup --full",
                                     "lock": "/run/backup.lock"}
    wl = Whitelist.from_mapping(s.whitelist)
    r = wl.resolve("cc-locked")
    assert r is not None and r.command_line == "chef-client" and r.lock is True
    r = wl.resolve("backup")
    assert r is not None and r.lock == "/run/backup.lock"


def test_tags_environment_roles_and_tls(tmp_path: Path) -> None:
    attrs = merged(environment="production", roles=["web", "base"], tags=["blue", "canary"],
                   chef={"ssl_verify_mode": "verify_none",
                         "trusted_certs_path": "/etc/chef/trusted_certs"},
                   extra_settings={"http_timeout": 12})
    s, restart = render_and_load(attrs, tmp_path)
    assert s.environment == "production"
    assert s.roles == ["web", "base"] and s.tags == ["blue", "canary"]
    assert s.verify_tls is False
    assert s.ca_file == "/etc/chef/trusted_certs"
    assert s.http_timeout == 12.0
    assert restart["environment"] == "production"


def test_whitelist_change_does_not_touch_the_restart_settings(tmp_path: Path) -> None:
    """The config recipe restarts the agent only when the restart-settings
    state file changes; a whitelist-only change leaves it identical."""
    require("ruby")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    _, out_a, restart_a = render(merged(), tmp_path / "a")
    _, out_b, restart_b = render(merged(whitelist={"chef-client": "chef-client", "up": "uptime"}),
                                 tmp_path / "b")
    _, _, restart_c = render(merged(logging_level="debug"), tmp_path / "c")
    assert out_a.read_text() != out_b.read_text()
    assert restart_a.read_text() == restart_b.read_text()
    assert "whitelist" not in json.loads(restart_a.read_text())
    assert restart_a.read_text() != restart_c.read_text()


@pytest.mark.parametrize("whitelist, message", [
    ({"x": {"command": "oops"}}, "unknown keys"),
    ({"x": {"lock": True}}, "command_line"),
    ({"x": ""}, "expected a command line"),
    (["chef-client"], "must be a Hash"),
])
def test_bad_whitelists_fail_the_chef_run_clearly(tmp_path: Path, whitelist: Any,
                                                   message: str) -> None:
    require("ruby")
    res, _, _ = render(merged(whitelist=whitelist), tmp_path)
    assert res.returncode == 3
    assert message in res.stderr


def ruby_files() -> list[Path]:
    files = sorted(COOKBOOK.rglob("*.rb")) + sorted((ROOT / "vagrant").glob("Vagrantfile"))
    files += [ROOT / "config" / "push-jobs-server.rb"]
    files += sorted(Path(__file__).parent.glob("*.rb"))  # the test drivers
    return files


@pytest.mark.parametrize("path", ruby_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_ruby_syntax(path: Path) -> None:
    require("ruby")
    res = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


def test_template_compiles() -> None:
    require("erb", "ruby")
    src = subprocess.run(["erb", "-x", "-T", "-", str(COOKBOOK / "templates" / "default" /
                                                     "push-jobs-client.yml.erb")],
                         capture_output=True, text=True, check=True).stdout
    res = subprocess.run(["ruby", "-c"], input=src, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_attribute_is_documented_in_the_readme() -> None:
    readme = (COOKBOOK / "README.md").read_text()
    import re

    attrs = re.findall(r"default\['push_jobs'\]((?:\['[a-z_]+'\])+)",
                       (COOKBOOK / "attributes" / "default.rb").read_text())
    assert attrs
    for a in attrs:
        dotted = ".".join(re.findall(r"'([a-z_]+)'", a))
        assert dotted in readme, f"README does not document push_jobs.{dotted}"


# --- the recipes, evaluated by run_cookbook_recipes.rb (a resource recorder) ------

RECIPES = Path(__file__).with_name("run_cookbook_recipes.rb")
CHEF_CONFIG = {"chef_server_url": "http://10.0.0.5:10003/organizations/lab",
               "node_name": "node1", "file_cache_path": "/var/chef/cache"}


def run_recipe(recipe: str, normal: dict, platform_family: str = "debian",
               ) -> tuple[int, list[dict], str]:
    require("ruby")
    payload = {"normal": {"push_jobs": normal}, "platform_family": platform_family,
               "chef_config": CHEF_CONFIG, "node_name": "node1", "roles": ["web"],
               "tags": ["blue"], "chef_environment": "prod"}
    res = subprocess.run(["ruby", str(RECIPES), str(COOKBOOK), recipe], input=json.dumps(payload),
                         capture_output=True, text=True, timeout=60)
    resources = json.loads(res.stdout) if res.returncode == 0 else []
    return res.returncode, resources, res.stderr


def by_type(resources: list[dict], rtype: str) -> list[dict]:
    return [r for r in resources if r["type"] == rtype]


def test_default_recipe_resources_and_restart_rules() -> None:
    rc, resources, err = run_recipe("default", {"local_package_path": "/tmp/pjc.deb"})
    assert rc == 0, err
    types = [r["type"] for r in resources]
    assert types == ["package", "dpkg_package", "directory", "template", "file", "service"]
    assert by_type(resources, "package")[0]["name"] == ["python3", "python3-venv"]
    assert by_type(resources, "dpkg_package")[0]["properties"]["source"] == "/tmp/pjc.deb"
    template = by_type(resources, "template")[0]
    assert template["name"] == "/etc/push-jobs-client/push-jobs-client.yml"
    # the template never restarts the agent: whitelist changes are reloaded by it
    assert template["notifies"] == []
    settings = template["properties"]["variables"]["settings"]
    assert settings["chef_server_url"] == CHEF_CONFIG["chef_server_url"]
    assert settings["node_name"] == "node1"
    assert settings["environment"] == "prod" and settings["roles"] == ["web"]
    assert settings["tags"] == ["blue"]
    state = by_type(resources, "file")[0]
    assert "whitelist" not in json.loads(state["properties"]["content"])
    service = by_type(resources, "service")[0]
    assert state["notifies"] == [{"action": "restart", "target": f"service[{service['name']}]",
                                  "timing": "delayed"}]
    assert service["name"] == "push-jobs-client"
    assert service["properties"]["action"] == ["enable", "start"]


def test_install_from_url_and_from_the_repositories() -> None:
    rc, resources, err = run_recipe("install", {"package_url": "https://example.com/p/pjc_1.deb",
                                                "package_checksum": "ab" * 32})
    assert rc == 0, err
    remote = by_type(resources, "remote_file")[0]
    assert remote["name"] == "/var/chef/cache/pjc_1.deb"
    assert remote["properties"]["source"] == "https://example.com/p/pjc_1.deb"
    assert remote["properties"]["checksum"] == "ab" * 32
    assert by_type(resources, "dpkg_package")[0]["properties"]["source"] == remote["name"]

    rc, resources, err = run_recipe("install", {"package_version": "0.1.0-1"}, "rhel")
    assert rc == 0, err
    assert resources == [{"type": "package", "name": "push-jobs-client",
                          "properties": {"version": "0.1.0-1"}, "notifies": []}]


@pytest.mark.parametrize("normal, platform, message", [
    ({"whitelist": ["chef-client"]}, "debian", "must be a Hash"),
    ({}, "windows", "not supported"),
    ({"whitelist": {"x": {"cmd": "y"}}}, "debian", "unknown keys"),
])
def test_default_recipe_refuses_bad_input(normal: dict, platform: str, message: str) -> None:
    rc, _, err = run_recipe("default", normal, platform)
    assert rc == 3 and message in err, err
