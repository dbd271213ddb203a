"""`push-jobs-server [-c CONFIG]`: the server process (gunicorn + one gevent worker).

Everything an operator can get wrong (settings file, data directory, server
key, database) is checked here, in the master, before gunicorn starts, and
reported as one line on stderr with exit status 2. See gunicorn_app.py for the
process model, the hooks and what SIGTERM/SIGHUP do.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import pushjobs

log = logging.getLogger("pushjobs.server")

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="push-jobs-server",
        description="Push jobs server: REST API, heartbeat PUB and command ROUTER in one process.")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="settings file (default: $PUSHJOBS_SERVER_CONFIG, "
                        "/etc/push-jobs-server/push-jobs-server.rb, then the original's "
                        "/etc/opscode-push-jobs-server/opscode-push-jobs-server.rb)")
    p.add_argument("--version", action="version", version=f"%(prog)s {pushjobs.__version__}")
    return p


def configure_logging(level: str) -> None:
    """stderr (journald/systemd picks it up), one line per event."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    # one line per SQL statement drowns everything else, even at debug
    logging.getLogger("peewee").setLevel(max(root.level, logging.INFO))


def _fail(message: str) -> int:
    print(f"push-jobs-server: {message}", file=sys.stderr)
    return 2


def _zmq_host(endpoint: str) -> str:
    """The host part of a ZeroMQ bind endpoint ("tcp://*", "tcp://127.0.0.1", "tcp://[::1]")."""
    host = endpoint.split("://", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_ports(settings) -> Optional[str]:
    """One line naming the first port setting that cannot be bound, or None.

    Done in the master before gunicorn starts: otherwise a busy API port makes
    gunicorn retry five times and exit 1, and a busy ZeroMQ port kills the
    worker with a traceback (exit 3). Each test socket uses SO_REUSEADDR, as
    gunicorn and libzmq do, so a port in TIME_WAIT is not reported as busy;
    it is closed before gunicorn binds. An address that does not resolve here
    (e.g. a ZeroMQ interface name) is left to the in-worker check."""
    import errno
    import socket

    wanted = [("api_port", settings.api_listen_address, settings.api_port),
              ("server_heartbeat_port", _zmq_host(settings.zeromq_listen_address), settings.server_heartbeat_port),
              ("command_port", _zmq_host(settings.zeromq_listen_address), settings.command_port)]
    for name, host, port in wanted:
        bind_host = None if host in ("*", "") else host
        try:
            family, socktype, proto, _, sockaddr = socket.getaddrinfo(
                bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except (socket.gaierror, UnicodeError):
            continue
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            where = f"{host or '*'}:{port}"
            if exc.errno == errno.EADDRINUSE:
                return f"{name} {port}: address {where} is already in use (is another server running?)"
            return f"{name} {port}: cannot bind {where}: {exc.strerror or exc}"
        finally:
            sock.close()
    return None


def load(config: Optional[str]):
    """Settings from CONFIG (or the default search); raises with a one-line message."""
    from pushjobs.server.settings import load_settings

    return load_settings(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load(args.config)
    except Exception as exc:  # noqa: BLE001 - every settings problem is one line, exit 2
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    configure_logging(settings.log_level)

    from pushjobs.protocol.keys import load_private_key
    from pushjobs.server import store
    from pushjobs.server.app import SERVER_PRIVATE_KEY_FILE
    from pushjobs.server.gunicorn_app import PushJobsApplication

    key_path = os.path.join(settings.data_dir, SERVER_PRIVATE_KEY_FILE)
    try:
        with open(key_path, "rb") as fh:
            server_key = load_private_key(fh.read())
    except OSError as exc:
        return _fail(f"cannot read the server key {key_path}: {exc.strerror} (run push-jobs-server-ctl init)")
    except Exception as exc:  # noqa: BLE001
        return _fail(f"bad server key {key_path}: {exc}")
    if settings.ssl_certificate or settings.ssl_certificate_key:
        for name in ("ssl_certificate", "ssl_certificate_key"):
            path = getattr(settings, name)
            if not path or not os.path.isfile(path):
                return _fail(f"{name} {path!r}: no such file (both ssl_certificate and ssl_certificate_key are needed)")
    busy = check_ports(settings)
    if busy:
        return _fail(busy)
    try:
        store.open_database(settings)  # migrates the schema; the worker reopens it
    except Exception as exc:  # noqa: BLE001 - StoreError and driver errors alike
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    finally:
        try:
            store.close_database()
        except Exception:  # noqa: BLE001
            pass

    log.info("push-jobs-server %s starting: api %s:%d, heartbeat %s:%d, command %s:%d, database %s",
             pushjobs.__version__, settings.api_listen_address, settings.api_port,
             settings.zeromq_listen_address, settings.server_heartbeat_port,
             settings.zeromq_listen_address, settings.command_port,
             store.redact_url(settings.resolved_database_url()))
    PushJobsApplication(settings, server_key, reload_settings=lambda: load(args.config)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
