"""Keys: PEM dialects, 0600 writes, PKCS#1 v1.5 session-key encryption, raw
type-1 private encrypt, CurveZMQ pairs and Z85 (§2.3, §3.3, §4.3)."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from pushjobs.protocol import ProtocolError, keys
from pushjobs.protocol.errors import REASONS

Z85_VECTOR_BYTES = bytes(range(32))
Z85_VECTOR_TEXT = "009c61o!#m2NH?C3>iWS5d]J*6CRx17-skh9337x"


def test_protocol_error_carries_reason_and_detail():
    err = ProtocolError("bad_json", "nope")
    assert err.reason == "bad_json" and err.detail == "nope"
    assert "bad_json" in str(err)
    assert {"frame_count", "bad_key", "stale"} <= REASONS


def test_z85_vector_of_section_3_3():
    assert keys.z85_encode(Z85_VECTOR_BYTES) == Z85_VECTOR_TEXT
    assert keys.z85_decode(Z85_VECTOR_TEXT) == Z85_VECTOR_BYTES
    assert keys.z85_decode(Z85_VECTOR_TEXT.encode()) == Z85_VECTOR_BYTES


def test_z85_agrees_with_libzmq():
    from zmq.utils import z85

    data = os.urandom(32)
    assert keys.z85_encode(data) == z85.encode(data).decode()


@pytest.mark.parametrize(
    "bad", ["abc", "0000~", "%%%%%%%%%%", "#####", "é0000", b"\xff\xff\xff\xff\xff", 12]
)
def test_z85_decode_bad_input_is_bad_key(bad):
    with pytest.raises(ProtocolError) as exc:
        keys.z85_decode(bad)
    assert exc.value.reason == "bad_key"


def test_z85_encode_needs_multiple_of_4():
    with pytest.raises(ProtocolError):
        keys.z85_encode(b"abc")


def test_curve_keypair_is_a_working_z85_pair():
    public, secret = keys.curve_keypair()
    assert len(public) == len(secret) == 40
    assert len(keys.z85_decode(public)) == 32
    assert zmq.curve_public(secret.encode()).decode() == public


def test_load_all_pem_dialects(data_dir, test_key):
    n = test_key.public_key().public_numbers().n
    pkcs8 = keys.load_private_key((data_dir / "test_key_pkcs8.pem").read_text())
    assert pkcs8.private_numbers().public_numbers.n == n
    for name in ("test_key_spki.pem", "test_key_pkcs1_pub.pem", "test_key.pem"):
        pub = keys.load_public_key((data_dir / name).read_bytes())
        assert pub.public_numbers().n == n


def test_pem_round_trip_forms(test_key):
    priv = keys.private_key_pem(test_key)
    assert priv.startswith("-----BEGIN RSA PRIVATE KEY-----")
    pub = keys.public_key_pem(test_key)
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    assert keys.public_key_pem(keys.load_public_key(pub)) == pub
    assert keys.private_key_pem(keys.load_private_key(priv)) == priv


@pytest.mark.parametrize("bad", ["", "not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_bad_pem_is_bad_key(bad):
    with pytest.raises(ProtocolError) as exc:
        keys.load_public_key(bad)
    assert exc.value.reason == "bad_key"
    with pytest.raises(ProtocolError):
        keys.load_private_key(bad)


def test_non_rsa_key_is_bad_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    pem = k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ProtocolError):
        keys.load_private_key(pem)
    with pytest.raises(ProtocolError):
        keys.load_public_key(
            k.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def test_write_private_key_is_0600_and_atomic(tmp_path, test_key):
    path = tmp_path / "pushy_priv.pem"
    path.write_text("old, world readable")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        keys.write_private_key(path, test_key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_private_key(path.read_bytes()).private_numbers() == test_key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["pushy_priv.pem"]  # no temp file left


def test_session_key_encrypt_decrypt(test_key):
    session = os.urandom(32)
    blob = keys.rsa_encrypt(test_key.public_key(), session)
    assert len(blob) == 256
    assert keys.rsa_decrypt(test_key, blob) == session


def test_session_key_decrypt_garbage_never_yields_the_key(test_key):
    """OpenSSL 3 uses implicit rejection (random output instead of an error for
    bad padding), so the caller checks the length: a wrong-size blob raises."""
    with pytest.raises(ProtocolError) as exc:
        keys.rsa_decrypt(test_key, b"\x00" * 10)
    assert exc.value.reason == "bad_key"
    session = os.urandom(32)
    blob = bytearray(keys.rsa_encrypt(test_key.public_key(), session))
    blob[5] ^= 0xFF
    try:
        assert keys.rsa_decrypt(test_key, bytes(blob)) != session
    except ProtocolError:
        pass


def test_raw_private_encrypt_round_trip_and_padding(test_key):
    pub = test_key.public_key()
    sig = keys.rsa_private_encrypt(test_key, b"hello")
    assert len(sig) == 256
    assert keys.rsa_public_decrypt(pub, sig) == b"hello"
    # the block really is 00 01 FF.. 00 data
    n, e = pub.public_numbers().n, pub.public_numbers().e
    em = pow(int.from_bytes(sig, "big"), e, n).to_bytes(256, "big")
    assert em.startswith(b"\x00\x01\xff\xff") and em.endswith(b"\x00hello")
    assert keys.rsa_public_decrypt(pub, sig[:-1]) is None
    assert keys.rsa_public_decrypt(pub, b"\x00" * 256) is None
    assert keys.rsa_public_decrypt(pub, b"\xff" * 256) is None
    with pytest.raises(ProtocolError):
        keys.rsa_private_encrypt(test_key, b"x" * 246)


def test_generate_rsa_key():
    k = keys.generate_rsa_key(1024)
    assert k.key_size == 1024
    assert k.public_key().public_numbers().e == 65537


def test_session_key_config_round_trip(test_key):
    session = keys.new_session_key()
    assert len(session) == keys.SESSION_KEY_BYTES == 32
    assert keys.new_session_key() != session
    encoded = keys.encrypt_session_key(test_key.public_key(), session)
    assert "\n" not in encoded
    assert keys.decrypt_session_key(test_key, encoded) == session


@pytest.mark.parametrize("encoded", ["", "!!!!", "AAAA"])
def test_decrypt_session_key_bad_input(test_key, encoded):
    with pytest.raises(ProtocolError) as exc:
        keys.decrypt_session_key(test_key, encoded)
    assert exc.value.reason == "bad_key"


def test_decrypt_session_key_wrong_length(test_key):
    encoded = keys.encrypt_session_key(test_key.public_key(), b"short")
    with pytest.raises(ProtocolError):
        keys.decrypt_session_key(test_key, encoded)


def test_parse_curve_key():
    public, _ = keys.curve_keypair()
    assert len(keys.parse_curve_key(public)) == 32
    assert keys.parse_curve_key(Z85_VECTOR_TEXT.encode()) == Z85_VECTOR_BYTES
    for bad in ("", Z85_VECTOR_TEXT[:-5], Z85_VECTOR_TEXT[:-1] + "~", "a" * 45, None):
        with pytest.raises(ProtocolError) as exc:
            keys.parse_curve_key(bad)
        assert exc.value.reason == "bad_key"
