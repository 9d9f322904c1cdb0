"""Qubic addresses: 60 letters A-Z, a public key in base 26 and a KangarooTwelve checksum.

Standard library only, so that the installers can check an address with the worker before
they install anything; the coordinator uses the same code (`qubix_cli.qubic`).
"""

from __future__ import annotations

IDENTITY_LENGTH = 60
_KEY_LETTERS = 56
_DIGITS_PER_WORD = 14
_MASK = (1 << 64) - 1
_RATE = 168  # bytes: TurboSHAKE128's
# The last 12 of Keccak's 24 round constants: KangarooTwelve runs Keccak-p[1600, 12].
_ROUND_CONSTANTS = (
    0x000000008000808B,
    0x800000000000008B,
    0x8000000000008089,
    0x8000000000008003,
    0x8000000000008002,
    0x8000000000000080,
    0x000000000000800A,
    0x800000008000000A,
    0x8000000080008081,
    0x8000000000008080,
    0x0000000080000001,
    0x8000000080008008,
)
# Rotation of lane (x, y), indexed [x][y].
_ROTATIONS = (
    (0, 36, 3, 41, 18),
    (1, 44, 10, 45, 2),
    (62, 6, 43, 15, 61),
    (28, 55, 25, 21, 56),
    (27, 20, 39, 8, 14),
)


def _rotate(lane: int, bits: int) -> int:
    return ((lane << bits) | (lane >> (64 - bits))) & _MASK if bits else lane


def _keccak_p12(state: list[int]) -> None:
    """Keccak-p[1600, 12] on 25 lanes, lane (x, y) at index x + 5y."""
    for constant in _ROUND_CONSTANTS:
        parity = [
            state[x] ^ state[x + 5] ^ state[x + 10] ^ state[x + 15] ^ state[x + 20]
            for x in range(5)
        ]
        for x in range(5):
            d = parity[(x - 1) % 5] ^ _rotate(parity[(x + 1) % 5], 1)
            for y in range(0, 25, 5):
                state[x + y] ^= d
        moved = [0] * 25
        for x in range(5):
            for y in range(5):
                moved[y + 5 * ((2 * x + 3 * y) % 5)] = _rotate(state[x + 5 * y], _ROTATIONS[x][y])
        for y in range(0, 25, 5):
            row = moved[y : y + 5]
            for x in range(5):
                state[x + y] = row[x] ^ (~row[(x + 1) % 5] & _MASK & row[(x + 2) % 5])
        state[0] ^= constant


def kangaroo_twelve(message: bytes, length: int) -> bytes:
    """KangarooTwelve with no customization string, for a message that fits one leaf
    (under 8 KiB; a Qubic key is 32 bytes): TurboSHAKE128 of message || 0x00, domain 0x07."""
    data = message + b"\x00"
    if len(data) > 8192 or length > _RATE:
        raise ValueError("only short messages and outputs are supported")
    padded = bytearray(data + b"\x07" + bytes(-(len(data) + 1) % _RATE))
    padded[-1] ^= 0x80
    state = [0] * 25
    for start in range(0, len(padded), _RATE):
        block = padded[start : start + _RATE]
        for i in range(_RATE // 8):
            state[i] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _keccak_p12(state)
    return b"".join(lane.to_bytes(8, "little") for lane in state[: _RATE // 8])[:length]


def _base26(value: int, digits: int) -> str:
    letters = []
    for _ in range(digits):
        value, digit = divmod(value, 26)
        letters.append(chr(ord("A") + digit))
    return "".join(letters)


def checksum(public_key: bytes) -> str:
    digest = kangaroo_twelve(public_key, 3)
    return _base26(int.from_bytes(digest, "little") & 0x3FFFF, 4)


def identity_from_public_key(public_key: bytes) -> str:
    """Return the 60-letter identity of a 32-byte public key."""
    if len(public_key) != 32:
        raise ValueError("a Qubic public key is 32 bytes")
    words = (public_key[i : i + 8] for i in range(0, 32, 8))
    body = "".join(_base26(int.from_bytes(w, "little"), _DIGITS_PER_WORD) for w in words)
    return body + checksum(public_key)


def public_key(identity: str) -> bytes:
    """Decode an identity's public key; ValueError, with a sentence, if it is not valid."""
    if len(identity) != IDENTITY_LENGTH or not all("A" <= c <= "Z" for c in identity):
        raise ValueError("a Qubic address is exactly 60 capital letters A-Z")
    key = b""
    for start in range(0, _KEY_LETTERS, _DIGITS_PER_WORD):
        value = 0
        for letter in reversed(identity[start : start + _DIGITS_PER_WORD]):
            value = value * 26 + ord(letter) - ord("A")
        if value >= 1 << 64:
            raise ValueError("this is not a valid Qubic address (a key word is out of range)")
        key += value.to_bytes(8, "little")
    if checksum(key) != identity[_KEY_LETTERS:]:
        raise ValueError(
            "this is not a valid Qubic address (its checksum does not match); "
            "copy it again from your wallet"
        )
    return key
