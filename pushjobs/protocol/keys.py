"""RSA keys, session-key encryption, CurveZMQ key pairs and Z85.

Chef keys travel as PEM in several dialects (PKCS#1 ``BEGIN RSA PRIVATE KEY``
from knife, PKCS#8 from newer tools, ``BEGIN RSA PUBLIC KEY`` or SPKI
``BEGIN PUBLIC KEY`` for public keys), so the loaders accept all of them.  The
raw PKCS#1 v1.5 type-1 "private encrypt" used by pushy heartbeats and by Chef
request signing v1.0/1.1 lives here too, because ``cryptography`` does not
expose it: it is done with modular exponentiation (PROTOCOL.md §4.3, §18).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from typing import Any, Optional, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import ProtocolError

__all__ = [
    "PrivateKey",
    "PublicKey",
    "generate_rsa_key",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "write_private_key",
    "rsa_encrypt",
    "rsa_decrypt",
    "rsa_private_encrypt",
    "rsa_public_decrypt",
    "SESSION_KEY_BYTES",
    "CURVE_KEY_BYTES",
    "new_session_key",
    "encrypt_session_key",
    "decrypt_session_key",
    "parse_curve_key",
    "curve_keypair",
    "z85_encode",
    "z85_decode",
]

PrivateKey = rsa.RSAPrivateKey
PublicKey = rsa.RSAPublicKey
PemData = Union[str, bytes]


def _as_bytes(pem: PemData) -> bytes:
    if isinstance(pem, str):
        return pem.encode("ascii", "replace")
    if isinstance(pem, (bytes, bytearray, memoryview)):
        return bytes(pem)
    raise ProtocolError("bad_key", f"PEM must be str or bytes, not {type(pem).__name__}")


def generate_rsa_key(bits: int = 2048) -> PrivateKey:
    """A fresh RSA key (e = 65537), e.g. for the server's ``pushy_priv`` key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def load_private_key(pem: PemData) -> PrivateKey:
    """Load an unencrypted RSA private key, PKCS#1 or PKCS#8 PEM."""
    data = _as_bytes(pem)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError("bad_key", f"cannot load RSA private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProtocolError("bad_key", "private key is not an RSA key")
    return key


def load_public_key(pem: PemData) -> PublicKey:
    """Load an RSA public key: SPKI (``BEGIN PUBLIC KEY``) or PKCS#1
    (``BEGIN RSA PUBLIC KEY``).  A private-key PEM yields its public half,
    which is handy when a settings file only names the private key."""
    data = _as_bytes(pem)
    if b"PRIVATE KEY-----" in data:
        return load_private_key(data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError("bad_key", f"cannot load RSA public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError("bad_key", "public key is not an RSA key")
    return key


def private_key_pem(key: PrivateKey) -> str:
    """PKCS#1 (``BEGIN RSA PRIVATE KEY``), the form Chef tools write."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(key: PrivateKey | PublicKey) -> str:
    """SPKI (``BEGIN PUBLIC KEY``), the form the config response and Chef use."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Write ``key`` as PKCS#1 PEM with mode 0600.

    The file is created 0600 from the start (never world-readable, not even
    for a moment) in the target directory and renamed over ``path``, so a
    reader never sees a half-written key.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    data = private_key_pem(key).encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-key-", dir=directory)  # mkstemp uses 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def rsa_encrypt(public_key: PublicKey, data: bytes) -> bytes:
    """PKCS#1 v1.5 (type 2) encryption: how the session key travels (§2.3)."""
    return public_key.encrypt(data, padding.PKCS1v15())


def rsa_decrypt(private_key: PrivateKey, data: bytes) -> bytes:
    """Inverse of :func:`rsa_encrypt`; ProtocolError(bad_key) if it fails.

    With OpenSSL 3 a wrongly padded blob may decrypt to random bytes (implicit
    rejection against timing attacks) instead of failing: callers check the
    length they expect (32 bytes for a session key)."""
    try:
        return private_key.decrypt(data, padding.PKCS1v15())
    except ValueError as exc:
        raise ProtocolError("bad_key", f"RSA decryption failed: {exc}") from None


def rsa_private_encrypt(private_key: PrivateKey, data: bytes) -> bytes:
    """Raw RSA "private encrypt" with PKCS#1 v1.5 type-1 padding, no DigestInfo.

    ``EM = 00 01 FF..FF 00 || data``; ``sig = EM^d mod n``.  This is
    OpenSSL's ``RSA_private_encrypt(RSA_PKCS1_PADDING)`` which Ruby's
    ``private_encrypt`` and Erlang's ``public_key:encrypt_private`` use.
    ``cryptography`` does not expose it, so it is done by the system's
    libcrypto when it can be loaded (ctypes, ~1 ms, the GIL released), else
    in Python big integers (~8 ms of CPU holding the GIL: the server signs a
    heartbeat every second, every Chef v1.0/1.1 request is signed this way).
    The result is the same bit for bit (type-1 padding is deterministic).
    """
    priv = private_key.private_numbers() if _openssl is None else None
    k = (private_key.key_size + 7) // 8
    if len(data) > k - 11:
        raise ProtocolError("bad_key", f"data too long for a {k * 8}-bit key")
    if _openssl is not None:
        sig = _openssl.private_encrypt(private_key, data, k)
        # Checked every time (~25 µs): a type-1 block recovers `data` only from the one
        # right signature, so what goes out is exactly what the Python path makes.
        if sig is not None and rsa_public_decrypt(private_key.public_key(), sig) == data:
            return sig
        priv = private_key.private_numbers()
    return _py_private_encrypt(priv, data, k)


def _py_private_encrypt(priv: rsa.RSAPrivateNumbers, data: bytes, k: int) -> bytes:
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    m = int.from_bytes(em, "big")
    # Chinese remainder theorem: ~3x faster than pow(m, d, n).
    s1 = pow(m, priv.dmp1, priv.p)
    s2 = pow(m, priv.dmq1, priv.q)
    h = (priv.iqmp * (s1 - s2)) % priv.p
    s = s2 + h * priv.q
    return s.to_bytes(k, "big")


class _OpenSSLPrivateEncrypt:
    """RSA_private_encrypt through libcrypto's EVP_PKEY_sign with PKCS#1 padding and no digest.

    The EVP_PKEY of the first MAX_KEYS key objects is kept for the life of
    the process, with the key object itself (so its id is never reused); a
    process with more keys builds a temporary one per call (~0.1 ms more).
    Cached ones are never freed, so a thread can never use a freed one. Any
    failure returns None and the caller computes it in Python."""

    MAX_KEYS = 64
    RSA_PKCS1_PADDING = 1

    def __init__(self, lib: Any) -> None:
        import ctypes
        import threading

        self._c = ctypes
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        lib.d2i_AutoPrivateKey.restype = vp
        lib.d2i_AutoPrivateKey.argtypes = [vp, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
        lib.EVP_PKEY_free.argtypes = [vp]
        lib.EVP_PKEY_free.restype = None
        lib.EVP_PKEY_CTX_new.restype = vp
        lib.EVP_PKEY_CTX_new.argtypes = [vp, vp]
        lib.EVP_PKEY_CTX_free.argtypes = [vp]
        lib.EVP_PKEY_CTX_free.restype = None
        lib.EVP_PKEY_sign_init.argtypes = [vp]
        lib.EVP_PKEY_CTX_set_rsa_padding.argtypes = [vp, ctypes.c_int]
        lib.EVP_PKEY_sign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(sz), ctypes.c_char_p, sz]
        self._lib = lib
        self._keys: dict[int, tuple[Any, int]] = {}  # id(key) -> (key, EVP_PKEY*), never freed
        self._lock = threading.Lock()

    def _new_pkey(self, key: PrivateKey) -> Optional[int]:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        buf = self._c.c_char_p(der)
        return self._lib.d2i_AutoPrivateKey(None, self._c.byref(buf), len(der)) or None

    def private_encrypt(self, key: PrivateKey, data: bytes, k: int) -> Optional[bytes]:
        lib, c = self._lib, self._c
        temporary = None
        with self._lock:
            hit = self._keys.get(id(key))
        if hit is not None and hit[0] is key:
            pkey = hit[1]
        else:
            pkey = self._new_pkey(key)
            if pkey is None:
                return None
            with self._lock:
                if len(self._keys) < self.MAX_KEYS and id(key) not in self._keys:
                    self._keys[id(key)] = (key, pkey)
                else:
                    temporary = pkey
        try:
            ctx = lib.EVP_PKEY_CTX_new(pkey, None)
            if not ctx:
                return None
            try:
                if (lib.EVP_PKEY_sign_init(ctx) <= 0
                        or lib.EVP_PKEY_CTX_set_rsa_padding(ctx, self.RSA_PKCS1_PADDING) <= 0):
                    return None
                out = c.create_string_buffer(k)
                n = c.c_size_t(k)
                if lib.EVP_PKEY_sign(ctx, out, c.byref(n), data, len(data)) <= 0 or n.value != k:
                    return None
                return out.raw[:k]
            finally:
                lib.EVP_PKEY_CTX_free(ctx)
        finally:
            if temporary is not None:
                lib.EVP_PKEY_free(temporary)


def _load_openssl() -> Optional[_OpenSSLPrivateEncrypt]:
    """The libcrypto helper, or None (no libcrypto 3 found, or PUSHJOBS_PURE_PYTHON_RSA=1)."""
    if os.environ.get("PUSHJOBS_PURE_PYTHON_RSA") == "1":
        return None
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("crypto")
        if not name:
            return None
        lib = ctypes.CDLL(name)
        if not hasattr(lib, "EVP_PKEY_CTX_set_rsa_padding"):  # OpenSSL 1.1: a macro, not a symbol
            return None
        return _OpenSSLPrivateEncrypt(lib)
    except (OSError, AttributeError, ImportError):
        return None


def rsa_public_decrypt(public_key: PublicKey, signature: bytes) -> bytes | None:
    """Inverse of :func:`rsa_private_encrypt`: the recovered data, or None when
    the signature has the wrong size or the padding is not a valid type-1 block.

    OpenSSL's ``RSA_public_decrypt(RSA_PKCS1_PADDING)`` through
    ``recover_data_from_signature`` with no digest (~25 µs; the same in
    Python big integers took ~200 µs, and this runs on every Chef v1.0/1.1
    request the server verifies). It checks what the Python version did:
    size, ``s < n``, ``00 01 FF..FF 00`` with at least 8 bytes of FF."""
    k = (public_key.key_size + 7) // 8
    if len(signature) != k:
        return None
    try:
        return public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError, TypeError):
        return None


#: §2.3: one 256-bit HMAC key per (org, node)
SESSION_KEY_BYTES = 32
#: §3.3: a CurveZMQ key is 32 bytes, 40 Z85 characters
CURVE_KEY_BYTES = 32


def new_session_key() -> bytes:
    """32 random bytes: the hmac_sha256 session key of one (org, node) (§2.3)."""
    return os.urandom(SESSION_KEY_BYTES)


def encrypt_session_key(public_key: PublicKey, session_key: bytes) -> str:
    """The config response's ``encoded_session_key``: base64 of the PKCS#1
    v1.5 encryption with the requestor's public key (§2.3)."""
    return base64.b64encode(rsa_encrypt(public_key, session_key)).decode("ascii")


def decrypt_session_key(private_key: PrivateKey, encoded: str) -> bytes:
    """Inverse of :func:`encrypt_session_key`, as the client does it; anything
    that does not yield exactly 32 bytes raises ProtocolError(bad_key)."""
    try:
        blob = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError, TypeError):
        raise ProtocolError("bad_key", "session key is not base64") from None
    key = rsa_decrypt(private_key, blob)
    if len(key) != SESSION_KEY_BYTES:
        raise ProtocolError("bad_key", f"session key is {len(key)} bytes, expected {SESSION_KEY_BYTES}")
    return key


def parse_curve_key(text: str | bytes) -> bytes:
    """A Z85 CurveZMQ public key (e.g. the ``ccpk`` query parameter) → 32 raw
    bytes; anything else raises ProtocolError(bad_key) (§17.2 S5)."""
    if not isinstance(text, (str, bytes, bytearray)) or len(text) != 40:
        raise ProtocolError("bad_key", "a CurveZMQ key is 40 Z85 characters")
    return z85_decode(text)


def curve_keypair() -> tuple[str, str]:
    """A fresh CurveZMQ key pair as Z85 text ``(public, secret)`` (§3.3)."""
    import zmq  # local import: the rest of this module must not need libzmq

    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


# --- Z85 (ZeroMQ RFC 32) ----------------------------------------------------

_Z85_CHARS = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_Z85_INDEX = {c: i for i, c in enumerate(_Z85_CHARS)}
_Z85_POWERS = (85**4, 85**3, 85**2, 85, 1)


def z85_encode(data: bytes) -> str:
    """Z85-encode ``data`` (length a multiple of 4; 32 bytes → 40 chars)."""
    if len(data) % 4:
        raise ProtocolError("bad_key", f"Z85 input length {len(data)} is not a multiple of 4")
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i : i + 4], "big")
        for p in _Z85_POWERS:
            out.append(_Z85_CHARS[(value // p) % 85])
    return "".join(out)


#: byte -> Z85 digit (0-84), 0xFF for a byte that is not a Z85 character
_Z85_DIGITS = bytes(_Z85_INDEX.get(chr(b), 0xFF) for b in range(256))


def _z85_decode_fast(text: str) -> Optional[bytes]:
    """The decoding of well-formed Z85 text (ASCII, Z85 characters only, length a
    multiple of 5), or None: then the careful loop decodes it and says what is
    wrong. Why: a config handshake decodes the node's `ccpk`, and the loop
    was ~12 µs of it."""
    if len(text) % 5 or not text.isascii():
        return None
    d = text.encode("ascii").translate(_Z85_DIGITS)
    if b"\xff" in d:
        return None
    out = bytearray()
    for i in range(0, len(d), 5):
        value = (((d[i] * 85 + d[i + 1]) * 85 + d[i + 2]) * 85 + d[i + 3]) * 85 + d[i + 4]
        if value > 0xFFFFFFFF:
            return None
        out += value.to_bytes(4, "big")
    return bytes(out)


def z85_decode(text: str | bytes) -> bytes:
    """Decode Z85 text; anything malformed raises ProtocolError(bad_key)."""
    if isinstance(text, str):
        fast = _z85_decode_fast(text)
        if fast is not None:
            return fast
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("bad_key", "Z85 text is not ASCII") from None
    if not isinstance(text, str):
        raise ProtocolError("bad_key", "Z85 text must be str or bytes")
    if len(text) % 5:
        raise ProtocolError("bad_key", f"Z85 length {len(text)} is not a multiple of 5")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i : i + 5]:
            digit = _Z85_INDEX.get(c)
            if digit is None:
                raise ProtocolError("bad_key", f"invalid Z85 character {c!r}")
            value = value * 85 + digit
        if value > 0xFFFFFFFF:
            raise ProtocolError("bad_key", "Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


#: libcrypto's RSA_private_encrypt, when available (see rsa_private_encrypt).
_openssl: Optional[_OpenSSLPrivateEncrypt] = _load_openssl()
