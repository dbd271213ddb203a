"""Server settings: every key, its default and its type, defined once.

`Settings()` gives the defaults; `load_settings(path)` parses
/etc/push-jobs-server/push-jobs-server.rb (never evaluating it) on top of
them. Durations keep the original's units: `heartbeat_interval` and
`rehab_timer` in milliseconds, everything else in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from typing import Optional

DEFAULT_CONFIG_PATH = "/etc/push-jobs-server/push-jobs-server.rb"
LEGACY_CONFIG_PATH = "/etc/opscode-push-jobs-server/opscode-push-jobs-server.rb"
CONFIG_ENV = "PUSHJOBS_SERVER_CONFIG"
DEFAULT_SQLITE_NAME = "push-jobs-server.sqlite3"


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

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def resolved_database_url(self) -> str:
        """`database_url`, or the default SQLite file in `data_dir` when unset.

        Kept as a method (not a default) so that a test which only sets
        `data_dir` gets its database inside that directory."""
        if self.database_url:
            return self.database_url
        return "sqlite:///" + os.path.join(os.path.abspath(self.data_dir), DEFAULT_SQLITE_NAME)
