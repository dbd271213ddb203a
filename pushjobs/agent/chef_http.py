"""Chef-signed HTTP for the agent: the config handshake GET and the node facts PUT.

The agent signs as its client (the node name) with the client key, exactly
as the original client does through Chef's HTTP stack (protocol 1.1,
path without query string). Timeouts are always set: a hung server must not
hold the reconnect loop.

Proxies as with Chef's HTTP stack: the `http_proxy`/`https_proxy`/`no_proxy`
settings (client.rb's names) win, else the same variables from the
environment (requests' `trust_env`). Only HTTP goes through a proxy; the
ZeroMQ sockets always connect directly.

TLS trust as with Chef: a CA *directory* (Chef's `trusted_certs_dir`, filled
by `knife ssl fetch` with plain `*.crt` files that OpenSSL's hashed-directory
lookup would never find) is turned into one bundle: the default CAs plus
every certificate in the directory, rebuilt when the directory changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from typing import Any, Mapping, Optional
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.utils import should_bypass_proxies

from pushjobs.protocol.chef_auth import sign_request

log = logging.getLogger(__name__)


MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


def request_failure(method: str, url: str, exc: BaseException) -> str:
    """One readable line for a failed request, without any query string.

    urllib3's text repeats the full URL, whose `?ccpk=` (§2.1) is long noise in
    a log line; its `<... object at 0x...>` reprs and line breaks say nothing
    to an operator either.
    """
    text = f"{exc.__class__.__name__}: {exc}"
    text = re.sub(r"\?[^\s'\")]*", "", text)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*", "", text)
    text = " ".join(text.split())
    return f"{method} {urlsplit(url)._replace(query='').geturl()}: {text}"


class HTTPError(Exception):
    """An HTTP request failed; `status` is the HTTP status or None (network)."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class ChefHTTP:
    """A tiny signed client rooted at `chef_server_url` (…/organizations/ORG)."""

    def __init__(self, chef_server_url: str, client_name: str, private_key: Any, *,
                 verify: Any = True, timeout: float = 5.0,
                 session: Optional[requests.Session] = None,
                 proxies: Optional[Mapping[str, Optional[str]]] = None):
        self.base = chef_server_url.rstrip("/")
        self.base_path = urlsplit(self.base).path
        self.client_name = client_name
        self.private_key = private_key
        self.timeout = timeout
        self.session = session or requests.Session()
        # passed on every request: a session-level `verify` loses against
        # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in requests' environment merge
        self.verify = verify
        self._bundle: Optional[tuple[int, str]] = None  # (dir mtime_ns, bundle path)
        # {"http": URL, "https": URL, "no_proxy": "a,b"} from the settings; None values unset
        self.proxies = {k: v for k, v in (proxies or {}).items() if v}

    def proxies_for(self, url: str) -> Optional[dict[str, Optional[str]]]:
        """The `proxies` argument for one request; None lets requests use the environment."""
        scheme = urlsplit(url).scheme
        proxy, no_proxy = self.proxies.get(scheme), self.proxies.get("no_proxy")
        if proxy is None:  # the environment's proxy, minus the settings' no_proxy
            return {"no_proxy": no_proxy} if no_proxy else None
        if should_bypass_proxies(url, no_proxy=no_proxy):
            return {"http": None, "https": None}  # None values: direct, env ignored
        return {scheme: proxy}

    def close(self) -> None:
        self.session.close()
        if self._bundle is not None:
            _unlink(self._bundle[1])
            self._bundle = None

    def tls_verify(self) -> Any:
        """The `verify` argument: True/False/a CA file as given; a directory becomes a bundle."""
        verify = self.verify
        if not isinstance(verify, str) or not os.path.isdir(verify):
            return verify
        try:
            stamp = os.stat(verify).st_mtime_ns
        except OSError:
            return verify
        if self._bundle is None or self._bundle[0] != stamp:
            path = ca_bundle_from_dir(verify)
            if self._bundle is not None:
                _unlink(self._bundle[1])
            self._bundle = (stamp, path)
        return self._bundle[1]

    def request(self, method: str, rel_path: str, *, params: Optional[Mapping[str, str]] = None,
                body: bytes = b"") -> requests.Response:
        url = f"{self.base}/{rel_path.lstrip('/')}"
        if params:
            # quote(safe='') on every value: a Z85 ccpk contains + / ? & = (§2.1)
            url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        for _hop in range(MAX_REDIRECTS + 1):
            # signed per hop: the signature covers the path (without the query)
            path = urlsplit(url).path
            headers = dict(sign_request(self.private_key, self.client_name, method, path, body))
            headers["Accept"] = "application/json"
            headers["X-Chef-Version"] = "12.0.0"
            if body:
                headers["Content-Type"] = "application/json"
            try:
                r = self.session.request(method, url, data=body or None, headers=headers,
                                         timeout=self.timeout, allow_redirects=False,
                                         verify=self.tls_verify(), proxies=self.proxies_for(url))
            except requests.RequestException as exc:
                raise HTTPError(request_failure(method, url, exc)) from None
            location = r.headers.get("Location")
            # like Chef's HTTP stack: GET/HEAD follow redirects (e.g. nginx's http -> https),
            # anything else is not repeated elsewhere
            if r.status_code not in REDIRECTS or not location or method not in ("GET", "HEAD"):
                return r
            new = urljoin(url, location)
            log.info("%s %s redirected to %s", method, url, new)
            r.close()
            url = new
        raise HTTPError(f"{method} {rel_path}: more than {MAX_REDIRECTS} redirects")

    def get_json(self, rel_path: str, params: Optional[Mapping[str, str]] = None) -> dict:
        r = self.request("GET", rel_path, params=params)
        if r.status_code != 200:
            raise HTTPError(f"GET {rel_path}: HTTP {r.status_code} {r.text[:200].strip()}",
                            r.status_code)
        try:
            doc = r.json()
        except ValueError:
            raise HTTPError(f"GET {rel_path}: response is not JSON", r.status_code) from None
        if not isinstance(doc, dict):
            raise HTTPError(f"GET {rel_path}: response is not a JSON object", r.status_code)
        return doc

    def put_json(self, rel_path: str, obj: Any) -> requests.Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return self.request("PUT", rel_path, body=body)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def ca_bundle_from_dir(directory: str) -> str:
    """A temporary CA bundle: the default CAs (certifi) plus the PEM certificates in `directory`."""
    import certifi

    parts: list[str] = []
    with open(certifi.where(), encoding="ascii", errors="replace") as fh:
        parts.append(fh.read())
    added = 0
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read(1 << 20)
        except OSError:
            continue
        if "-----BEGIN CERTIFICATE-----" in text:
            parts.append(text if text.endswith("\n") else text + "\n")
            added += 1
    fd, bundle = tempfile.mkstemp(prefix="push-jobs-client-ca-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write("\n".join(parts))
    log.debug("CA bundle %s: default CAs + %d certificate file(s) from %s", bundle, added, directory)
    return bundle
