"""The job runner with real child processes."""
import os
import pwd
import sys
import threading
import time

import pytest

from pushjobs.agent.runner import (ABORTED, FAILED, SUCCEEDED, CommitRefused, JobProcess, JobSpec,
                                   check_job_options, group_alive, sweep_file_dir)

PY = sys.executable


def spec(argv, **kw):
    kw.setdefault("capture", True)
    return JobSpec(job_id=kw.pop("job_id", "a" * 32), node_name="node1", argv=tuple(argv),
                   command_line=" ".join(argv), **kw)


def run_job(s, timeout=20, **kw):
    results = []
    done = threading.Event()

    def on_exit(r):
        results.append(r)
        done.set()

    job = JobProcess(s, on_exit=on_exit, **kw)
    job.start()
    assert done.wait(timeout), "job did not finish"
    assert len(results) == 1
    return results[0], job


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_exit_codes_and_capture():
    r, _ = run_job(spec(["/bin/sh", "-c", "echo out; echo err >&2; exit 0"]))
    assert (r.status, r.exit_code, r.stdout, r.stderr) == (SUCCEEDED, 0, "out\n", "err\n")
    r, _ = run_job(spec(["/bin/sh", "-c", "exit 3"]))
    assert (r.status, r.exit_code) == (FAILED, 3)


def test_no_capture_sends_no_output():
    r, _ = run_job(spec(["/bin/echo", "hi"], capture=False))
    assert r.status == SUCCEEDED and r.stdout is None and r.stderr is None


def test_spawn_failure_is_reported_failed_not_stuck():
    r, _ = run_job(spec(["/nonexistent/binary"]))
    assert r.status == FAILED and r.exit_code is None and "cannot start" in r.stderr


def test_env_dir_and_reserved_variables(tmp_path):
    script = "import os,json;print(json.dumps(dict(os.environ)));print(os.getcwd())"
    s = spec([PY, "-c", script], dir=str(tmp_path),
             env={"FOO": "bar", "CHEF_PUSH_JOB_ID": "evil", "PUSHY_NODE_NAME": "evil"})
    r, _ = run_job(s, agent_env={"PATH": "/usr/bin:/bin", "SECRET": "x", "LC_ALL": "C.UTF-8"})
    import json
    env_line, cwd = r.stdout.strip().splitlines()
    env = json.loads(env_line)
    assert cwd == str(tmp_path)
    assert env["FOO"] == "bar"
    assert env["CHEF_PUSH_JOB_ID"] == env["PUSHY_JOB_ID"] == "a" * 32
    assert env["CHEF_PUSH_NODE_NAME"] == env["PUSHY_NODE_NAME"] == "node1"
    assert "CHEF_PUSH_JOB_FILE" not in env
    assert "SECRET" not in env and env["LC_ALL"] == "C.UTF-8" and env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] and env["LANG"]


def test_allowed_overwritable_env_vars_renames_others():
    s = spec([PY, "-c", "import os;print(os.environ.get('PATH'), os.environ.get('CHEF_PUSH_ENV_PATH'), os.environ.get('OK'))"],
             env={"PATH": "/evil", "OK": "1"})
    r, _ = run_job(s, allowed_overwritable_env_vars=["OK"])
    path, renamed, ok = r.stdout.split()
    assert path != "/evil" and renamed == "/evil" and ok == "1"


def test_job_file_is_0600_then_removed(tmp_path):
    file_dir = tmp_path / "files"
    script = ("import os,stat;p=os.environ['CHEF_PUSH_JOB_FILE'];st=os.stat(p);"
              "print(p, oct(stat.S_IMODE(st.st_mode)), open(p).read(), os.environ['PUSHY_JOB_FILE']==p)")
    r, _ = run_job(spec([PY, "-c", script], file="raw:hello: world"), file_dir=str(file_dir))
    path, mode, content1, content2, same = r.stdout.split()
    assert path.startswith(str(file_dir) + "/pushy_file") and mode == "0o600"
    assert f"{content1} {content2}" == "hello: world" and same == "True"
    assert not os.path.exists(path)
    r, _ = run_job(spec(["/bin/sh", "-c", "cat \"$CHEF_PUSH_JOB_FILE\""], file="base64:aGk="),
                   file_dir=str(file_dir))
    assert r.stdout == "hi" and os.listdir(file_dir) == []


@pytest.fixture
def shared_dir():
    """A directory `nobody` can traverse (pytest's tmp_path is 0700 root)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="pushjobs-test-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch user")
def test_user_switch_uid_gid_groups_home_and_file_owner(shared_dir):
    nobody = pwd.getpwnam("nobody")
    script = ('echo "$(id -u) $(id -g) $(id -G | tr " " ,) $HOME $USER '
              '$(stat -c %u "$CHEF_PUSH_JOB_FILE") $(cat "$CHEF_PUSH_JOB_FILE")"')
    r, _ = run_job(spec(["/bin/sh", "-c", script], user="nobody", file="raw:secret", dir="/"),
                   file_dir=os.path.join(shared_dir, "fd"))
    assert r.status == SUCCEEDED, r.stderr
    uid, gid, groups, home, user, owner, content = r.stdout.split()
    assert int(uid) == nobody.pw_uid and int(gid) == nobody.pw_gid
    assert "0" not in groups.split(",")
    assert home == nobody.pw_dir and user == "nobody" and int(owner) == nobody.pw_uid
    assert content == "secret"


def test_output_is_capped_with_a_marker():
    s = spec([PY, "-c", "import sys;sys.stdout.write('A'*5000+'B'*5000+'END')"])
    r, _ = run_job(s, max_output_bytes=1000)
    assert r.truncated and r.stdout.startswith("A" * 500) and r.stdout.endswith("END")
    assert "bytes of output dropped" in r.stdout and len(r.stdout) < 1200


TREE = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[1], 'w').write(str(os.getpid()))
    while True: time.sleep(0.1)
signal.signal(signal.SIGTERM, signal.SIG_IGN) if len(sys.argv) > 2 else None
while True: time.sleep(0.1)
"""


def _child_pid(path):
    assert wait_for(lambda: os.path.exists(path) and open(path).read())
    return int(open(path).read())


def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_abort_kills_the_whole_tree_including_a_term_ignoring_child(tmp_path):
    pidfile = str(tmp_path / "child")
    results, done = [], threading.Event()
    job = JobProcess(spec([PY, "-c", TREE, pidfile]), on_exit=lambda r: (results.append(r), done.set()),
                     term_grace=0.3)
    job.start()
    child = _child_pid(pidfile)
    t0 = time.monotonic()
    job.abort()
    assert done.wait(10)
    assert results[0].status == ABORTED
    assert _dead(child) and not group_alive(job.pid)
    assert time.monotonic() - t0 < 5


def test_an_aborted_jobs_result_comes_only_once_its_whole_group_is_gone():
    """The agent answers `aborted` on this result, so when it arrives nothing of
    the group may be alive: here the shell and its background child both
    ignore TERM and only die of the KILL after the grace period."""
    seen = []

    def on_exit(r):  # checked at the moment of the callback, on the waiter thread
        seen.append((r, group_alive(job.pid), time.monotonic()))

    job = JobProcess(spec(["/bin/sh", "-c", "trap '' TERM; sleep 30 & echo up; wait"], capture=False),
                     on_exit=on_exit, term_grace=0.4)
    job.start()
    assert wait_for(lambda: _group_has(job.pid, b"sleep")), "the TERM-ignoring child never started"
    t0 = time.monotonic()
    job.abort()
    assert wait_for(lambda: seen), "no result"
    r, alive, at = seen[0]
    assert r.status == ABORTED and not r.survivors
    assert not alive
    assert at - t0 >= 0.4  # TERM was ignored: only the KILL after the grace ended it


def _group_has(pgid, comm):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = open(f"/proc/{entry}/stat", "rb").read()
            except OSError:
                continue
            rest = data[data.rfind(b")") + 2:].split()
            if int(rest[2]) == pgid and data[data.find(b"(") + 1:data.rfind(b")")] == comm:
                return True
    return False


def test_run_timeout_kills_tree_and_reports_failed(tmp_path):
    pidfile = str(tmp_path / "child")
    r, job = run_job(spec([PY, "-c", TREE, pidfile, "ignore"], timeout=0.5), term_grace=0.3)
    child = int(open(pidfile).read())
    assert r.status == FAILED and r.timed_out and "run timeout" in r.stderr
    assert _dead(child) and not group_alive(job.pid)


def test_background_child_holding_pipes_does_not_wedge_completion():
    t0 = time.monotonic()
    r, job = run_job(spec(["/bin/sh", "-c", "sleep 30 & echo done"]), drain_timeout=0.3)
    assert r.status == SUCCEEDED and r.stdout == "done\n"
    assert time.monotonic() - t0 < 5
    os.killpg(job.pid, 9)


@pytest.mark.parametrize("opts,reason", [
    (dict(user="no-such-user-xyz"), "unknown user"),
    (dict(dir="/no/such/dir"), "does not exist"),
    (dict(file="plain text"), "raw: or base64:"),
    (dict(file="base64:@@@"), None),
    (dict(env={"A=B": "x"}), "bad env name"),
    (dict(env={"A": 1}), "must be a string"),
])
def test_commit_checks(opts, reason):
    full = dict(user=None, dir=None, env=None, file=None)
    full.update(opts)
    if reason is None:
        check_job_options(**full)  # lenient base64, like the original
        return
    with pytest.raises(CommitRefused) as exc:
        check_job_options(**full)
    assert reason in exc.value.reason


def test_commit_checks_pass(tmp_path):
    check_job_options(user=pwd.getpwuid(os.geteuid()).pw_name, dir=str(tmp_path),
                      env={"A": "b"}, file="raw:x")


def test_sweep_removes_only_old_job_files(tmp_path):
    (tmp_path / "pushy_fileold").write_text("x")
    (tmp_path / "pushy_filenew").write_text("x")
    (tmp_path / "other").write_text("x")
    old = time.time() - 100000
    os.utime(tmp_path / "pushy_fileold", (old, old))
    os.utime(tmp_path / "other", (old, old))
    assert sweep_file_dir(str(tmp_path), 86400) == 1
    assert sorted(os.listdir(tmp_path)) == ["other", "pushy_filenew"]


def test_unsafe_file_dir_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    r, _ = run_job(spec(["/bin/cat"], file="raw:x"), file_dir=str(d))
    assert r.status == FAILED and "writable only by it" in r.stderr
    assert os.listdir(d) == []
