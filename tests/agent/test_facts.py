"""Node facts in Chef's node shape."""
import os

from pushjobs.agent.facts import build_node, platform_facts


def test_node_shape():
    node = build_node("web1", roles=["web", "base"], environment="prod", tags=["blue"],
                      os_release={"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_ID": "22.04"})
    assert node["name"] == "web1" and node["chef_type"] == "node"
    assert node["chef_environment"] == "prod"
    assert node["run_list"] == ["role[web]", "role[base]"]
    assert node["normal"] == {"tags": ["blue"]}
    auto = node["automatic"]
    assert auto["platform"] == "ubuntu" and auto["platform_family"] == "debian"
    assert auto["platform_version"] == "22.04" and auto["roles"] == ["web", "base"]
    assert auto["os"] == "linux" and auto["kernel"] == {"name": "Linux", "release": os.uname().release}
    assert auto["hostname"] and auto["fqdn"] and auto["ipaddress"].count(".") == 3


def test_platform_family_mapping():
    assert platform_facts({"ID": "rocky", "VERSION_ID": "9.3"}) == {
        "platform": "rocky", "platform_family": "rhel", "platform_version": "9.3"}
    assert platform_facts({"ID": "rhel", "VERSION_ID": "8"})["platform"] == "redhat"
    assert platform_facts({"ID": "weird", "ID_LIKE": "fedora rhel"})["platform_family"] == "fedora"
    assert platform_facts({"ID": "amzn", "VERSION_ID": "2"})["platform_family"] == "amazon"
