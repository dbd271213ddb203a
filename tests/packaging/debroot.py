"""A real Debian 12 root for the package tests: debootstrap, cached as a tarball.

Why a chroot and not a container: the test machine runs no container engine,
and a chroot is enough to exercise what matters here -- dpkg unpacking the
packages, the maintainer scripts (user creation, the offline virtualenv build
from the carried wheels, `push-jobs-server-ctl init`), and the installed
commands running against Debian's own python3. systemd does not run in a
chroot; the maintainer scripts detect that (no /run/systemd/system) and only
record the unit's enablement, which the tests check.

`prepared_tarball()` runs `debootstrap --variant=minbase --include=python3,
python3-venv,procps bookworm` (the packages' dependencies) once and keeps the result as
/var/cache/pushjobs-tests/bookworm-<hash>.tar (the hash covers everything
that shapes the root), so later runs only unpack it (seconds). A cold run
takes about a minute on the test machine.

`DebianRoot` gives each test module a fresh root without copying it: the
tarball is unpacked once more into a read-only tree beside it
(bookworm-<hash>.tree/), and each root is an overlayfs mount with that tree
as its lower layer, so only what the test changes is written (falls back to
unpacking the tarball when overlayfs is not available). It mounts /proc
inside, and on `close()` kills whatever the test started there, unmounts and
deletes its directory -- refusing to delete while anything is still mounted
below it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("PUSHJOBS_TEST_CACHE", "/var/cache/pushjobs-tests"))
SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("python3", "python3-venv", "procps")
MIRROR = os.environ.get("PUSHJOBS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: Bump when the way the root is prepared changes (invalidates the cache).
RECIPE = "1"
DEBOOTSTRAP_TIMEOUT = 600
TREE_MARKER = ".pushjobs-complete"

#: A minimal, predictable environment for commands run inside the root.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


def cache_key() -> str:
    text = "|".join([SUITE, VARIANT, ",".join(INCLUDE), MIRROR, RECIPE])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepared_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached tarball of a prepared root, building it on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{SUITE}-{cache_key()}.tar"
    if tarball.exists():
        return tarball
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if tarball.exists():
            return tarball
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir))
        try:
            root = work / "root"
            cmd = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}",
                   SUITE, str(root), MIRROR]
            log.info("running %s", " ".join(cmd))
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT)
            if res.returncode != 0:
                raise RuntimeError(f"debootstrap failed (rc {res.returncode}):\n"
                                   f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
            # Keep the tarball small: the package cache is not needed offline.
            for deb in (root / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                           check=True)
            partial.rename(tarball)
            # the fresh root doubles as the overlay lower layer (saves unpacking it)
            tree = tarball.with_suffix(".tree")
            _remove_tree(tree)
            root.rename(tree)
            (tree / TREE_MARKER).touch()
        finally:
            _remove_tree(work)
        # roots prepared by an older recipe are of no further use
        for stale in cache_dir.glob(f"{SUITE}-*"):
            if stale.name.startswith(tarball.stem + "."):
                continue
            if stale.is_dir():
                _remove_tree(stale)
            else:
                stale.unlink()
    return tarball


def prepared_tree(tarball: Path) -> Path:
    """The tarball unpacked once into `<tarball>.tree` (overlay lower layer)."""
    tree = tarball.with_suffix(".tree")
    done = tree / TREE_MARKER
    if done.exists():
        return tree
    with open(tarball.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return tree
        _remove_tree(tree)
        tree.mkdir()
        subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-xf", str(tarball)],
                       check=True)
        done.touch()
    return tree


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix) or target == prefix.rstrip("/"):
                found.append(target)
    return found


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    if _mounts_below(path):
        log.error("not deleting %s: still mounted: %s", path, _mounts_below(path))
        return
    # rm is much faster than shutil.rmtree on a whole root, and
    # --one-file-system never crosses into a mount that appeared meanwhile.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


ROOT_PREFIX = "pushjobs-debroot-"
OWNER_FILE = "owner.pid"
PIDS_FILE = "started.pids"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for its new parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_roots(parent: Path) -> None:
    """Remove roots left behind by a test run that was killed (its owner pid
    is gone): stop what it started there -- only processes whose root
    directory is inside that root, by their recorded id -- unmount, delete."""
    for base in parent.glob(ROOT_PREFIX + "*"):
        try:
            owner = int((base / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        root = (base / "root").resolve()
        pids_file = base / PIDS_FILE
        killed = []
        for line in pids_file.read_text().split() if pids_file.exists() else []:
            pid = int(line)
            try:
                proc_root = os.readlink(f"/proc/{pid}/root")
            except OSError:
                continue
            if proc_root == str(root) or proc_root.startswith(str(root) + "/"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
        # let them go before unmounting (a busy mount would need a lazy umount)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        for mnt in sorted(_mounts_below(base), key=len, reverse=True):
            res = subprocess.run(["umount", mnt], capture_output=True)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        log.warning("removing the stale test root %s", base)
        _remove_tree(base)


class DebianRoot:
    """One throwaway Debian root: an overlay over the cached tree."""

    def __init__(self, tarball: Path, parent: Optional[Path] = None):
        parent = parent or Path(tempfile.gettempdir())
        cleanup_stale_roots(parent)
        self.base = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=parent))
        (self.base / OWNER_FILE).write_text(str(os.getpid()))
        self.path = self.base / "root"
        self.path.mkdir()
        self._procs: list[subprocess.Popen] = []
        self._mounted: list[Path] = []
        try:
            if not self._mount_overlay(prepared_tree(tarball)):
                subprocess.run(["tar", "-C", str(self.path), "--numeric-owner", "-xf",
                                str(tarball)], check=True)
            proc_dir = self.path / "proc"
            subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
            self._mounted.append(proc_dir)
        except BaseException:
            self.close()
            raise

    def _mount_overlay(self, lower: Path) -> bool:
        upper, work = self.base / "upper", self.base / "work"
        upper.mkdir()
        work.mkdir()
        res = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(self.path)],
            capture_output=True, text=True)
        if res.returncode != 0:
            log.warning("overlayfs unavailable (%s); unpacking the tarball", res.stderr.strip())
            return False
        self._mounted.append(self.path)
        return True

    # --- files --------------------------------------------------------------
    def host_path(self, inside: str) -> Path:
        """The host path of `inside` (an absolute path in the root)."""
        return self.path / inside.lstrip("/")

    def read(self, inside: str) -> str:
        return self.host_path(inside).read_text()

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        p = self.host_path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    # --- commands -----------------------------------------------------------
    def ids(self, user: str) -> tuple[int, int]:
        """(uid, gid) of `user` in the root's /etc/passwd (not the host's)."""
        for line in self.read("/etc/passwd").splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user} in the root")

    def _argv(self, argv: Sequence[str], user: Optional[str], network: bool = True) -> list[str]:
        cmd = [] if network else ["unshare", "--net"]
        cmd.append("chroot")
        if user:
            uid, gid = self.ids(user)
            cmd.append(f"--userspec={uid}:{gid}")
        return [*cmd, str(self.path), *argv]

    def run(self, argv: Sequence[str], *, user: Optional[str] = None, check: bool = True,
            timeout: float = 300, env: Optional[dict] = None,
            network: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the root and wait for it (`network=False`: in a
        fresh network namespace with no interface up, i.e. provably offline)."""
        full_env = dict(CHROOT_ENV, **(env or {}))
        res = subprocess.run(self._argv(argv, user, network), capture_output=True, text=True,
                             timeout=timeout, env=full_env)
        if check and res.returncode != 0:
            raise AssertionError(f"in chroot: {' '.join(argv)} -> rc {res.returncode}\n"
                                 f"stdout:\n{res.stdout[-6000:]}\nstderr:\n{res.stderr[-6000:]}")
        return res

    def start(self, argv: Sequence[str], log_path: Path, *, user: Optional[str] = None,
              env: Optional[dict] = None) -> subprocess.Popen:
        """Start a long-running command inside the root in its own process group."""
        full_env = dict(CHROOT_ENV, **(env or {}))
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(self._argv(argv, user), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=full_env,
                                    start_new_session=True)
        self._procs.append(proc)
        with open(self.base / PIDS_FILE, "a") as fh:
            fh.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        """TERM the process group we started; KILL it if it overstays."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group (e.g. a gunicorn worker) may outlive its leader
        deadline = time.monotonic() + timeout
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)

    def close(self) -> None:
        """Stop what we started, unmount, delete. Safe to call twice."""
        for proc in self._procs:
            self.stop(proc, timeout=5.0)
        self._procs.clear()
        for mnt in reversed(self._mounted):
            res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, text=True)
        self._mounted.clear()
        _remove_tree(self.base)

    def __enter__(self) -> "DebianRoot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs. Zombies do not count:
    an orphaned member waits for its new parent to reap it, which may be
    never where PID 1 is not an init."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
