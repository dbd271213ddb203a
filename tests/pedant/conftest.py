"""The world of the original server's REST integration suite (oc-pushy-pedant), mapped to ours.

The original suite ran against a Chef server: an org `pedant-testorg-*`, an
admin user `pedant_admin_user`, a normal user `pedant_user`, an admin client
`pedant_admin_client`, a normal client `pedant_non_admin_client`, a user of
another org `pedant-nobody`, a user `invalid` that does not exist, and a
client signing with a key that is not its own. Groups were made through the
Chef groups API and deleted after each block.

Here the identities are made with the real `push-jobs-server-ctl` verbs, run
in one batch per org (one interpreter start instead of one per verb: the
machine is small). Groups cannot be deleted with the ctl, so each group
layout of the original ("no groups", "pushy_job groups", "nested groups")
gets its own org instead of being created and deleted in place.

One server serves the whole `tests/pedant` package (package scope); each
module builds the orgs it needs.
"""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.helpers.server import CtlError, Principal, ServerFactory, ServerProcess, SignedClient

ADMIN_USER = "pedant_admin_user"
NORMAL_USER = "pedant_user"
OUTSIDE_USER = "pedant-nobody"
ADMIN_CLIENT = "pedant_admin_client"
NON_ADMIN_CLIENT = "pedant_non_admin_client"
INVALID_USER = "invalid"
OUTSIDE_ORG = "pedant-outside-org"
BASE_ORG = "pedant-base-org"

#: The original's messages (PROTOCOL.md §10.2), with the names of this world.
FAILED_TO_AUTHENTICATE_AS_INVALID = [
    "Failed to authenticate as 'invalid'. Ensure that your node_name and client key are correct."]


def not_associated(org: str) -> list[str]:
    return [f"'{OUTSIDE_USER}' is not associated with organization '{org}'"]


def no_access(name: str) -> list[str]:
    return [f"User or client '{name}' does not have access to that action on this server."]


_BATCH = textwrap.dedent("""
    import contextlib, io, json, sys
    from pushjobs.server.ctl import main
    config, commands = sys.argv[1], json.loads(sys.argv[2])
    for argv in commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(["-c", config, *argv])
            except SystemExit as exc:
                rc = exc.code
        if rc:
            print(json.dumps({"argv": argv, "rc": rc, "output": out.getvalue()}))
            sys.exit(1)
""")


def ctl_batch(server: ServerProcess, commands: list[list[str]]) -> None:
    """Run several `push-jobs-server-ctl` verbs (the real `ctl.main`) in one interpreter."""
    cp = subprocess.run([sys.executable, "-c", _BATCH, str(server.config_path), json.dumps(commands)],
                        capture_output=True, text=True, timeout=120, env=server._env())
    if cp.returncode != 0:
        raise CtlError(f"ctl batch failed: {cp.stdout}\n{cp.stderr}")


@dataclass
class PedantOrg:
    """One org of the original's world and a signed HTTP client per actor."""

    server: ServerProcess
    name: str
    principals: dict[str, Principal] = field(default_factory=dict)

    def http(self, actor: str, *, version: str = "1.1", org: Optional[str] = None) -> SignedClient:
        """`admin_user`, `normal_user`, `admin_client`, `non_admin_client`, `outside_user`,
        `invalid_user`, `bad_client`: a client signing as that actor for this org."""
        return self.server.client(self.principals[actor], version=version, org=org or self.name)

    @property
    def pushy(self) -> str:
        return f"/organizations/{self.name}/pushy"


@dataclass
class PedantWorld:
    server: ServerProcess
    users: dict[str, Principal]
    client_keys: dict[str, Path]  # private key paths; the public key is beside it (.pub)
    orgs: dict[str, PedantOrg] = field(default_factory=dict)

    def make_org(self, name: str, groups: Optional[list[tuple[str, str]]] = None) -> PedantOrg:
        """An org with the original's actors; `groups` = [(group, principal spec), ...] added in order."""
        return self.make_orgs({name: groups})[name]

    def make_orgs(self, layouts: dict[str, Optional[list[tuple[str, str]]]]) -> dict[str, PedantOrg]:
        """Several orgs in one ctl batch. Every org's two clients share the package's two client
        keys (`--public-key`): generating keys per org would dominate the run time."""
        cmds: list[list[str]] = []
        for name, groups in layouts.items():
            cmds += [["org-create", name],
                     ["user-create", ADMIN_USER, "--org", name, "--admin"],
                     ["user-create", NORMAL_USER, "--org", name]]
            for cname in (ADMIN_CLIENT, NON_ADMIN_CLIENT):
                cmds.append(["client-create", cname, "--org", name,
                             "--public-key", str(self.client_keys[cname].with_suffix(".pub"))])
            # the original's admin client was created with admin: true, i.e. in `admins`
            cmds.append(["group-add", name, "admins", f"client:{ADMIN_CLIENT}"])
            for group, spec in groups or []:
                cmds.append(["group-add", name, group, spec])
        ctl_batch(self.server, cmds)
        u = self.users
        made = {}
        for name in layouts:
            org = PedantOrg(self.server, name)
            org.principals = {
                "admin_user": Principal(ADMIN_USER, "user", name, u[ADMIN_USER].key_path),
                "normal_user": Principal(NORMAL_USER, "user", name, u[NORMAL_USER].key_path),
                "outside_user": Principal(OUTSIDE_USER, "user", name, u[OUTSIDE_USER].key_path),
                "admin_client": Principal(ADMIN_CLIENT, "client", name, self.client_keys[ADMIN_CLIENT]),
                "non_admin_client": Principal(NON_ADMIN_CLIENT, "client", name,
                                              self.client_keys[NON_ADMIN_CLIENT]),
                # a user that does not exist, signing with some valid key
                "invalid_user": Principal(INVALID_USER, "user", name, u[NORMAL_USER].key_path),
                # an existing client signing with a key that is not its own
                "bad_client": Principal(NON_ADMIN_CLIENT, "client", name, u[ADMIN_USER].key_path),
            }
            self.orgs[name] = made[name] = org
        return made


@pytest.fixture(scope="package")
def pedant_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PedantWorld]:
    """One server for the package: the base org, the outside org and the three global users."""
    factory = ServerFactory(tmp_path_factory.mktemp("pedant-servers"))
    try:
        server = factory(settings={"voting_timeout": 2})
        server.keys_dir.mkdir(exist_ok=True)
        users = {n: Principal(n, "user", None, server.keys_dir / f"user-{n}.pem")
                 for n in (ADMIN_USER, NORMAL_USER, OUTSIDE_USER)}
        from pushjobs.protocol.keys import generate_rsa_key, public_key_pem, write_private_key

        client_keys = {}
        for cname in (ADMIN_CLIENT, NON_ADMIN_CLIENT):
            key = generate_rsa_key()
            client_keys[cname] = server.keys_dir / f"client-{cname}.pem"
            write_private_key(client_keys[cname], key)
            client_keys[cname].with_suffix(".pub").write_text(public_key_pem(key))
        ctl_batch(server, [
            ["org-create", BASE_ORG],
            ["user-create", ADMIN_USER, "--org", BASE_ORG, "--key-out", str(users[ADMIN_USER].key_path)],
            ["user-create", NORMAL_USER, "--org", BASE_ORG, "--key-out", str(users[NORMAL_USER].key_path)],
            ["org-create", OUTSIDE_ORG],
            ["user-create", OUTSIDE_USER, "--org", OUTSIDE_ORG, "--key-out", str(users[OUTSIDE_USER].key_path)],
        ])
        yield PedantWorld(server, users, client_keys)
    finally:
        factory.close()


# --------------------------------------------------------------------------------------
# assertions shared by the modules


def error_body(r: Any) -> Any:
    """The `error` member of a JSON error response (every error body is JSON here)."""
    assert r.headers.get("Content-Type", "").startswith("application/json"), (r.status_code, r.headers, r.text)
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    return body["error"]


def assert_error(r: Any, status: int, message: Optional[list[str] | str] = None) -> None:
    """Status, and (when given) the exact error body (`{"error": message}`; list or string shape)."""
    assert r.status_code == status, (r.status_code, r.text)
    err = error_body(r)
    if message is not None:
        assert err == message, err
    else:
        assert isinstance(err, list) and err and all(isinstance(m, str) for m in err), err


def parse_rfc1123(value: str) -> float:
    """Seconds since the epoch of an RFC 1123 GMT date (`Tue, 04 Sep 2012 23:01:02 GMT`), strictly."""
    assert isinstance(value, str) and value.endswith(" GMT"), value
    time.strptime(value, "%a, %d %b %Y %H:%M:%S GMT")
    return email.utils.parsedate_to_datetime(value).timestamp()



# --------------------------------------------------------------------------------------
# chef-pedant's shared context "handles authentication headers correctly", ported
#
# The original suite builds the Chef headers by hand (mixlib-authentication's
# algorithm) so that each can be left out, emptied or falsified; then checks
# the status. Its default signing description is `version=1.0` (no
# algorithm), its 1.3 case signs `X-Ops-Server-API-Version:0`.

_UNSET: Any = object()


def manufacture_headers(principal: Principal, method: str, path: str, body: bytes = b"", *,
                        signing_description: Any = "version=1.0", user_id: Any = _UNSET,
                        timestamp: Any = _UNSET, hashed_body: Any = _UNSET, signature: Any = _UNSET,
                        sign_method: Optional[str] = None, sign_path: Optional[str] = None,
                        string_to_sign: Optional[bytes] = None) -> dict[str, str]:
    """Chef auth headers with any part overridden; `None` leaves a header out (pedant's semantics)."""
    import base64
    import re as _re

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from pushjobs.protocol.chef_auth import canonical_request, content_hash
    from pushjobs.protocol.keys import rsa_private_encrypt
    from pushjobs.protocol.timestamps import iso8601

    m = _re.search(r"version=([0-9.]*)", signing_description or "")
    version = m.group(1) if m else "1.0"
    sign_version = version if version in ("1.0", "1.1", "1.2", "1.3") else "1.0"
    uid = principal.name if user_id is _UNSET else user_id
    ts = iso8601() if timestamp is _UNSET else timestamp
    chash = content_hash(body, sign_version) if hashed_body is _UNSET else hashed_body
    headers: dict[str, str] = {}
    if signing_description is not None:
        headers["X-Ops-Sign"] = signing_description
    if uid is not None:
        headers["X-Ops-Userid"] = uid
    if ts is not None:
        headers["X-Ops-Timestamp"] = ts
    if chash is not None:
        headers["X-Ops-Content-Hash"] = chash
    if string_to_sign is None:
        string_to_sign = canonical_request(sign_method or method, sign_path or path, chash or "", ts or "",
                                           uid or "", sign_version, "0")
    if signature is _UNSET:
        key = principal.private_key
        if sign_version == "1.3":
            raw = key.sign(string_to_sign, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = rsa_private_encrypt(key, string_to_sign)
        signature = base64.b64encode(raw).decode("ascii")
    if signature:  # Ruby: "".split(/\n/) == [] -> no X-Ops-Authorization-N at all
        for i in range(0, len(signature), 60):
            headers[f"X-Ops-Authorization-{i // 60 + 1}"] = signature[i:i + 60]
    if sign_version == "1.3":
        headers["X-Ops-Server-API-Version"] = "0"
    return headers


def _without(*names: str):
    def tamper(h: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in h.items() if k not in names}
    return tamper


def _without_last_line(h: dict[str, str]) -> dict[str, str]:
    last = max(int(k.rsplit("-", 1)[1]) for k in h if k.startswith("X-Ops-Authorization-"))
    return _without(f"X-Ops-Authorization-{last}")(h)


@dataclass(frozen=True)
class AuthCase:
    """One context of the shared suite: options for `manufacture_headers`, a post-tamper, the status."""

    id: str
    status: int  # 0 = the endpoint's success
    options: dict = field(default_factory=dict)
    tamper: Any = None  # (headers, org) -> headers
    message: Any = None  # exact `error` value where the original's message is known (§10.2)


def _iso(offset: float) -> str:
    from pushjobs.protocol.timestamps import iso8601

    return iso8601(time.time() + offset)


def _sha1_b64(text: str) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()



AUTH_CASES: list[AuthCase] = [
    AuthCase("signing protocol 1.3", 0, {"signing_description": "algorithm=sha256;version=1.3"}),
    # 1.3 signs X-Ops-Server-API-Version; absent, it is "0" (mixlib-authentication)
    AuthCase("signing protocol 1.3 without X-Ops-Server-API-Version", 0,
             {"signing_description": "algorithm=sha256;version=1.3"},
             tamper=_without("X-Ops-Server-API-Version")),
    AuthCase("everything correct", 0),
    AuthCase("missing X-Ops-Sign", 400, {"signing_description": None},
             message=["missing required authentication header(s) 'X-Ops-Sign'"]),
    AuthCase("unsupported X-Ops-Sign version", 400, {"signing_description": "version=8.1"},
             message=["Unsupported authentication protocol version"]),
    AuthCase("empty X-Ops-Sign", 400, {"signing_description": ""},
             message=["missing required authentication header(s) 'X-Ops-Sign'"]),
    # pedant skips these two; the original and we answer 400 (empty counts as missing, §10.1)
    AuthCase("missing X-Ops-Userid", 400, {"user_id": None},
             message=["missing required authentication header(s) 'X-Ops-UserId'"]),
    AuthCase("empty X-Ops-Userid", 400, {"user_id": ""},
             message=["missing required authentication header(s) 'X-Ops-UserId'"]),
    AuthCase("nonexistent username in X-Ops-Userid", 401, {"user_id": "nowaythisexists"},
             message=["Failed to authenticate as 'nowaythisexists'. "
                      "Ensure that your node_name and client key are correct."]),
    AuthCase("X-Ops-Userid does not match signature", 401,
             tamper=lambda h: {**h, "X-Ops-Userid": INVALID_USER}, message=FAILED_TO_AUTHENTICATE_AS_INVALID),
    # signed 1.1 (hashed user id): a 2000-character id does not fit a 1.0 RSA block
    AuthCase("absolutely immense X-Ops-Userid", 401,
             {"user_id": "x" * 2000, "signing_description": "algorithm=sha1;version=1.1"}),
    AuthCase("missing X-Ops-Timestamp", 400, {"timestamp": None},
             message=["missing required authentication header(s) 'X-Ops-Timestamp'"]),
    AuthCase("empty X-Ops-Timestamp", 400, {"timestamp": ""},
             message=["missing required authentication header(s) 'X-Ops-Timestamp'"]),
    AuthCase("malformed X-Ops-Timestamp", 401, {"timestamp": "xxx"},
             message=["bad header(s) 'X-Ops-Timestamp'"]),
    AuthCase("old X-Ops-Timestamp", 401, {"timestamp": "OLD"}),
    AuthCase("future X-Ops-Timestamp", 401, {"timestamp": "FUTURE"}),
    AuthCase("recent X-Ops-Timestamp", 0, {"timestamp": "RECENT"}),
    AuthCase("X-Ops-Timestamp does not match signature", 401,
             tamper=lambda h: {**h, "X-Ops-Timestamp": _iso(-30)}),
    AuthCase("missing X-Ops-Content-Hash", 400, {"hashed_body": None},
             message=["missing required authentication header(s) 'X-Ops-Content-Hash'"]),
    AuthCase("empty X-Ops-Content-Hash", 400, {"hashed_body": ""},
             message=["missing required authentication header(s) 'X-Ops-Content-Hash'"]),
    AuthCase("malformed X-Ops-Content-Hash", 401, {"hashed_body": "xxx"}),
    AuthCase("body does not match X-Ops-Content-Hash and signature", 401,
             {"hashed_body": _sha1_b64("{thisisnotevenjson}")}),
    AuthCase("X-Ops-Content-Hash does not match body and signature", 401,
             tamper=lambda h: {**h, "X-Ops-Content-Hash": _sha1_b64("{thisisnotevenjson}")}),
    # As the original: no signature lines is a signature that does not verify (401).
    AuthCase("missing signature in X-Ops-Authorization-", 401, {"signature": None}),
    AuthCase("empty signature in X-Ops-Authorization-", 401, {"signature": ""}),
    AuthCase("missing line 1 in signature", 401, tamper=_without("X-Ops-Authorization-1")),
    AuthCase("malformed signature in X-Ops-Authorization-", 401, {"signature": "xxx"}),
    AuthCase("missing a middle line in signature", 401, tamper=_without("X-Ops-Authorization-2")),
    AuthCase("missing the last line in signature", 401, tamper=_without_last_line),
    AuthCase("different method in the signature", 401, {"sign_method": "OTHER"}),
    AuthCase("different path in the signature", 401, {"sign_path": "/organizations/SomeoneElse/whatever"}),
    AuthCase("empty decoded signature", 401, {"string_to_sign": b""}),
    AuthCase("malformed decoded signature", 401, {"string_to_sign": b"XXX"}),
    AuthCase("signature does not match body and X-Ops-Content-Hash", 401, {"other_body": True}),
]


def auth_case_request(org: PedantOrg, case: AuthCase, method: str, path: str, body: bytes = b"",
                      *, actor: str = "admin_user", params: Optional[dict] = None) -> Any:
    """Send `method path` as `actor` with the headers `case` describes; returns the response."""
    import requests

    principal = org.principals[actor]
    opts = dict(case.options)
    if opts.get("timestamp") in ("OLD", "FUTURE", "RECENT"):
        opts["timestamp"] = _iso({"OLD": -3600, "FUTURE": 3600, "RECENT": -30}[opts["timestamp"]])
    if opts.get("sign_method") == "OTHER":
        opts["sign_method"] = "POST" if method == "GET" else "GET"
    other_body = opts.pop("other_body", False)
    headers = manufacture_headers(principal, method, path, body, **opts)
    if other_body:
        other = manufacture_headers(principal, method, path, b'{ "noooo" => "kh11n" }')
        headers = {k: v for k, v in headers.items() if not k.startswith("X-Ops-Authorization-")}
        headers.update({k: v for k, v in other.items() if k.startswith("X-Ops-Authorization-")})
    if case.tamper is not None:
        headers = case.tamper(headers)
    headers["Accept"] = "application/json"
    if body:
        headers["Content-Type"] = "application/json"
    return requests.request(method, org.server.base_url + path, data=body or None, headers=headers,
                            params=params, timeout=10)


def check_auth_case(r: Any, case: AuthCase, success_status: int) -> None:
    """The status of `case` (the endpoint's success status for the `0` cases) and its known message."""
    if case.status == 0:
        assert r.status_code == success_status, (case.id, r.status_code, r.text)
        return
    assert_error(r, case.status, case.message)
    if case.status == 401:
        assert r.headers.get("WWW-Authenticate") == 'X-Ops-Sign version="1.0" version="1.1"', r.headers
