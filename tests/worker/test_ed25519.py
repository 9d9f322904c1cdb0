"""The worker's own Ed25519 verifier, against RFC 8032's test vectors and pycryptodome."""

from __future__ import annotations

import os

import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from qubix_cli.worker.ed25519 import verify

# RFC 8032, section 7.1: TEST 1, 2 and 3 (secret key, public key, message, signature).
VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
        "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290"
        "ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), VECTORS)
def test_the_rfc_8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert verify(key, msg, sig)
    assert not verify(key, msg + b"!", sig)  # another message
    assert not verify(key, msg, sig[:-1] + bytes([sig[-1] ^ 1]))  # a changed signature
    # pycryptodome makes the same key and signature from the same secret
    private = eddsa.import_private_key(bytes.fromhex(secret))
    assert private.public_key().export_key(format="raw") == key
    assert eddsa.new(private, "rfc8032").sign(msg) == sig


def test_what_pycryptodome_signs_checks_and_nothing_else_does() -> None:
    for _ in range(5):
        key = ECC.generate(curve="ed25519")
        public = key.public_key().export_key(format="raw")
        other = ECC.generate(curve="ed25519").public_key().export_key(format="raw")
        message = os.urandom(100)
        signature = eddsa.new(key, "rfc8032").sign(message)
        assert verify(public, message, signature)
        assert not verify(other, message, signature)
    assert not verify(public, message, b"\x00" * 64)
    assert not verify(b"\xff" * 32, message, signature)  # not a point
    assert not verify(public[:31], message, signature)
    # s >= L: the same signature with L added to s is refused (malleability)
    ell = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + ell
    assert not verify(public, message, signature[:32] + s.to_bytes(32, "little"))
