"""Where the CLI finds its server, identity and key.

Strongest first, per setting:

1. global flags: `--server-url URL` (with the org:
   `https://host:10003/organizations/ORG`), `--user NAME`, `--key PEM_FILE`,
   `--ca-file PEM`, `--insecure`;
2. environment: PUSHJOBS_SERVER_URL, PUSHJOBS_USER, PUSHJOBS_KEY,
   PUSHJOBS_CA_FILE, PUSHJOBS_INSECURE (1/true/yes);
3. `~/.pushjobs/config.yml`: `server_url`, `user`, `key`, `ca_file`,
   `insecure` (unknown keys are errors, to catch typos);
4. a Chef user's `~/.chef/knife.rb`, else `~/.chef/config.rb`:
   `chef_server_url`, `node_name`, `client_key`, `ssl_ca_file`,
   `ssl_verify_mode :verify_none`, read with `pushjobs.rbconfig`: parsed,
   never evaluated (the `current_dir`/`File.join` idioms of knife.rb work;
   statements it cannot read are skipped).

`-c/--config FILE` (or PUSHJOBS_CONFIG) names the one file to read instead
of 3 and 4: YAML when it ends in .yml/.yaml, else a knife.rb.

Relative key/CA paths in a file are relative to that file's directory. The
resolved `Config` remembers where each value came from, for error messages.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import yaml

log = logging.getLogger(__name__)

ENV_VARS = {
    "server_url": "PUSHJOBS_SERVER_URL",
    "user": "PUSHJOBS_USER",
    "key": "PUSHJOBS_KEY",
    "ca_file": "PUSHJOBS_CA_FILE",
    "insecure": "PUSHJOBS_INSECURE",
}
KNIFE_KEYS = {
    "chef_server_url": "server_url",
    "node_name": "user",
    "client_key": "key",
    "ssl_ca_file": "ca_file",
}
TRUE_WORDS = {"1", "true", "yes", "on"}


class ConfigError(Exception):
    """The configuration is missing or unusable; the message says which setting and where."""


@dataclass
class Config:
    server_url: str
    user: str
    key: str
    ca_file: Optional[str] = None
    insecure: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """scheme://host[:port] of the server."""
        u = urlsplit(self.server_url)
        return f"{u.scheme}://{u.netloc}"

    @property
    def org_path(self) -> str:
        """The URL path of the org, e.g. `/organizations/acme` (any proxy prefix kept)."""
        return urlsplit(self.server_url).path.rstrip("/")

    @property
    def org(self) -> str:
        return self.org_path.rsplit("/", 1)[-1]


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUE_WORDS


# --- knife.rb ---------------------------------------------------------------


def read_knife_rb(path: Path) -> dict[str, Any]:
    """The settings the CLI needs from a knife.rb/config.rb (rbconfig: parsed, never evaluated).

    Statements rbconfig cannot read (Ruby code, ENV lookups) are skipped, as
    knife.rb files often hold a few; the skipped lines are logged at debug."""
    from pushjobs.rbconfig import RbConfigError, parse_file

    try:
        assignments = parse_file(str(path), strict=False)
    except RbConfigError as e:
        raise ConfigError(f"cannot read {e}") from None
    for w in assignments.warnings:
        log.debug("skipped in %s", w)
    values = assignments.as_dict()
    out: dict[str, Any] = {}
    for rb_key, name in KNIFE_KEYS.items():
        v = values.get(rb_key)
        if isinstance(v, str) and v:
            out[name] = str(v)
    mode = values.get("ssl_verify_mode")
    if isinstance(mode, str) and str(mode) == "verify_none":
        out["insecure"] = True
    return out


def _read_rb(path: Path) -> dict[str, Any]:
    try:
        return read_knife_rb(path)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def read_yaml_config(path: Path) -> dict[str, Any]:
    """`server_url`, `user`, `key`, `ca_file`, `insecure` from a YAML file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError) as e:
        raise ConfigError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cannot read {path}: expected a mapping of settings")
    unknown = sorted(set(map(str, data)) - set(ENV_VARS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(ENV_VARS)})")
    return data


# --- resolution -------------------------------------------------------------


def _expand(path: str, base_dir: Optional[Path], home: Path) -> str:
    if path.startswith("~/") or path == "~":
        return str(home / path[2:])
    if base_dir is not None and not os.path.isabs(path):
        return str(base_dir / path)
    return path


def resolve(flags: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> Config:
    """Merge flags > environment > ~/.pushjobs/config.yml > ~/.chef/knife.rb|config.rb."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def offer(name: str, value: Any, source: str, base_dir: Optional[Path] = None) -> None:
        if name in values or value is None or value == "":
            return
        if name in ("key", "ca_file"):
            value = _expand(str(value), base_dir, home)
        if name == "insecure":
            value = _as_bool(value)
        values[name] = value
        sources[name] = source

    for name in ENV_VARS:
        offer(name, flags.get(name), f"--{name.replace('_', '-')}", Path.cwd())
    for name, var in ENV_VARS.items():
        offer(name, env.get(var), var, Path.cwd())
    explicit = flags.get("config") or env.get("PUSHJOBS_CONFIG")
    if explicit:
        path = Path(_expand(str(explicit), Path.cwd(), home))
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        candidates = [path]
    else:
        rbs = [home / ".chef" / f for f in ("knife.rb", "config.rb") if (home / ".chef" / f).is_file()]
        candidates = [p for p in [home / ".pushjobs" / "config.yml"] if p.is_file()] + rbs[:1]
    for path in candidates:
        data = read_yaml_config(path) if path.suffix in (".yml", ".yaml") else _read_rb(path)
        for name in ENV_VARS:
            offer(name, data.get(name), str(path), path.parent)

    missing = [n for n in ("server_url", "user", "key") if n not in values]
    if missing:
        hints = {"server_url": "--server-url or PUSHJOBS_SERVER_URL",
                 "user": "--user or PUSHJOBS_USER", "key": "--key or PUSHJOBS_KEY"}
        raise ConfigError("missing " + ", ".join(f"{n} ({hints[n]})" for n in missing))
    url = str(values["server_url"]).rstrip("/")
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ConfigError(f"invalid server URL {url!r} from {sources['server_url']}: expected https://HOST[:PORT]/organizations/ORG")
    if not re.search(r"/organizations/[^/]+$", u.path):
        raise ConfigError(f"server URL {url!r} from {sources['server_url']} does not name an organization (…/organizations/ORG)")
    return Config(
        server_url=url,
        user=str(values["user"]),
        key=str(values["key"]),
        ca_file=values.get("ca_file"),
        insecure=bool(values.get("insecure", False)),
        sources=sources,
    )
