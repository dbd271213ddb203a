"""The config document (§2.2) and the two ZeroMQ sockets of one session (§3.1).

* SUB to `out_addr`, subscribed to everything, for the RSA-signed server
  heartbeats (never encrypted).
* DEALER to `command_addr` with CurveZMQ (client pair generated once per
  session, server key from the config), `LINGER 0`, `SNDHWM 3`, `RCVHWM 0`
  and non-blocking sends only: a dead server must never block the agent, and
  a restarted server must not be flooded with stale heartbeats.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any, Optional

import zmq

from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.keys import load_public_key, rsa_decrypt, z85_decode

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The config document cannot be used (missing field, undecryptable key...)."""


@dataclass(frozen=True)
class ServerConfig:
    """What the config handshake gave us (PROTOCOL.md §2.2), in usable form."""

    out_addr: str
    command_addr: str
    interval: float
    offline_threshold: int
    online_threshold: int
    public_key: Any  # RSA public key of the server (verifies heartbeats)
    curve_public_key: Optional[str]  # None: legacy (unencrypted) server
    session_key: Optional[bytes]
    lifetime: float
    max_message_skew: float
    max_body_size: int
    incarnation_id: Optional[str]
    host: str = ""
    # our server's marker (`"pushjobs": {"version": .., "node_facts": true}`);
    # None for the original server, which has no such field
    pushjobs: Optional[dict] = None

    @property
    def encrypted(self) -> bool:
        return self.curve_public_key is not None

    @property
    def node_facts(self) -> bool:
        """True only when the server says it takes node facts at `…/nodes/NODE`.

        Behind a Chef server that URL is Chef's own node API: a PUT there
        would replace the node's run list and attributes, so without the
        marker (the original server) facts are never sent.
        """
        return bool(self.pushjobs and self.pushjobs.get("node_facts") is True)


def _field(doc: dict, *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            raise ConfigError(f"config has no {'.'.join(path)}")
        cur = cur[p]
    return cur


def parse_config(doc: dict, private_key: Any) -> ServerConfig:
    """Validate the config document and decrypt the session key."""
    hb = _field(doc, "push_jobs", "heartbeat")
    out_addr, command_addr = _field(hb, "out_addr"), _field(hb, "command_addr")
    for name, addr in (("out_addr", out_addr), ("command_addr", command_addr)):
        if not isinstance(addr, str) or "://" not in addr:
            raise ConfigError(f"config {name} is not a ZeroMQ address: {addr!r}")
    interval = _field(hb, "interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ConfigError(f"config interval must be a positive number: {interval!r}")
    try:
        public_key = load_public_key(_field(doc, "public_key"))
    except ProtocolError as exc:
        raise ConfigError(f"config public_key: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config public_key: {exc}") from None
    curve = doc.get("curve_public_key")
    if curve is not None:
        if not isinstance(curve, str):
            raise ConfigError("config curve_public_key is not a string")
        try:
            if len(z85_decode(curve)) != 32:
                raise ConfigError("config curve_public_key is not a 32-byte Z85 key")
        except ProtocolError:
            raise ConfigError("config curve_public_key is not valid Z85") from None
    session_key = None
    esk = doc.get("encoded_session_key")
    if esk is not None:
        try:
            blob = base64.b64decode(_field(esk, "key"), validate=False)
            session_key = rsa_decrypt(private_key, blob)
        except (ConfigError, binascii.Error, ValueError, TypeError, ProtocolError) as exc:
            raise ConfigError(f"No session key found in config (cannot decrypt it with the "
                              f"client key: {exc})") from None
        if len(session_key) != 32:
            # OpenSSL 3 "implicit rejection" turns a wrong key into random bytes
            raise ConfigError("No session key found in config (decrypted key is not 32 bytes: "
                              "is client_key the key the server has for this node?)")
    elif curve is not None:
        raise ConfigError("No session key found in config")

    def num(name: str, default: float) -> float:
        v = doc.get(name, default)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else default

    def count(name: str, default: int) -> int:
        v = hb.get(name, default)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default

    inc = doc.get("incarnation_id")
    marker = doc.get("pushjobs")
    return ServerConfig(
        out_addr=out_addr, command_addr=command_addr, interval=float(interval),
        offline_threshold=count("offline_threshold", 3), online_threshold=count("online_threshold", 2),
        public_key=public_key, curve_public_key=curve, session_key=session_key,
        lifetime=num("lifetime", 3600.0), max_message_skew=num("max_message_skew", 300.0),
        max_body_size=int(num("max_body_size", 65536)),
        incarnation_id=inc if isinstance(inc, str) else None,
        host=str(doc.get("host", "")),
        pushjobs=marker if isinstance(marker, dict) else None)


class Connection:
    """The SUB + DEALER pair of one session; closed and rebuilt on reconfigure."""

    def __init__(self, context: zmq.Context, config: ServerConfig,
                 curve_keys: Optional[tuple[str, str]]):
        self.config = config
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 3)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        # bounded reconnects of libzmq itself (the session does the real backoff)
        self.dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        self.dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        if config.encrypted and curve_keys is not None:
            public, secret = curve_keys
            self.dealer.curve_serverkey = config.curve_public_key.encode("ascii")
            self.dealer.curve_publickey = public.encode("ascii")
            self.dealer.curve_secretkey = secret.encode("ascii")
        try:
            self.sub.connect(config.out_addr)
            self.dealer.connect(config.command_addr)
        except zmq.ZMQError:  # an address libzmq refuses: no half-built pair left behind
            self.sub.close(linger=0)
            self.dealer.close(linger=0)
            raise
        self.closed = False

    def send(self, frames: list[bytes]) -> bool:
        """Non-blocking send; False when the queue is full (SNDHWM) or the socket is gone."""
        if self.closed:
            return False
        try:
            self.dealer.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.warning("send failed: %s", exc)
            return False

    @staticmethod
    def drain(sock: zmq.Socket, limit: int = 1000) -> list[list[bytes]]:
        """Every multipart message waiting on `sock` (bounded per call)."""
        out: list[list[bytes]] = []
        for _ in range(limit):
            try:
                out.append(sock.recv_multipart(flags=zmq.NOBLOCK))
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                log.warning("receive failed: %s", exc)
                break
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sub.close(linger=0)
        self.dealer.close(linger=0)
