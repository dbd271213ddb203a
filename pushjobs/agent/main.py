"""`push-jobs-client`: the node agent process.

Process-level concerns only: the command line (the original's option
spellings included, USERLAND.md §1.2), the settings file, logging, signals,
the settings-file watcher (whitelist reload) and the job-file sweeper. The
protocol lives in `session.NodeSession`, the jobs in `jobs.AgentJobs`.

Signals: TERM/INT/QUIT stop the agent (the running job's process group is
killed) and exit 0; HUP re-reads the settings file (whitelist) and does a
full reconfigure; USR1 does a full reconfigure, like the original.

Exit codes: 0 clean stop, `-h`, `-v`; 1 bad settings (one line
`FILE:LINE: problem` on stderr) or an unusable client key; 2 bad usage.
Server problems never stop the agent: it retries forever.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Optional, Sequence

from pushjobs.agent.settings import (AgentSettings, SettingsError, api_base_url,
                                     find_config_path, load_settings, validate_for_start)

log = logging.getLogger("pushjobs.agent")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pushjobs")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        from pushjobs import __version__  # type: ignore[attr-defined]

        return str(__version__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="push-jobs-client",
        description="Push jobs node agent: runs whitelisted commands pushed by a push-jobs server.",
        allow_abbrev=False)
    p.add_argument("--allow_unencrypted", "--allow-unencrypted", dest="allow_unencrypted",
                   action="store_const", const=True, default=None,
                   help="Allow unencrypted connections to 1.x servers")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="The settings file: push-jobs-client.yml, or a Ruby-style client.rb / "
                        "push-jobs-client.rb (by extension). Default: "
                        "/etc/push-jobs-client/push-jobs-client.yml, else the original's "
                        "/etc/chef/{chef-push-client,push-jobs-client,client}.rb")
    p.add_argument("-d", "--file_dir", "--file-dir", "-file_dir", dest="file_dir", metavar="DIR",
                   help="Set the directory for temporary files (default /tmp/chef-push)")
    p.add_argument("-k", "--client-key", "--client_key", dest="client_key", metavar="KEY_FILE",
                   help="The location of the file that contains the client key")
    p.add_argument("-l", "--log_level", "--log-level", dest="log_level", metavar="LEVEL",
                   help="debug, info, warn, error or fatal")
    p.add_argument("-L", "--logfile", dest="log_location", metavar="LOCATION",
                   help="The location of the log file (default: standard output)")
    p.add_argument("-N", "--node-name", "--node_name", dest="node_name", metavar="NODE_NAME",
                   help="The name of the node (and of its API client)")
    p.add_argument("-S", "--server", dest="chef_server_url", metavar="URL",
                   help="The server URL, ending in /organizations/ORG")
    p.add_argument("-M", "--max-body-size", "--max_body_size", dest="max_body_size", type=int,
                   metavar="BYTES", help="Largest message the agent sends (default 63000)")
    p.add_argument("-v", "--version", action="store_true", help="Show the version and exit")
    return p


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "auto": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
           "fatal": logging.CRITICAL}


def setup_logging(settings: AgentSettings) -> None:
    """`[time] LEVEL: message` like the original (node name is in each message)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    location = settings.log_location
    if location in (None, "", "STDOUT", "stdout", "-"):
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    elif location in ("STDERR", "stderr"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        parent = os.path.dirname(location)
        if parent:
            os.makedirs(parent, exist_ok=True)
        handler = logging.FileHandler(location)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S%z"))
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(settings.log_level, logging.INFO))


class Agent:
    """The running agent: one loop, one session, one job handler, one watcher."""

    def __init__(self, settings: AgentSettings, overrides: Optional[dict[str, Any]] = None):
        from pushjobs.agent.jobs import AgentJobs, JobSettings
        from pushjobs.agent.loop import EventLoop
        from pushjobs.agent.session import NodeIdentity, NodeSession, SessionOptions
        from pushjobs.protocol.keys import load_private_key

        self.settings = settings
        self.overrides = overrides or {}
        try:
            with open(settings.client_key, "rb") as fh:
                key = load_private_key(fh.read())
                mode = os.fstat(fh.fileno()).st_mode
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot load the client key {settings.client_key}: {exc}") from None
        if mode & 0o077:
            log.warning("client key %s is readable by group/others (mode %o); it should be 0600",
                        settings.client_key, mode & 0o777)
        self.node = settings.resolved_node_name
        self.loop = EventLoop(workers=2)
        self.jobs = AgentJobs(self.node, JobSettings.from_settings(settings))
        base_url = api_base_url(settings.chef_server_url)
        if base_url != (settings.chef_server_url or "").rstrip("/"):
            log.warning("[%s] chef_server_url %s: using %s (the part up to the organization)",
                        self.node, settings.chef_server_url, base_url)
        identity = NodeIdentity(node_name=self.node, org=settings.org,
                                chef_server_url=base_url, private_key=key)
        self.session = NodeSession(self.loop, identity, self.jobs,
                                   SessionOptions.from_settings(settings), facts=self._facts)
        self._file_stamp = self._stamp()
        self.exit_code = 0

    # --- facts --------------------------------------------------------------
    def _facts(self) -> dict:
        from urllib.parse import urlsplit

        from pushjobs.agent.facts import build_node

        s = self.settings
        return build_node(self.node, roles=s.roles, environment=s.environment, tags=s.tags,
                          server_host=urlsplit(s.chef_server_url or "").hostname)

    # --- settings file watcher ------------------------------------------------
    def _stamp(self) -> Optional[tuple]:
        path = self.settings.config_path
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _watch(self) -> None:
        stamp = self._stamp()
        if stamp is not None and stamp != self._file_stamp:
            self._file_stamp = stamp
            log.info("[%s] %s changed; reloading the whitelist", self.node, self.settings.config_path)
            self.reload()
        self.loop.call_later(self.settings.whitelist_poll_interval, self._watch)

    def reload(self) -> bool:
        """Re-read the settings file; the whitelist takes effect when the runner is idle."""
        from pushjobs.agent.jobs import JobSettings

        path = self.settings.config_path
        if not path:
            return False
        try:
            new = load_settings(path, self.overrides)
        except SettingsError as exc:
            log.error("[%s] settings not reloaded, keeping the previous ones: %s", self.node, exc)
            return False
        changed = [k for k in ("chef_server_url", "node_name", "client_key")
                   if getattr(new, k) != getattr(self.settings, k)]
        if changed:
            log.warning("[%s] %s changed in %s: restart the agent to use the new value(s)",
                        self.node, ", ".join(changed), path)
        keep = {k: getattr(self.settings, k) for k in ("chef_server_url", "node_name", "client_key")}
        self.settings = new.replace(**keep)
        applied = self.jobs.update(JobSettings.from_settings(self.settings))
        if not applied:
            log.info("[%s] a job is in progress: the new whitelist applies when it ends", self.node)
        return True

    # --- housekeeping -----------------------------------------------------------
    def _sweep(self) -> None:
        from pushjobs.agent.runner import sweep_file_dir

        removed = sweep_file_dir(self.settings.file_dir, self.settings.file_dir_expiry)
        if removed:
            log.info("[%s] removed %d stale job file(s) from %s", self.node, removed,
                     self.settings.file_dir)
        self.loop.call_later(min(self.settings.file_dir_expiry, 3600.0), self._sweep)

    # --- signals ------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            self.loop.call_soon_threadsafe(lambda: self._stop(signal.Signals(signum).name))

        def hup(_signum: int, _frame: Any) -> None:
            self.loop.call_soon_threadsafe(self._on_hup)

        def usr1(_signum: int, _frame: Any) -> None:
            self.loop.call_soon_threadsafe(lambda: self.session.request_reconfigure("SIGUSR1"))

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, stop)
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGUSR1, usr1)

    def _on_hup(self) -> None:
        log.info("[%s] received HUP: reloading settings and reconfiguring", self.node)
        self._file_stamp = self._stamp()
        self.reload()
        self.session.request_reconfigure("SIGHUP")

    def _stop(self, why: str) -> None:
        log.info("[%s] received %s, shutting down", self.node, why)
        self.loop.stop()

    # --- run -------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        log.info("[%s] Push Client %s starting: org %s, server %s, key %s, incarnation %s%s",
                 self.node, _version(), s.org, s.chef_server_url, s.client_key,
                 self.session.incarnation_id,
                 ", unencrypted fallback allowed" if s.allow_unencrypted else "")
        self.session.start()
        self.loop.call_later(s.whitelist_poll_interval, self._watch)
        self.loop.call_later(0, self._sweep)
        try:
            self.loop.run()
        finally:
            self.session.stop()
            self.jobs.shutdown()
            self.loop.close()
            log.info("[%s] Push Client stopped", self.node)
        return self.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"Push Client: {_version()}")
        return 0
    # until the settings say where to log: warnings (e.g. skipped client.rb lines) to stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    overrides = {k: getattr(args, k) for k in (
        "allow_unencrypted", "file_dir", "client_key", "log_level", "log_location",
        "node_name", "chef_server_url", "max_body_size")}
    try:
        path = find_config_path(args.config)
        settings = load_settings(path, overrides)
        validate_for_start(settings)
        setup_logging(settings)
        if path is None:
            log.warning("no settings file found; running on command-line options only")
        agent = Agent(settings, overrides)
    except SettingsError as exc:
        # one line: FILE:LINE: problem (prefixed with our name when no file is involved)
        print(str(exc) if exc.path else f"push-jobs-client: {exc}", file=sys.stderr)
        return 1
    agent.install_signal_handlers()
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
