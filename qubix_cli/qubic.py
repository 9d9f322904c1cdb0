"""Qubic identities: 60 letters A-Z, a public key in base 26 and a KangarooTwelve checksum."""

from Crypto.Hash import KangarooTwelve

from qubix_cli.errors import InvalidInput

IDENTITY_LENGTH = 60
_KEY_LETTERS = 56
_DIGITS_PER_WORD = 14


def _base26(value: int, digits: int) -> str:
    letters = []
    for _ in range(digits):
        value, digit = divmod(value, 26)
        letters.append(chr(ord("A") + digit))
    return "".join(letters)


def _checksum(public_key: bytes) -> str:
    digest = KangarooTwelve.new(data=public_key).read(3)
    return _base26(int.from_bytes(digest, "little") & 0x3FFFF, 4)


def identity_from_public_key(public_key: bytes) -> str:
    """Return the 60-letter identity of a 32-byte public key."""
    if len(public_key) != 32:
        raise ValueError("a Qubic public key is 32 bytes")
    words = (public_key[i : i + 8] for i in range(0, 32, 8))
    body = "".join(_base26(int.from_bytes(w, "little"), _DIGITS_PER_WORD) for w in words)
    return body + _checksum(public_key)


def public_key_from_identity(identity: str) -> bytes:
    """Decode an identity's public key; raise `InvalidInput` if it is not valid."""
    if len(identity) != IDENTITY_LENGTH or not all("A" <= c <= "Z" for c in identity):
        raise InvalidInput("a Qubic address is exactly 60 capital letters A-Z")
    key = b""
    for start in range(0, _KEY_LETTERS, _DIGITS_PER_WORD):
        value = 0
        for letter in reversed(identity[start : start + _DIGITS_PER_WORD]):
            value = value * 26 + ord(letter) - ord("A")
        if value >= 1 << 64:
            raise InvalidInput("this is not a valid Qubic address (a key word is out of range)")
        key += value.to_bytes(8, "little")
    if _checksum(key) != identity[_KEY_LETTERS:]:
        raise InvalidInput(
            "this is not a valid Qubic address (its checksum does not match); "
            "copy it again from your wallet"
        )
    return key


def validate_identity(identity: str) -> str:
    """Return the identity unchanged if it is valid, else raise `InvalidInput`."""
    public_key_from_identity(identity)
    return identity
