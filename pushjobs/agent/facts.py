"""Node facts in Chef's node shape, for the server's search (`role:web AND platform:debian`).

Only what `knife job start --search` users query in practice: hostname,
fqdn, ipaddress, platform, platform_family, platform_version, os, kernel
(name, release) and roles under `automatic`; `role[...]` entries in
`run_list`; the environment in `chef_environment`; tags in `normal.tags`.
Sent with `PUT {chef_server_url}/nodes/{node}` at start and after every
reconfigure, and only to a server whose config carries our marker
(`"pushjobs": {"node_facts": true}`, see `SessionOptions.wants_facts`):
behind a Chef server that URL is Chef's own node, which this document would
overwrite. A server without the endpoint answers 404/405: the agent logs a
warning and carries on.
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import socket
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

# os-release ID -> Chef platform_family (Ohai's mapping, the common part)
_FAMILY = {
    "debian": "debian", "ubuntu": "debian", "linuxmint": "debian", "raspbian": "debian",
    "rhel": "rhel", "redhat": "rhel", "centos": "rhel", "rocky": "rhel", "almalinux": "rhel",
    "ol": "rhel", "oracle": "rhel", "scientific": "rhel", "amzn": "amazon", "amazon": "amazon",
    "fedora": "fedora", "sles": "suse", "opensuse": "suse", "opensuse-leap": "suse",
    "opensuse-tumbleweed": "suse", "arch": "arch", "alpine": "alpine", "gentoo": "gentoo",
}
# os-release ID -> Chef platform name where they differ
_PLATFORM = {"rhel": "redhat", "ol": "oracle", "amzn": "amazon", "sles": "suse",
             "opensuse-leap": "opensuseleap"}


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                k, v = line.split("=", 1)
                values[k] = v.strip().strip('"').strip("'")
    except OSError:
        pass
    return values


def platform_facts(os_release: Optional[dict[str, str]] = None) -> dict[str, str]:
    rel = read_os_release() if os_release is None else os_release
    ident = rel.get("ID", "").lower()
    family = _FAMILY.get(ident)
    if family is None:
        for like in rel.get("ID_LIKE", "").lower().split():
            if like in _FAMILY:
                family = _FAMILY[like]
                break
    system = _platform.system().lower() or "unknown"
    return {
        "platform": _PLATFORM.get(ident, ident) or system,
        "platform_family": family or system,
        "platform_version": rel.get("VERSION_ID", "") or _platform.release(),
    }


def primary_ip(towards: Optional[str] = None) -> str:
    """The address this host would use to reach `towards` (no packet is sent)."""
    target = towards or "192.0.2.1"  # TEST-NET: any routable-looking address works
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


def build_node(node_name: str, *, roles: Sequence[str] = (), environment: str = "_default",
               tags: Sequence[str] = (), server_host: Optional[str] = None,
               os_release: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The node JSON (Chef's shape) this agent reports."""
    uname = os.uname()
    fqdn = socket.getfqdn() or uname.nodename
    automatic: dict[str, Any] = {
        "hostname": uname.nodename.split(".")[0],
        "fqdn": fqdn,
        "ipaddress": primary_ip(server_host),
        "os": uname.sysname.lower(),
        "kernel": {"name": uname.sysname, "release": uname.release},
        "roles": list(roles),
    }
    automatic.update(platform_facts(os_release))
    return {
        "name": node_name,
        "chef_type": "node",
        "json_class": "Chef::Node",
        "chef_environment": environment,
        "run_list": [f"role[{r}]" for r in roles],
        "automatic": automatic,
        "normal": {"tags": list(tags)},
        "default": {},
        "override": {},
    }


def report_facts(http: Any, node_name: str, node: dict[str, Any]) -> str:
    """PUT the node: "ok", "unsupported" (404/405: an older server) or "failed".

    Never raises: facts are best effort and must not hold up the handshake.
    """
    from pushjobs.agent.chef_http import HTTPError

    try:
        r = http.put_json(f"nodes/{node_name}", node)
    except HTTPError as exc:
        log.warning("[%s] could not report node facts: %s", node_name, exc)
        return "failed"
    if r.status_code in (200, 201, 204):
        log.debug("[%s] node facts reported", node_name)
        return "ok"
    if r.status_code in (404, 405):
        log.warning("[%s] the server does not accept node facts (HTTP %d); search by facts "
                    "will not find this node", node_name, r.status_code)
        return "unsupported"
    else:
        log.warning("[%s] node facts refused: HTTP %d %s", node_name, r.status_code,
                    r.text[:200].strip())
    return "failed"
