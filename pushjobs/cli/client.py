"""The CLI's HTTP client: Chef-signed requests to the org's API, errors made into one line.

Every failure becomes a `CliError(message, exit_code)`; the entry point prints
the message as a single `ERROR:` line. The exit codes are part of the CLI's
contract (see `pushjobs.cli.main`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import quote

import requests

from pushjobs.cli.config import Config

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SERVER_ERROR = 4

HTTP_TIMEOUT = 30.0
USER_AGENT = "pushjobs-cli"

HUMAN = {
    400: "bad request",
    401: "authentication failed",
    403: "not authorized",
    404: "not found",
    405: "method not allowed",
    406: "not acceptable",
    409: "conflict",
    413: "request too large",
    415: "unsupported media type",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
}


class CliError(Exception):
    """A failure to report on one line, with the process exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER_ERROR, status: Optional[int] = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # exactly one line
        self.exit_code = exit_code
        self.status = status


def server_message(resp: requests.Response) -> str:
    """The server's error text: `{"error": [..]}` or `{"error": ".."}`, else the body's first line."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        if isinstance(err, list):
            return "; ".join(str(e) for e in err)
        return str(err)
    text = (resp.text or "").strip()
    if text.startswith("<"):  # an HTML error page: keep the status only
        return ""
    return text.splitlines()[0][:200] if text else ""


def _load_key(path: str) -> Any:
    from pushjobs.protocol.keys import load_private_key

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise CliError(f"cannot read key file {path}: {e.strerror}", EXIT_USAGE) from None
    try:
        return load_private_key(pem)
    except Exception:  # noqa: BLE001 - any parse failure is the same user error
        raise CliError(f"key file {path} is not an RSA private key in PEM format", EXIT_USAGE) from None


class ApiClient:
    """Signs each request as `config.user` with the key at `config.key`."""

    def __init__(self, config: Config, timeout: float = HTTP_TIMEOUT):
        self.config = config
        self.timeout = timeout
        self._key = _load_key(config.key)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # passed on each request: requests lets REQUESTS_CA_BUNDLE override `session.verify`
        self.verify: bool | str = True
        if config.insecure:
            self.verify = False
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        elif config.ca_file:
            # checked here, before any request: requests would raise a bare OSError mid-request
            if not os.path.isfile(config.ca_file):
                src = config.sources.get("ca_file", "--ca-file")
                raise CliError(f"CA file {config.ca_file} (from {src}) not found", EXIT_USAGE)
            self.verify = config.ca_file

    def path(self, rel: str) -> str:
        """`pushy/jobs` -> `/organizations/ORG/pushy/jobs` (the server URL's path prefix kept)."""
        return f"{self.config.org_path}/{rel.lstrip('/')}"

    def request(
        self,
        method: str,
        rel: str,
        *,
        json_body: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        accept: str = "application/json",
        stream: bool = False,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> requests.Response:
        from pushjobs.protocol.chef_auth import sign_request

        method = method.upper()
        path = self.path(rel)
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        hdrs = {"Accept": accept, "X-Ops-Server-API-Version": "1"}
        hdrs.update(sign_request(self._key, self.config.user, method, path, body))
        if json_body is not None:
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        url = self.config.base_url + path
        log.debug("%s %s", method, url)
        try:
            resp = self.session.request(
                method, url, data=body or None, params=params, headers=hdrs, stream=stream, verify=self.verify,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except requests.exceptions.SSLError as e:
            if _wrong_scheme(e):
                raise CliError(
                    f"TLS handshake with {self.config.base_url} failed: the server does not speak HTTPS "
                    "(check the URL scheme: http:// vs https://)",
                    EXIT_UNREACHABLE,
                ) from None
            raise CliError(
                f"TLS error talking to {self.config.base_url}: {_reason(e)} "
                "(use --ca-file PEM to trust its certificate, or --insecure)",
                EXIT_UNREACHABLE,
            ) from None
        except requests.exceptions.Timeout:
            raise CliError(f"server {self.config.base_url} did not answer in time", EXIT_UNREACHABLE) from None
        except requests.exceptions.ConnectionError as e:
            if self.config.base_url.startswith("http://") and _reset(e):
                raise CliError(
                    f"server {self.config.base_url} closed the connection: it may expect HTTPS "
                    "(check the URL scheme: http:// vs https://)",
                    EXIT_UNREACHABLE,
                ) from None
            raise CliError(f"cannot reach server {self.config.base_url}: {_reason(e)}", EXIT_UNREACHABLE) from None
        except requests.exceptions.RequestException as e:
            raise CliError(f"request to {url} failed: {_reason(e)}", EXIT_UNREACHABLE) from None
        if resp.status_code not in ok:
            msg = server_message(resp)
            human = HUMAN.get(resp.status_code, resp.reason or "error")
            raise CliError(
                f"{method} {path}: {resp.status_code} {human}" + (f": {msg}" if msg else ""),
                EXIT_SERVER_ERROR,
                status=resp.status_code,
            )
        return resp

    def get_json(self, rel: str, **kw: Any) -> Any:
        resp = self.request("GET", rel, **kw)
        try:
            return resp.json()
        except ValueError:
            raise CliError(f"GET {self.path(rel)}: the server sent invalid JSON", EXIT_SERVER_ERROR) from None

    def post_json(self, rel: str, body: Any, **kw: Any) -> Any:
        resp = self.request("POST", rel, json_body=body, **kw)
        try:
            return resp.json() if resp.content else {}
        except ValueError:
            return {}

    def stream_lines(self, rel: str, last_event_id: Optional[str] = None, read_timeout: float = 60.0) -> Iterator[str]:
        """The text of an SSE feed, chunk by chunk, until the server closes it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        resp = self.request("GET", rel, accept="text/event-stream", stream=True, headers=headers,
                            timeout=(self.timeout, read_timeout))
        try:
            for chunk in resp.iter_content(chunk_size=None, decode_unicode=False):
                if chunk:
                    yield chunk.decode("utf-8", errors="replace")
        except requests.exceptions.RequestException as e:
            log.debug("feed %s ended: %s", rel, e)
        finally:
            resp.close()


_WRONG_SCHEME_MARKERS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure",
                         "packet length too long", "http request", "UNEXPECTED_RECORD")


def _wrong_scheme(exc: Exception) -> bool:
    """An SSL error that means the peer answered in plain HTTP (https:// URL, http server)."""
    text = str(exc)
    return any(m.lower() in text.lower() for m in _WRONG_SCHEME_MARKERS)


def _reset(exc: Exception) -> bool:
    """The peer dropped the connection (what an HTTPS server does with a plain-HTTP request)."""
    text = str(exc)
    return ("Connection reset" in text or "ConnectionResetError" in text or "RemoteDisconnected" in text
            or "Connection aborted" in text)


def _reason(exc: Exception) -> str:
    """The innermost useful reason of a requests/urllib3 exception, on one line.

    urllib3 wraps the OS error as `...: [Errno 111] Connection refused'))` or
    `...: [Errno 111] Connection refused"))`; keep only the OS text, no quotes or parentheses.
    """
    text = " ".join(str(exc).split())
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1).strip().rstrip(".")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    if "Connection refused" in text:
        return "connection refused"
    return text[:200]


def quote_segment(s: str) -> str:
    """A URL path segment (node names and job ids may hold characters needing escapes)."""
    return quote(s, safe="")
