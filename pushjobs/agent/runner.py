"""Running one job: a child process in its own process group.

Why it looks like this (PROTOCOL.md §12.2, USERLAND.md §2.7, C6/C7/C12):

* The job gets its own session/process group (`start_new_session`), so an
  abort or a timeout can kill the whole tree: TERM to the group, then KILL
  after `term_grace` seconds to whatever is left (a child that ignores TERM).
* `user` switches uid, gid and the supplementary groups (initgroups), and
  HOME/USER/LOGNAME/SHELL follow the user. The environment is a sane base
  (PATH, LANG, LC_*, TZ, proxies) rather than the agent's whole environment;
  the job's `env` is merged over it, except the `CHEF_PUSH_*`/`PUSHY_*`
  variables the agent sets, which a job cannot override.
* `file` is written 0600 into `file_dir`, owned by the job's user, and
  removed when the job ends.
* Output is read by one selector thread into bounded buffers (head and tail
  kept, a marker in between), so a chatty job cannot exhaust memory and a
  background child holding the pipes open cannot wedge the agent.
* Every way a job can end (exit, signal, spawn failure, timeout, abort)
  produces exactly one `JobResult` through `on_exit`, so the agent never
  stays `running` after its job is gone. For a killed job the result comes
  only once the group is gone (or KILL failed: `survivors`), so the agent
  can answer an abort when the node is really free.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import pwd
import selectors
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESERVED_ENV = (
    "CHEF_PUSH_JOB_ID", "CHEF_PUSH_NODE_NAME", "CHEF_PUSH_JOB_FILE",
    "PUSHY_JOB_ID", "PUSHY_NODE_NAME", "PUSHY_JOB_FILE",
)
_INHERITED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "http_proxy", "https_proxy",
                  "ftp_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY")
TRUNCATION_MARKER = "\n[... pushjobs: {n} bytes of output dropped ...]\n"
FILE_PREFIX = "pushy_file"
KILL_WAIT = 2.0  # seconds to wait for the group to vanish after SIGKILL

SUCCEEDED = "succeeded"
FAILED = "failed"
ABORTED = "aborted"


class CommitRefused(Exception):
    """A commit the agent cannot honour; `reason` goes to the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    node_name: str
    argv: tuple[str, ...]
    command_line: str
    user: Optional[str] = None
    dir: Optional[str] = None
    env: Mapping[str, str] = field(default_factory=dict)
    file: Optional[str] = None  # "raw:..." or "base64:..."
    capture: bool = False
    timeout: Optional[float] = None


@dataclass(frozen=True)
class JobResult:
    job_id: str
    status: str  # succeeded | failed | aborted
    exit_code: Optional[int]  # None when killed by a signal or never started
    signal: Optional[int] = None
    stdout: Optional[str] = None  # only when capture was asked
    stderr: Optional[str] = None
    truncated: bool = False
    timed_out: bool = False
    error: Optional[str] = None
    duration: float = 0.0
    survivors: bool = False  # killed, but processes of its group outlived SIGKILL


# --- commit-time checks (PROTOCOL.md §12.2) ----------------------------------------

def decode_file(file: str) -> bytes:
    """The payload of a `raw:`/`base64:` job file; CommitRefused otherwise."""
    if not isinstance(file, str):
        raise CommitRefused("file must be a string")
    if file.startswith("raw:"):
        return file[4:].encode("utf-8", "surrogateescape")
    if file.startswith("base64:"):
        try:
            return base64.b64decode(file[7:].encode("ascii"), validate=False)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise CommitRefused("file has a base64: prefix but is not base64") from None
    raise CommitRefused("file must start with raw: or base64:")


def check_job_options(user: Optional[str], dir: Optional[str], env: Optional[Mapping],
                      file: Optional[str]) -> None:
    """The I/O checks of a commit: user exists, dir exists, env shape, file prefix."""
    if user is not None:
        if not isinstance(user, str) or not user:
            raise CommitRefused("user must be a non-empty string")
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise CommitRefused(f"unknown user {user!r}") from None
        if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
            raise CommitRefused(f"cannot run as {user!r}: the agent is not root")
    if dir is not None:
        if not isinstance(dir, str) or not os.path.isdir(dir):
            raise CommitRefused(f"dir {dir!r} does not exist")
    if env is not None:
        if not isinstance(env, Mapping):
            raise CommitRefused("env must be an object")
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or "\x00" in k:
                raise CommitRefused(f"bad env name {k!r}")
            if not isinstance(v, str) or "\x00" in v:
                raise CommitRefused(f"env {k} must be a string")
    if file is not None:
        decode_file(file)


# --- environment ------------------------------------------------------------------

def build_environment(spec: JobSpec, *, job_file: Optional[str],
                      allowed_overwritable_env_vars: Optional[Sequence[str]] = None,
                      agent_env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Sane base + job env (renamed per allowed_overwritable_env_vars) + ours."""
    source = os.environ if agent_env is None else agent_env
    env: dict[str, str] = {}
    for name, value in source.items():
        if name in _INHERITED_ENV or name.startswith("LC_"):
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    try:
        pw = pwd.getpwnam(spec.user) if spec.user else pwd.getpwuid(os.geteuid())
        env["HOME"] = pw.pw_dir
        env["USER"] = env["LOGNAME"] = pw.pw_name
        env["SHELL"] = pw.pw_shell or "/bin/sh"
    except KeyError:
        env["HOME"] = source.get("HOME", "/")
    for key, value in (spec.env or {}).items():
        if key in RESERVED_ENV:
            log.warning("[%s] job %s: env %s cannot be overridden; ignored",
                        spec.node_name, spec.job_id, key)
            continue
        if allowed_overwritable_env_vars is not None and key not in allowed_overwritable_env_vars:
            key = "CHEF_PUSH_ENV_" + key
        env[key] = value
    env["CHEF_PUSH_JOB_ID"] = env["PUSHY_JOB_ID"] = spec.job_id
    env["CHEF_PUSH_NODE_NAME"] = env["PUSHY_NODE_NAME"] = spec.node_name
    if job_file:
        env["CHEF_PUSH_JOB_FILE"] = env["PUSHY_JOB_FILE"] = job_file
    return env


def write_job_file(file_dir: str, payload: bytes, uid: Optional[int], gid: Optional[int]) -> str:
    """Create `file_dir/pushy_fileXXXX` 0600, owned by the job's user.

    `file_dir` (by default under the world-writable /tmp) must be a real
    directory owned by the agent's user and writable by nobody else:
    otherwise someone could swap the job file between write and read.
    """
    os.makedirs(file_dir, mode=0o711, exist_ok=True)
    st = os.lstat(file_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"file_dir {file_dir} is not a directory owned by uid {os.geteuid()} and "
                      "writable only by it; refusing to write the job file there")
    fd, path = tempfile.mkstemp(prefix=FILE_PREFIX, dir=file_dir)
    try:
        os.fchmod(fd, 0o600)
        if uid is not None and os.geteuid() == 0:
            os.fchown(fd, uid, gid if gid is not None else -1)
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)
    return os.path.abspath(path)


def sweep_file_dir(file_dir: str, max_age: float, now: Optional[float] = None) -> int:
    """Delete leftover job files older than `max_age` (after a crash); returns count."""
    now = time.time() if now is None else now
    removed = 0
    try:
        names = os.listdir(file_dir)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(FILE_PREFIX):
            continue
        path = os.path.join(file_dir, name)
        try:
            if now - os.lstat(path).st_mtime > max_age:
                os.unlink(path)
                removed += 1
        except OSError:
            pass
    return removed


def _unlink(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


# --- process groups ---------------------------------------------------------------

def group_alive(pgid: int) -> bool:
    """True while a non-zombie process of the group exists.

    Zombies count as gone: orphans may never be reaped when PID 1 is not a
    real init (containers), and a zombie holds no resources worth waiting for.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = None
    if entries is None:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ... ; comm may contain spaces/parens
        rest = stat[stat.rfind(b")") + 2:].split()
        if len(rest) >= 3 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            return True
    return False


def kill_group(pgid: int, grace: float, *, poll: float = 0.05, kill_wait: float = KILL_WAIT) -> bool:
    """TERM the group, KILL what is left after `grace` s; True if it is gone
    (checked for up to `kill_wait` s after the KILL)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(poll)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + kill_wait
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(poll)
    return not group_alive(pgid)


# --- output capture ---------------------------------------------------------------

class BoundedBuffer:
    """Keeps the first and last `limit/2` bytes; counts what was dropped."""

    def __init__(self, limit: int):
        self.limit = max(0, limit)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        head_room = self.limit // 2 - len(self.head)
        if head_room > 0:
            self.head += data[:head_room]
            data = data[head_room:]
        if not data:
            return
        self.tail += data
        tail_cap = self.limit - self.limit // 2
        if len(self.tail) > tail_cap:
            excess = len(self.tail) - tail_cap
            del self.tail[:excess]
            self.dropped += excess

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        head = bytes(self.head).decode("utf-8", "replace")
        tail = bytes(self.tail).decode("utf-8", "replace")
        if self.dropped:
            return head + TRUNCATION_MARKER.format(n=self.dropped) + tail
        return head + tail


def _read_pipes(pipes: dict[int, BoundedBuffer], stop: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    for fd in pipes:
        sel.register(fd, selectors.EVENT_READ)
    open_fds = set(pipes)
    try:
        while open_fds and not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                fd = key.fd
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if data:
                    pipes[fd].feed(data)
                else:
                    sel.unregister(fd)
                    open_fds.discard(fd)
    finally:
        sel.close()
        for fd in pipes:
            try:
                os.close(fd)
            except OSError:
                pass


# --- the job ----------------------------------------------------------------------

class JobProcess:
    """One running job. `start()` spawns; `on_exit(result)` is called exactly once."""

    def __init__(self, spec: JobSpec, *, on_exit: Callable[[JobResult], None],
                 file_dir: str = "/tmp/chef-push", max_output_bytes: int = 1048576,
                 term_grace: float = 5.0,
                 allowed_overwritable_env_vars: Optional[Sequence[str]] = None,
                 drain_timeout: float = 1.0, agent_env: Optional[Mapping[str, str]] = None):
        self.spec = spec
        self._on_exit = on_exit
        self.file_dir = file_dir
        self.max_output_bytes = max_output_bytes
        self.term_grace = term_grace
        self.allowed = allowed_overwritable_env_vars
        self.drain_timeout = drain_timeout
        self.agent_env = agent_env
        self.proc: Optional[subprocess.Popen] = None
        self.job_file: Optional[str] = None
        self._lock = threading.Lock()
        self._kill_reason: Optional[str] = None
        self._done = threading.Event()
        self._result: Optional[JobResult] = None
        self._started_at = 0.0

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Spawn the job; a spawn failure is reported as a `failed` result (C12)."""
        self._started_at = time.monotonic()
        spec = self.spec
        uid = gid = None
        groups: Optional[list[int]] = None
        try:
            if spec.user:
                pw = pwd.getpwnam(spec.user)
                uid, gid = pw.pw_uid, pw.pw_gid
                if os.geteuid() == 0:
                    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
                elif uid == os.geteuid():
                    uid = gid = None  # already that user; nothing to switch
            if spec.file is not None:
                self.job_file = write_job_file(self.file_dir, decode_file(spec.file), uid, gid)
            env = build_environment(spec, job_file=self.job_file,
                                    allowed_overwritable_env_vars=self.allowed,
                                    agent_env=self.agent_env)
            pipes = subprocess.PIPE if spec.capture else subprocess.DEVNULL
            kwargs: dict = {}
            if uid is not None:
                kwargs.update(user=uid, group=gid)
                if groups is not None:
                    kwargs["extra_groups"] = groups
            self.proc = subprocess.Popen(
                list(spec.argv), cwd=spec.dir or None, env=env, stdin=subprocess.DEVNULL,
                stdout=pipes, stderr=pipes, start_new_session=True, close_fds=True, **kwargs)
        except (OSError, CommitRefused, KeyError, subprocess.SubprocessError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, CommitRefused) else str(exc)
            log.error("[%s] job %s: cannot start %r: %s", spec.node_name, spec.job_id,
                      spec.command_line, reason)
            _unlink(self.job_file)
            msg = f"pushjobs: cannot start {spec.command_line!r}: {reason}\n"
            self._finish(JobResult(spec.job_id, FAILED, None, error=reason,
                                   stdout="" if spec.capture else None,
                                   stderr=msg if spec.capture else None))
            return
        log.info("[%s] job %s: started %r as pid %d%s", spec.node_name, spec.job_id,
                 spec.command_line, self.proc.pid, f" (user {spec.user})" if spec.user else "")
        threading.Thread(target=self._wait, name=f"job-{spec.job_id[:8]}", daemon=True).start()

    def abort(self, reason: str = "aborted") -> None:
        """Kill the job's process group (asynchronously); on_exit reports `aborted`."""
        with self._lock:
            if self._kill_reason is None:
                self._kill_reason = reason
        proc = self.proc
        if proc is not None and not self._done.is_set():
            threading.Thread(target=kill_group, args=(proc.pid, self.term_grace),
                             name="job-kill", daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> Optional[JobResult]:
        self._done.wait(timeout)
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _wait(self) -> None:
        assert self.proc is not None
        proc, spec = self.proc, self.spec
        buffers: dict[int, BoundedBuffer] = {}
        stop = threading.Event()
        reader = None
        if spec.capture:
            assert proc.stdout is not None and proc.stderr is not None
            out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
            proc.stdout.close()
            proc.stderr.close()
            buffers = {out_fd: BoundedBuffer(self.max_output_bytes),
                       err_fd: BoundedBuffer(self.max_output_bytes)}
            reader = threading.Thread(target=_read_pipes, args=(buffers, stop),
                                      name="job-output", daemon=True)
            reader.start()
        timed_out = False
        deadline = (time.monotonic() + spec.timeout) if spec.timeout else None
        while True:
            try:
                wait_for = None if deadline is None else max(0.0, deadline - time.monotonic())
                proc.wait(timeout=wait_for)
                break
            except subprocess.TimeoutExpired:
                timed_out = True
                with self._lock:
                    if self._kill_reason is None:
                        self._kill_reason = "timeout"
                log.warning("[%s] job %s: run timeout (%ss) reached; killing its process group",
                            spec.node_name, spec.job_id, spec.timeout)
                kill_group(proc.pid, self.term_grace)
                deadline = None
        with self._lock:
            reason = self._kill_reason
        survivors = False
        if reason is not None:
            # Aborted or timed out: make sure nothing of the tree survives
            # before reporting (the agent answers an abort on this result).
            survivors = not kill_group(proc.pid, self.term_grace)
            if survivors:
                log.warning("[%s] job %s: processes of group %d survived SIGKILL",
                            spec.node_name, spec.job_id, proc.pid)
        if reader is not None:
            reader.join(self.drain_timeout)
            stop.set()
            reader.join(1.0)
        _unlink(self.job_file)
        code = proc.returncode
        sig = -code if code is not None and code < 0 else None
        exit_code = code if code is not None and code >= 0 else None
        if reason == "timeout":
            status = FAILED
        elif reason is not None:
            status = ABORTED
        else:
            status = SUCCEEDED if code == 0 else FAILED
        stdout = stderr = None
        truncated = False
        if spec.capture:
            bufs = list(buffers.values())
            stdout, stderr = bufs[0].text(), bufs[1].text()
            truncated = bufs[0].truncated or bufs[1].truncated
            if timed_out:
                stderr += f"\n[pushjobs: killed after the run timeout of {spec.timeout}s]\n"
        log.info("[%s] job %s: %s (exit %s%s)", spec.node_name, spec.job_id, status,
                 exit_code, f", signal {sig}" if sig else "")
        self._finish(JobResult(spec.job_id, status, exit_code, sig, stdout, stderr, truncated,
                               timed_out, None, time.monotonic() - self._started_at, survivors))

    def _finish(self, result: JobResult) -> None:
        self._result = result
        self._done.set()
        try:
            self._on_exit(result)
        except Exception:  # the callback belongs to the shell; never lose the thread silently
            log.exception("[%s] job %s: completion handler failed", self.spec.node_name,
                          self.spec.job_id)
