"""keys.rsa_public_decrypt (OpenSSL) accepts exactly the PKCS#1 v1.5 type-1 blocks the
big-integer reference accepts, and recovers the same data: Chef v1.0/1.1 request
verification and every stock signer depend on it (PROTOCOL.md §10.1)."""

from __future__ import annotations

import pytest

from pushjobs.protocol import keys

KEY = keys.generate_rsa_key()
PUB = KEY.public_key()
N = PUB.public_numbers().n
K = (N.bit_length() + 7) // 8


def raw_sign(block: bytes) -> bytes:
    """`block^d mod n`: a "signature" over any block, valid padding or not."""
    d = KEY.private_numbers().d
    return pow(int.from_bytes(block, "big"), d, N).to_bytes(K, "big")


def reference(signature: bytes):
    """The pure-Python check this module used before OpenSSL did it."""
    if len(signature) != K:
        return None
    s = int.from_bytes(signature, "big")
    if s >= N:
        return None
    em = pow(s, PUB.public_numbers().e, N).to_bytes(K, "big")
    if em[0:2] != b"\x00\x01":
        return None
    sep = em.find(b"\x00", 2)
    if sep < 10 or em[2:sep] != b"\xff" * (sep - 2):
        return None
    return em[sep + 1:]



BLOCKS = {
    "valid": b"\x00\x01" + b"\xff" * (K - 3 - 20) + b"\x00" + b"x" * 20,
    "valid_empty_data": b"\x00\x01" + b"\xff" * (K - 3) + b"\x00",
    "valid_8_ff": b"\x00\x01" + b"\xff" * 8 + b"\x00" + b"d" * (K - 11),
    "only_7_ff": b"\x00\x01" + b"\xff" * 7 + b"\x00" + b"d" * (K - 10),
    "type_2": b"\x00\x02" + b"\xff" * (K - 3 - 20) + b"\x00" + b"x" * 20,
    "no_separator": b"\x00\x01" + b"\xff" * (K - 2),
    "non_ff_padding": b"\x00\x01" + b"\xff" * 20 + b"\xfe" + b"\xff" * (K - 3 - 21 - 20) + b"\x00" + b"x" * 20,
    "leading_nonzero": b"\x01\x01" + b"\xff" * (K - 3 - 20) + b"\x00" + b"x" * 20,
    "data_with_zeros": b"\x00\x01" + b"\xff" * (K - 3 - 20) + b"\x00" + b"\x00x" * 10,
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_recovery_matches_the_reference(name):
    block = BLOCKS[name]
    assert len(block) == K
    sig = raw_sign(block)
    assert keys.rsa_public_decrypt(PUB, sig) == reference(sig)


def test_valid_blocks_recover_their_data():
    assert keys.rsa_public_decrypt(PUB, raw_sign(BLOCKS["valid"])) == b"x" * 20
    assert keys.rsa_public_decrypt(PUB, raw_sign(BLOCKS["valid_empty_data"])) == b""
    assert keys.rsa_public_decrypt(PUB, raw_sign(BLOCKS["data_with_zeros"])) == b"\x00x" * 10
    for name in ("only_7_ff", "type_2", "no_separator", "non_ff_padding", "leading_nonzero"):
        assert keys.rsa_public_decrypt(PUB, raw_sign(BLOCKS[name])) is None, name


@pytest.mark.parametrize("sig", [
    b"", b"\x00" * (K - 1), b"\x00" * (K + 1), b"\x00" * K, b"\xff" * K, (N).to_bytes(K, "big"),
    (N + 1).to_bytes(K, "big"),
])
def test_bad_sizes_and_values_are_none(sig):
    assert keys.rsa_public_decrypt(PUB, sig) is None
    assert reference(sig) is None


def test_roundtrip_with_private_encrypt_of_every_length():
    for n in (0, 1, 35, 100, K - 11):
        data = bytes(range(256))[:n] if n <= 256 else b"a" * n
        assert keys.rsa_public_decrypt(PUB, keys.rsa_private_encrypt(KEY, data)) == data


def test_another_keys_signature_is_none():
    other = keys.generate_rsa_key()
    assert keys.rsa_public_decrypt(other.public_key(), keys.rsa_private_encrypt(KEY, b"hello")) is None


# ---------------------------------------------------------------------------
# rsa_private_encrypt: libcrypto when present, the same bytes as the Python path


def test_private_encrypt_is_the_python_computation_bit_for_bit():
    assert keys._openssl is not None, "libcrypto not found: signing falls back to pure Python (8x slower)"
    pn = KEY.private_numbers()
    for n in (0, 1, 20, 35, 150, K - 11):
        data = (b"Method:GET\nHashed Path:" * 20)[:n]
        assert keys.rsa_private_encrypt(KEY, data) == keys._py_private_encrypt(pn, data, K)


def test_private_encrypt_with_more_keys_than_the_cache_and_from_threads():
    import threading

    many = [keys.generate_rsa_key(1024) for _ in range(3)]
    old_max = keys._OpenSSLPrivateEncrypt.MAX_KEYS
    keys._OpenSSLPrivateEncrypt.MAX_KEYS = 1  # the others take the per-call path
    errors: list = []

    def sign_all() -> None:
        try:
            for _ in range(5):
                for k in many:
                    sig = keys.rsa_private_encrypt(k, b"hello")
                    assert sig == keys._py_private_encrypt(k.private_numbers(), b"hello", 128)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=sign_all) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        keys._OpenSSLPrivateEncrypt.MAX_KEYS = old_max
    assert errors == []


def test_pure_python_fallback_when_asked():
    import os
    import subprocess
    import sys

    code = ("from pushjobs.protocol import keys; k = keys.generate_rsa_key(1024); "
            "assert keys._openssl is None; s = keys.rsa_private_encrypt(k, b'x'); "
            "assert keys.rsa_public_decrypt(k.public_key(), s) == b'x'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PUSHJOBS_PURE_PYTHON_RSA": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_z85_fast_path_agrees_with_the_careful_loop():
    """Well-formed text takes the table-driven path; its bytes are the loop's, and every
    malformed text still gets the loop's own error."""
    import os

    for n in (0, 4, 32, 64):
        for _ in range(200):
            raw = os.urandom(n)
            text = keys.z85_encode(raw)
            assert keys._z85_decode_fast(text) == raw
            assert keys.z85_decode(text) == raw == keys.z85_decode(text.encode())
    cases = {"#####": "out of range", "%%%%%" * 8: "out of range", "abc": "multiple of 5",
             "ab~cd": "invalid Z85 character '~'", "é1234": "invalid Z85 character 'é'",
             "ab\x00cd": "invalid Z85 character"}
    for text, message in cases.items():
        assert keys._z85_decode_fast(text) is None
        with pytest.raises(keys.ProtocolError, match=message):
            keys.z85_decode(text)
