"""`pushjobs`: the workstation CLI (knife-push's verbs, plus `job abort` and `job watch`).

    pushjobs [GLOBAL OPTIONS] job list
    pushjobs [GLOBAL OPTIONS] job start COMMAND [NODE ...] [--search QUERY] [options]
    pushjobs [GLOBAL OPTIONS] job status ID
    pushjobs [GLOBAL OPTIONS] job output ID NODE [--channel stdout|stderr]
    pushjobs [GLOBAL OPTIONS] job abort ID
    pushjobs [GLOBAL OPTIONS] job watch ID
    pushjobs [GLOBAL OPTIONS] node status [NODE|QUERY ...]

Global options (accepted before the verb, and after it as knife does):
`-c/--config FILE`, `--server-url URL`, `-u/--user`, `-k/--key`, `--ca-file`, `--insecure`,
`-F/--format text|json|yaml`, `-V/--verbose`. See `pushjobs.cli.config` for
where settings come from when no flag is given.

Exit codes:
  0  success (`job start`/`job watch`: the job completed and every node succeeded)
  1  the job did not succeed: quorum failed, timed out, aborted, crashed, or a
     node did not succeed (knife-push exited 0 for nacked/unavailable nodes)
  2  bad usage, bad option value or unusable configuration
  3  the server cannot be reached (connection refused, DNS, TLS, timeout)
  4  the server refused the request (401, 403, 404 such as an unknown job, 409, 5xx)
  130 interrupted (Ctrl-C)

Every error is exactly one line on stderr, starting with `ERROR:`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn, Optional, Sequence

from pushjobs.cli import verbs
from pushjobs.cli.client import EXIT_USAGE, CliError
from pushjobs.cli.output import normalize_format

PROG = "pushjobs"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse without the usage dump: errors become one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _format(value: str) -> str:
    try:
        return normalize_format(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _nonneg_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a whole number of seconds") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: must not be negative")
    return n


def _pos_float(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a number of seconds") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: must be positive")
    return f


def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
    """Options valid before and after the verb; SUPPRESS keeps a sub-parser from resetting them."""
    d = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("global options")
    g.add_argument("-c", "--config", metavar="FILE",
                   help="read settings from this config.yml or knife.rb (instead of ~/.pushjobs, ~/.chef)", **d)
    g.add_argument("--server-url", metavar="URL", help="https://HOST:PORT/organizations/ORG", **d)
    g.add_argument("-u", "--user", metavar="NAME", help="user name to sign requests as", **d)
    g.add_argument("-k", "--key", metavar="PEM_FILE", help="the user's private key", **d)
    g.add_argument("--ca-file", metavar="PEM", help="CA certificate(s) to verify the server with", **d)
    g.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate", **d)
    g.add_argument("-F", "--format", type=_format, metavar="FORMAT",
                   help="output format: text (default), json or yaml", **d)
    g.add_argument("-V", "--verbose", action="store_true", help="log HTTP requests to stderr", **d)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run commands on many nodes at once (Chef Push Jobs compatible).")
    _add_common(p, top=True)
    from pushjobs import __version__

    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    nouns = p.add_subparsers(dest="noun", metavar="{job,node}", parser_class=_Parser)
    nouns.required = True

    job = nouns.add_parser("job", help="start, follow and inspect jobs")
    jv = job.add_subparsers(dest="verb", metavar="{list,start,status,output,abort,watch}", parser_class=_Parser)
    jv.required = True

    s = jv.add_parser("list", help="list the org's jobs")
    _add_common(s, top=False)

    s = jv.add_parser("start", help="start a job on nodes")
    s.add_argument("command", metavar="COMMAND")
    s.add_argument("nodes", nargs="*", metavar="NODE")
    s.add_argument("--timeout", type=_nonneg_int, metavar="SECONDS",
                   help="run timeout in seconds (server default 3600)")
    s.add_argument("-q", "--quorum", default="100%", metavar="N|N%",
                   help="nodes that must accept the job: a count or a percentage (default 100%%)")
    s.add_argument("-s", "--search", metavar="QUERY", help="run on the nodes matching this search query")
    s.add_argument("-b", "--nowait", "--no-wait", action="store_true", dest="nowait",
                   help="print the job id and exit without waiting")
    s.add_argument("--with-env", metavar="JSON", help='environment for the command, e.g. \'{"A":"1"}\'')
    s.add_argument("--in-dir", metavar="DIR", help="working directory on the nodes")
    s.add_argument("--file", metavar="PATH", help="send this file to the nodes (CHEF_PUSH_JOB_FILE)")
    s.add_argument("--capture", action="store_true", help="capture stdout and stderr (see `job output`)")
    s.add_argument("--as-user", metavar="USER", help="run the command as this user on the nodes")
    s.add_argument("--poll-interval", type=_pos_float, default=1.0, metavar="SECONDS",
                   help="seconds between polls when polling (default 1)")
    s.add_argument("--poll", action="store_true",
                   help="poll the job like knife-push instead of following its event feed "
                        "(for proxies that buffer server-sent events)")
    _add_common(s, top=False)

    s = jv.add_parser("status", help="show a job")
    s.add_argument("job_id", metavar="ID")
    _add_common(s, top=False)

    s = jv.add_parser("output", help="show a node's captured output of a job")
    s.add_argument("job_id", metavar="ID")
    s.add_argument("node", metavar="NODE")
    s.add_argument("--channel", default="stdout", choices=("stdout", "stderr"))
    _add_common(s, top=False)

    s = jv.add_parser("abort", help="abort a running job")
    s.add_argument("job_id", metavar="ID")
    _add_common(s, top=False)

    s = jv.add_parser("watch", help="follow a job until it ends (exit status as `job start`)")
    s.add_argument("job_id", metavar="ID")
    s.add_argument("--poll-interval", type=_pos_float, default=1.0, metavar="SECONDS",
                   help="seconds between polls when polling (default 1)")
    s.add_argument("--poll", action="store_true",
                   help="poll the job like knife-push instead of following its event feed "
                        "(for proxies that buffer server-sent events)")
    _add_common(s, top=False)

    node = nouns.add_parser("node", help="node availability")
    nv = node.add_subparsers(dest="verb", metavar="{status}", parser_class=_Parser)
    nv.required = True
    s = nv.add_parser("status", help="show whether nodes are available for jobs")
    s.add_argument("nodes", nargs="*", metavar="NODE|QUERY",
                   help="node names; an argument containing ':' is a search query")
    _add_common(s, top=False)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    fmt = getattr(args, "format", None) or "text"
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return verbs.run(args, fmt)
    except CliError as e:
        return _fail(e.message, e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0


def _fail(message: str, code: int) -> int:
    msg = " ".join(str(message).split())
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not hide the error line
        pass
    sys.stderr.write(f"ERROR: {msg}\n")
    sys.stderr.flush()
    return code


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
