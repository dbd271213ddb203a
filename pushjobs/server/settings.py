"""Server settings: every key, its default and its type, defined once.

`Settings()` gives the defaults; `load_settings(path)` parses
/etc/push-jobs-server/push-jobs-server.rb (never evaluating it, through
`pushjobs.rbconfig` in strict mode) on top of them. Durations keep the
original's units: `heartbeat_interval` and `rehab_timer` in milliseconds,
everything else in seconds.

Which file: `-c PATH` (the caller passes it as `path`), else
$PUSHJOBS_SERVER_CONFIG, else DEFAULT_CONFIG_PATH, else the original's
LEGACY_CONFIG_PATH (so a migrating operator changes nothing), else defaults
only. An unknown key or a bad value raises `SettingsError`, whose str is one
line `FILE:LINE: what is wrong`.

The original's file is accepted as is: `opscode_pushy_server['key'] = value`
lines, its aliases (`server_name_advertised`, `vip` -> `server_name`), and its
keys and sections that mean nothing here (nginx, runit, graphite, the
`postgresql` section...) which are ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import types as _pytypes
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/push-jobs-server/push-jobs-server.rb"
LEGACY_CONFIG_PATH = "/etc/opscode-push-jobs-server/opscode-push-jobs-server.rb"
CONFIG_ENV = "PUSHJOBS_SERVER_CONFIG"
DEFAULT_SQLITE_NAME = "push-jobs-server.sqlite3"
# files in data_dir
SERVER_PRIVATE_KEY_NAME = "pushy_priv.pem"
SERVER_PUBLIC_KEY_NAME = "pushy_pub.pem"


def _fqdn() -> str:
    return socket.getfqdn() or socket.gethostname()


@dataclass
class Settings:
    # --- the seed's opscode-push-jobs-server.rb settings ---
    command_port: int = 10002
    heartbeat_interval: int = 1000  # ms
    keep_alive_time: int = 15  # s, SSE keepalive
    org_feed_expiration: int = 60  # s
    server_heartbeat_port: int = 10000
    server_name: str = field(default_factory=_fqdn)
    wait_complete_time: int = 5  # s a finished job lingers for SSE
    zeromq_listen_address: str = "tcp://*"
    # --- PROTOCOL.md §16.1 ---
    api_port: int = 10003
    voting_timeout: int = 60  # s
    default_running_timeout: int = 3600  # s
    max_body_size: int = 65536  # bytes, ZeroMQ message body cap
    config_lifetime: int = 3600  # s
    max_message_skew: int = 300  # s
    decay_window: int = 4
    down_threshold: float = 0.6
    detect_offline_nodes_interval: int = 4  # in heartbeat intervals
    rehab_timer: int = 1000  # ms
    disable_curve_encryption: bool = False
    validate_client_node_name: bool = True
    zap_key_lifetime: int = 60  # s a ccpk stays admissible after a config request
    # --- ours ---
    data_dir: str = "/var/lib/push-jobs-server"
    database_url: Optional[str] = None  # default: sqlite file in data_dir
    api_listen_address: str = "0.0.0.0"
    log_level: str = "info"
    ssl_certificate: Optional[str] = None
    ssl_certificate_key: Optional[str] = None
    job_retention_days: Optional[int] = None  # None: keep jobs forever
    max_output_bytes: int = 1048576  # per node and channel; longer output is truncated
    db_pool_size: int = 20  # PostgreSQL connections (the cookbook's db_pool_size)
    zmq_io_processes: int = 1  # ZeroMQ I/O threads
    # --- not settings: where the values came from (filled by load_settings) ---
    config_path: Optional[str] = field(default=None, compare=False, metadata={"internal": True})
    provenance: dict = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def resolved_database_url(self) -> str:
        """`database_url`, or the default SQLite file in `data_dir` when unset.

        Kept as a method (not a default) so that a test which only sets
        `data_dir` gets its database inside that directory."""
        if self.database_url:
            return self.database_url
        return "sqlite:///" + os.path.join(os.path.abspath(self.data_dir), DEFAULT_SQLITE_NAME)

    @property
    def server_private_key_path(self) -> str:
        return os.path.join(self.data_dir, SERVER_PRIVATE_KEY_NAME)

    @property
    def server_public_key_path(self) -> str:
        return os.path.join(self.data_dir, SERVER_PUBLIC_KEY_NAME)

    def source_of(self, key: str) -> str:
        """Where `key` came from: "default", "FILE:LINE", ... (for show-config and errors)."""
        return self.provenance.get(key, "default")


class SettingsError(ValueError):
    """A settings file that cannot be used; str() is one line `FILE:LINE: what is wrong`."""

    def __init__(self, message: str, filename: Optional[str] = None, lineno: Optional[int] = None):
        where = ""
        if filename:
            where = f"{filename}:{lineno}: " if lineno else f"{filename}: "
        super().__init__(where + message)
        self.message = message
        self.filename = filename
        self.lineno = lineno


def setting_names() -> list[str]:
    """The keys a settings file may set, in declaration order."""
    return [f.name for f in dataclasses.fields(Settings) if not f.metadata.get("internal")]


_TYPES: dict[str, Any] = {}


def _setting_types() -> dict[str, Any]:
    if not _TYPES:
        hints = typing.get_type_hints(Settings)
        _TYPES.update({name: hints[name] for name in setting_names()})
    return _TYPES


# The sections a `section['key'] = value` line may name for our keys.
OUR_SECTIONS = ("pushy_server", "opscode_pushy_server", "push_jobs_server")
# Sections of the original's file that configure things we do not have.
IGNORED_SECTIONS = ("postgresql", "bootstrap", "oc_chef_pedant", "nginx", "pushy_common")
# Keys of the original's opscode_pushy_server section that mean nothing here.
IGNORED_KEYS = (
    "enable", "ha", "dir", "log_directory", "log_rotation", "listen", "ibrowse_max_sessions",
    "ibrowse_max_pipeline_size", "enable_graphite", "graphite_host", "graphite_port", "chef_api_version",
    "erchef_root_url", "skip_header_validation", "ignore_signature_check",
)
# Old name -> our name. `vip` only counts when server_name(_advertised) is not set.
ALIASES = {"server_name_advertised": "server_name", "vip": "server_name", "max_time_skew": "max_message_skew"}

_PORTS = ("command_port", "server_heartbeat_port", "api_port")
_POSITIVE = (
    "heartbeat_interval", "keep_alive_time", "org_feed_expiration", "voting_timeout", "default_running_timeout",
    "max_body_size", "config_lifetime", "max_message_skew", "decay_window", "detect_offline_nodes_interval",
    "rehab_timer", "zap_key_lifetime", "max_output_bytes", "db_pool_size", "zmq_io_processes", "job_retention_days",
)
_NON_NEGATIVE = ("wait_complete_time",)
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a hash"
    return type(v).__name__


def coerce_value(key: str, value: Any) -> Any:
    """Check one value against its setting's type and range; return it as the field's type.

    Raises ValueError with a message that names the key (the caller adds FILE:LINE)."""
    types = _setting_types()
    if key not in types:
        raise ValueError(f"unknown setting '{key}'")
    t = types[key]
    optional = False
    if typing.get_origin(t) in (typing.Union, _pytypes.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = True
        t = args[0]
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key} cannot be nil")
    want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[t]
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    else:
        ok = isinstance(value, str)
        if ok:
            value = str(value)  # RbSymbol -> str
    if not ok:
        shown = f" {value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
        raise ValueError(f"{key} must be {want}, got {_type_name(value)}{shown}")
    _check_range(key, value)
    return value


def _check_range(key: str, value: Any) -> None:
    if key in _PORTS and not 1 <= value <= 65535:
        raise ValueError(f"{key} must be a port number 1-65535, got {value}")
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"{key} must be positive, got {value}")
    if key in _NON_NEGATIVE and value < 0:
        raise ValueError(f"{key} must not be negative, got {value}")
    if key == "down_threshold" and not 0 < value <= 1:
        raise ValueError(f"down_threshold must be in (0, 1], got {value}")
    if key == "log_level" and value.lower() not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got '{value}'")
    if key == "zeromq_listen_address" and not re.fullmatch(r"tcp://(\*|[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])", value):
        raise ValueError(f"zeromq_listen_address must look like tcp://* or tcp://HOST (no port), got '{value}'")
    if key in ("server_name", "api_listen_address") and not value.strip():
        raise ValueError(f"{key} must not be empty")
    if key == "data_dir" and not os.path.isabs(value):
        raise ValueError(f"data_dir must be an absolute path, got '{value}'")
    if key == "database_url" and not (
        value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://"))
    ):
        raise ValueError(f"database_url must be sqlite:///PATH or postgresql://..., got '{value}'")
    if key in ("ssl_certificate", "ssl_certificate_key") and not os.path.isabs(value):
        raise ValueError(f"{key} must be an absolute path, got '{value}'")


def find_config_path(path: Optional[str] = None, env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The settings file to read, or None for defaults only (see the module docstring)."""
    if path:
        return path
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    for candidate in (DEFAULT_CONFIG_PATH, LEGACY_CONFIG_PATH):
        if os.path.exists(candidate):
            return candidate
    return None


def load_settings(path: Optional[str] = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Defaults, then the settings file; `.provenance` says where each key came from.

    An explicitly named file (`path` or $PUSHJOBS_SERVER_CONFIG) must exist."""
    from pushjobs import rbconfig

    settings = Settings()
    provenance: dict[str, str] = {}
    filename = find_config_path(path, env)
    if filename is None:
        settings.provenance = provenance
        return settings
    filename = os.path.abspath(filename)
    try:
        assignments = rbconfig.parse_file(filename, strict=True)
    except FileNotFoundError:
        raise SettingsError("no such settings file", filename) from None
    except IsADirectoryError:
        raise SettingsError("is a directory, not a settings file", filename) from None
    except PermissionError:
        raise SettingsError("permission denied", filename) from None
    except rbconfig.RbConfigError as e:
        raise SettingsError(e.message, e.filename, e.lineno) from None

    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    vip: Optional[tuple[Any, int]] = None
    for a in assignments:
        where = f"{filename}:{a.lineno}"
        if a.section is not None and a.section not in OUR_SECTIONS:
            if a.section in IGNORED_SECTIONS:
                log.warning("%s: %s['%s'] ignored (not used by pushjobs)", where, a.section, a.key)
                provenance[f"{a.section}.{a.key}"] = f"{where} (ignored)"
                continue
            raise SettingsError(
                f"unknown section '{a.section}' (settings are `key value` or pushy_server['key'] = value)",
                filename, a.lineno,
            )
        key = a.key
        if key.split(".")[0] in IGNORED_KEYS:
            log.warning("%s: %s ignored (not used by pushjobs)", where, key)
            provenance[key] = f"{where} (ignored)"
            continue
        if key == "vip":
            vip = (a.value, a.lineno)
            continue
        target = ALIASES.get(key, key)
        try:
            values[target] = coerce_value(target, a.value)
        except ValueError as e:
            msg = str(e)
            if target != key:
                msg = f"{key} (alias of {target}): {msg}"
            raise SettingsError(msg, filename, a.lineno) from None
        lines[target] = a.lineno
        provenance[target] = where if target == key else f"{where} (as {key})"
    if vip is not None and "server_name" not in values:
        try:
            values["server_name"] = coerce_value("server_name", vip[0])
        except ValueError as e:
            raise SettingsError(f"vip (alias of server_name): {e}", filename, vip[1]) from None
        lines["server_name"] = vip[1]
        provenance["server_name"] = f"{filename}:{vip[1]} (as vip)"

    settings = dataclasses.replace(settings, **values)
    _check_together(settings, filename, lines)
    settings.config_path = filename
    settings.provenance = provenance
    return settings


def _check_together(s: Settings, filename: str, lines: dict[str, int]) -> None:
    """Rules between keys; the error points at the line of the last key involved."""
    ports: dict[int, str] = {}
    for key in _PORTS:
        port = getattr(s, key)
        if port in ports:
            other = ports[port]
            line = max(lines.get(key, 0), lines.get(other, 0)) or None
            raise SettingsError(f"{key} and {other} are both {port}; each needs its own port", filename, line)
        ports[port] = key
    cert, key = s.ssl_certificate, s.ssl_certificate_key
    if bool(cert) != bool(key):
        missing = "ssl_certificate_key" if cert else "ssl_certificate"
        given = "ssl_certificate" if cert else "ssl_certificate_key"
        raise SettingsError(f"{given} is set but {missing} is not; set both or neither", filename, lines.get(given))


def effective_settings(settings: Settings) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting, for show-config.

    `database_url` shows the resolved URL when it defaults to the SQLite file."""
    out = []
    for name in setting_names():
        value = getattr(settings, name)
        source = settings.source_of(name)
        if name == "database_url" and value is None:
            value = settings.resolved_database_url()
            source = "default (SQLite file in data_dir)"
        elif name == "server_name" and source == "default":
            source = "default (this host's FQDN)"
        out.append((name, value, source))
    return out


def render_value(value: Any) -> str:
    """A value in the settings file's syntax (so show-config output can be pasted back)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    s = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
