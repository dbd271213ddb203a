"""Agent settings: every key, its default and its type, defined once.

The settings file is `/etc/push-jobs-client/push-jobs-client.yml` (YAML,
written by the cookbook) whose keys are the original client's config names
(`chef_server_url`, `node_name`, `client_key`, `whitelist`, `file_dir`,
`allow_unencrypted`, `log_level`, `log_location`, ...) plus ours. `-c` may
also name a Ruby-style `client.rb` / `push-jobs-client.rb` (chosen by the
`.rb` extension): it is parsed by `pushjobs.rbconfig` in lenient mode, never
evaluated, so a Chef node can reuse its existing identity and whitelist.

Command-line values override the file. A bad file raises `SettingsError`
whose text is exactly one line, `FILE:LINE: problem`, which `main` prints
before exiting 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/push-jobs-client/push-jobs-client.yml"
#: The original client's search list, used when our YAML file is absent.
LEGACY_CONFIG_PATHS = (
    "/etc/chef/chef-push-client.rb",
    "/etc/chef/push-jobs-client.rb",
    "/etc/chef/client.rb",
)
DEFAULT_WHITELIST: dict[str, Any] = {"chef-client": "chef-client"}
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "fatal", "auto")


class SettingsError(Exception):
    """A settings problem; `str()` is one line `FILE:LINE: problem`."""

    def __init__(self, problem: str, path: Optional[str] = None, line: Optional[int] = None):
        self.problem = problem
        self.path = path
        self.line = line
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{problem}")


def _fqdn() -> str:
    return socket.getfqdn() or socket.gethostname()


@dataclass
class AgentSettings:
    """All agent settings. Durations are in seconds, sizes in bytes."""

    # --- the original client's keys (USERLAND.md §1.3, PROTOCOL.md §16.2) ---
    chef_server_url: Optional[str] = None
    node_name: Optional[str] = None  # None: the host's fqdn
    client_key: str = "/etc/chef/client.pem"
    whitelist: dict[Any, Any] = field(default_factory=lambda: dict(DEFAULT_WHITELIST))
    file_dir: str = "/tmp/chef-push"
    file_dir_expiry: float = 86400.0
    allow_unencrypted: bool = False
    allowed_overwritable_env_vars: Optional[list[str]] = None
    max_body_size: int = 63000
    log_level: str = "info"
    log_location: Optional[str] = None  # None: stdout
    lockfile: Optional[str] = None
    file_cache_path: str = "/var/chef/cache"
    # --- ours ---
    verify_tls: bool = True  # also set by Chef's `ssl_verify_mode`/`verify_api_cert`
    ca_file: Optional[str] = None  # CA bundle (or directory) for the server's certificate
    max_output_bytes: int = 1048576  # per channel, kept in memory while the job runs
    roles: list[str] = field(default_factory=list)
    environment: str = "_default"
    tags: list[str] = field(default_factory=list)
    term_grace_period: float = 5.0  # TERM -> KILL on abort / timeout
    run_timeout: float = 86400.0  # local cap on one job's run time
    http_timeout: float = 5.0
    reconnect_min_delay: float = 1.0  # jittered exponential backoff of the reconnect loop
    reconnect_max_delay: float = 60.0
    restart_splay: float = 10.0  # reconfigure spread after a server restart, at least `interval`
    command_check_timeout: float = 3.0  # no message on the command port within this -> reconfigure
    whitelist_poll_interval: float = 1.0  # how often the settings file is checked for changes
    # "auto": only to a server whose config carries the pushjobs marker (never
    # to a Chef server, whose /nodes/NODE is the real node); "true"/"false"
    report_facts: str = "auto"
    # proxies for the HTTP(S) config fetch, as Chef's client.rb spells them;
    # unset: the http_proxy/https_proxy/no_proxy environment (ZeroMQ is direct)
    http_proxy: Optional[str] = None
    https_proxy: Optional[str] = None
    no_proxy: Optional[str] = None
    # where these settings came from (set by load_settings, not a file key)
    config_path: Optional[str] = None

    def replace(self, **changes: Any) -> "AgentSettings":
        return dataclasses.replace(self, **changes)

    @property
    def resolved_node_name(self) -> str:
        return self.node_name or _fqdn()

    @property
    def org(self) -> str:
        """The organization name, the path segment after `/organizations/`."""
        return org_from_url(self.chef_server_url)

    @property
    def effective_lockfile(self) -> str:
        """The lock file of a `lock: true` whitelist entry (Chef's default)."""
        return self.lockfile or os.path.join(self.file_cache_path, "chef-client-running.pid")

    @property
    def tls_verify(self) -> bool | str:
        """The `verify` argument of `requests`."""
        if not self.verify_tls:
            return False
        return self.ca_file or True


# The original client's rule (USERLAND.md §1.4): the first `/organizations/`
# (one or more slashes) in the URL, then the segment up to the next `/`.
_ORG_RE = re.compile(r"/organizations/+([^/]+)")


def _org_match(url: Optional[str]) -> "re.Match[str]":
    if not url:
        raise SettingsError("chef_server_url is not set (use -S or the settings file)")
    m = _ORG_RE.search(urlsplit(url).path)
    if not m:
        raise SettingsError(f"chef_server_url must end in /organizations/ORG_NAME: {url}")
    return m


def org_from_url(url: Optional[str]) -> str:
    """The organization name, parsed as the original client does."""
    return _org_match(url).group(1)


def api_base_url(url: Optional[str]) -> str:
    """`chef_server_url` cut right after `/organizations/ORG`: what the config path hangs off.

    A trailing slash, repeated slashes after `organizations` and any path
    segments after the org are dropped (the original joined the config path
    to the URL as written, so `…/organizations/acme/extra` asked for
    `…/acme/extra/pushy/config/NODE`, which no server routes); a prefix
    before `/organizations` (a reverse proxy's) and the port are kept. A
    query or fragment is dropped.
    """
    m = _org_match(url)
    assert url is not None
    parts = urlsplit(url)
    path = parts.path[: m.start()] + f"/organizations/{m.group(1)}"
    return f"{parts.scheme}://{parts.netloc}{path}"


# --- key table -------------------------------------------------------------------

# key -> (kind, attribute). kind drives coercion/validation.
_KEYS: dict[str, tuple[str, str]] = {
    "chef_server_url": ("url", "chef_server_url"),
    "node_name": ("str", "node_name"),
    "client_key": ("str", "client_key"),
    "whitelist": ("whitelist", "whitelist"),
    "file_dir": ("str", "file_dir"),
    "file_dir_expiry": ("pos_float", "file_dir_expiry"),
    "allow_unencrypted": ("bool", "allow_unencrypted"),
    "allowed_overwritable_env_vars": ("str_list_or_none", "allowed_overwritable_env_vars"),
    "max_body_size": ("pos_int", "max_body_size"),
    "log_level": ("log_level", "log_level"),
    "log_location": ("str_or_none", "log_location"),
    "lockfile": ("str_or_none", "lockfile"),
    "file_cache_path": ("str", "file_cache_path"),
    "verify_tls": ("bool", "verify_tls"),
    "ca_file": ("str_or_none", "ca_file"),
    "max_output_bytes": ("pos_int", "max_output_bytes"),
    "roles": ("str_list", "roles"),
    "environment": ("str", "environment"),
    "tags": ("str_list", "tags"),
    "term_grace_period": ("nonneg_float", "term_grace_period"),
    "run_timeout": ("pos_float", "run_timeout"),
    "http_timeout": ("pos_float", "http_timeout"),
    "reconnect_min_delay": ("pos_float", "reconnect_min_delay"),
    "reconnect_max_delay": ("pos_float", "reconnect_max_delay"),
    "restart_splay": ("nonneg_float", "restart_splay"),
    "command_check_timeout": ("pos_float", "command_check_timeout"),
    "whitelist_poll_interval": ("pos_float", "whitelist_poll_interval"),
    "report_facts": ("report_facts", "report_facts"),
    "http_proxy": ("str_or_none", "http_proxy"),
    "https_proxy": ("str_or_none", "https_proxy"),
    "no_proxy": ("str_or_none", "no_proxy"),
    # aliases
    "chef_environment": ("str", "environment"),
    "trusted_certs_dir": ("str_or_none", "ca_file"),
    "log_file": ("str_or_none", "log_location"),
}

# Chef::Config keys a client.rb legitimately carries that the agent does not use.
_CHEF_KEYS_IGNORED = {
    "http_proxy_user", "http_proxy_pass", "https_proxy_user",
    "https_proxy_pass", "validation_client_name", "validation_key", "cookbook_path",
    "json_attribs", "interval", "splay", "pid_file", "cache_path", "file_backup_path",
    "encrypted_data_bag_secret", "policy_name", "policy_group", "chef_license", "ohai",
    "rest_timeout", "checksum_path", "file_staging_uses_destdir", "local_mode", "chef_zero",
    "client_fork", "enable_reporting", "data_collector", "exception_handlers",
    "report_handlers", "start_handlers", "log_formatter", "color", "diff_disabled",
    "node_path", "role_path", "environment_path", "umask", "solo", "audit_mode",
}


def _coerce(kind: str, key: str, value: Any) -> Any:
    """Type-check one value; raise SettingsError(problem) without location."""
    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{key}: expected {expected}, got {value!r}")

    if kind in ("str", "url"):
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        if kind == "url":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad("an http(s):// URL")
        return value
    if kind == "str_or_none":
        if value is None:
            return None
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind in ("pos_int",):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad("a positive integer")
        return value
    if kind in ("pos_float", "nonneg_float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if value < 0 or (kind == "pos_float" and value == 0):
            raise bad("a positive number" if kind == "pos_float" else "a number >= 0")
        return float(value)
    if kind == "report_facts":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.lower().lstrip(":") in ("auto", "true", "false"):
            return value.lower().lstrip(":")
        raise bad("auto, true or false")
    if kind == "log_level":
        if isinstance(value, str) and value.lower().lstrip(":") in LOG_LEVELS:
            return value.lower().lstrip(":")
        raise bad("one of debug, info, warn, error, fatal")
    if kind in ("str_list", "str_list_or_none"):
        if value is None and kind == "str_list_or_none":
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad("a list of strings")
    if kind == "whitelist":
        if not isinstance(value, Mapping):
            raise bad("a map of command name -> command line")
        # Deep validation happens in pushjobs.agent.whitelist (imported lazily:
        # it depends on nothing here, but keeps this module import-light).
        from pushjobs.agent.whitelist import Whitelist, WhitelistError

        try:
            Whitelist.from_mapping(value)
        except WhitelistError as exc:
            raise SettingsError(f"whitelist: {exc}") from None
        return dict(value)
    raise AssertionError(kind)


def _apply(settings: AgentSettings, values: Mapping[str, Any], path: Optional[str],
           lines: Mapping[str, int], *, strict: bool) -> AgentSettings:
    changes: dict[str, Any] = {}
    for key, value in values.items():
        line = lines.get(key)
        spec = _KEYS.get(key)
        if spec is None:
            if key in ("ssl_verify_mode",):
                mode = str(value).lstrip(":")
                changes["verify_tls"] = mode != "verify_none"
                continue
            if key == "verify_api_cert":
                continue  # Chef's default already verifies; ssl_verify_mode decides
            if strict:
                raise SettingsError(f"unknown setting {key!r}", path, line)
            if key not in _CHEF_KEYS_IGNORED:
                log.debug("%s:%s: ignoring Chef setting %r", path, line, key)
            continue
        kind, attr = spec
        try:
            changes[attr] = _coerce(kind, key, value)
        except SettingsError as exc:
            raise SettingsError(exc.problem, path, line) from None
    if changes.get("reconnect_max_delay", settings.reconnect_max_delay) < changes.get(
            "reconnect_min_delay", settings.reconnect_min_delay):
        raise SettingsError("reconnect_max_delay must be >= reconnect_min_delay", path,
                            lines.get("reconnect_max_delay"))
    return settings.replace(**changes)


# --- file readers -----------------------------------------------------------------

def _read_yaml(path: str, text: str) -> tuple[dict[str, Any], dict[str, int]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        if "escape character" in problem:
            problem += " (write regex keys in single quotes: '/^restart-(\\w+)$/')"
        raise SettingsError(f"invalid YAML: {problem}", path, line) from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"invalid YAML: {exc}".splitlines()[0], path) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise SettingsError("the settings file must be a map of key: value", path, 1)
    lines: dict[str, int] = {}
    for knode, _vnode in node.value:
        if isinstance(knode, yaml.ScalarNode):
            lines[knode.value] = knode.start_mark.line + 1
    for key in data:
        if not isinstance(key, str):
            raise SettingsError(f"setting names must be strings, got {key!r}", path,
                                lines.get(str(key)))
    return data, lines


def _read_rb(path: str, text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a Ruby-style client.rb through pushjobs.rbconfig (lenient mode).

    Lenient: statements it cannot read (Ruby code a client.rb may carry) are
    skipped with a warning; a value it cannot read for a key we use is still
    an error naming the line.
    """
    from pushjobs import rbconfig

    try:
        parsed = rbconfig.parse(text, path, strict=False)
    except rbconfig.RbConfigError as exc:
        raise SettingsError(exc.message, path, exc.lineno) from None
    for warning in parsed.warnings:
        if warning.key == "whitelist":
            # Skipping it would silently run with the default whitelist, i.e.
            # change what this node may run: refuse instead.
            problem = warning.message.removeprefix("skipped: ")
            raise SettingsError(f"cannot read the whitelist ({problem}); refusing to start "
                                "with the default whitelist", path, warning.lineno)
        log.warning("%s (statement ignored)", warning)
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for assignment in parsed:
        if assignment.section is not None:
            continue
        values[assignment.key] = _rb_normalize(assignment.value)
        lines[assignment.key] = assignment.lineno
    return values, lines


def _rb_normalize(value: Any) -> Any:
    """Turn rbconfig values into plain Python: symbols -> str, regex -> re.Pattern."""
    from pushjobs import rbconfig

    if isinstance(value, rbconfig.RbRegex):
        return value.compile()
    if isinstance(value, rbconfig.RbSymbol):
        return str(value)
    if isinstance(value, Mapping):
        return {_rb_normalize(k): _rb_normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rb_normalize(v) for v in value]
    return value


# --- public entry points ----------------------------------------------------------

def find_config_path(explicit: Optional[str] = None) -> Optional[str]:
    """The file to read: `-c`, else our YAML path, else the original's search list."""
    if explicit:
        return explicit
    for candidate in (DEFAULT_CONFIG_PATH, *LEGACY_CONFIG_PATHS):
        if os.path.exists(candidate):
            return candidate
    return None


def read_settings_file(path: str) -> tuple[dict[str, Any], dict[str, int], bool]:
    """Return (values, key -> line, strict) for one settings file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise SettingsError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read: {exc}", path) from None
    if path.endswith(".rb"):
        values, lines = _read_rb(path, text)
        return values, lines, False
    values, lines = _read_yaml(path, text)
    return values, lines, True


def load_settings(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                  *, base: Optional[AgentSettings] = None) -> AgentSettings:
    """Defaults, then the file at `path` (if any), then `overrides` (the CLI).

    Raises SettingsError on a bad file or value. `overrides` uses setting
    names; None values are ignored (an option that was not given).
    """
    settings = base or AgentSettings()
    if path:
        values, lines, strict = read_settings_file(path)
        settings = _apply(settings, values, path, lines, strict=strict)
        settings = settings.replace(config_path=os.path.abspath(path))
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = _apply(settings, given, "command line" if given else None, {}, strict=True)
    return settings


def validate_for_start(settings: AgentSettings) -> None:
    """Checks that only matter when actually starting (not for `-v`/`-h`)."""
    org_from_url(settings.chef_server_url)
    if not os.path.exists(settings.client_key):
        raise SettingsError(f"client key {settings.client_key} does not exist")
    # A missing CA bundle would otherwise fail every connection attempt, retried
    # forever ("Could not find a suitable TLS CA certificate bundle").
    if settings.verify_tls and settings.ca_file and not os.path.exists(settings.ca_file):
        raise SettingsError(f"ca_file {settings.ca_file} does not exist "
                            "(the CA certificate bundle or directory used to verify the server)")
