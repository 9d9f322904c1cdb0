"""Property tests: the address validator against a plain reference of the DESIGN algorithm."""

from __future__ import annotations

from Crypto.Hash import KangarooTwelve
from hypothesis import given
from hypothesis import strategies as st

from qubix_cli.errors import InvalidInput
from qubix_cli.qubic import identity_from_public_key, public_key_from_identity, validate_identity


def reference_identity(key: bytes) -> str:
    """DESIGN.md, written out the long way."""
    letters = ""
    for word in range(4):
        value = int.from_bytes(key[word * 8 : word * 8 + 8], "little")
        for _ in range(14):
            letters += "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[value % 26]
            value //= 26
    check = int.from_bytes(KangarooTwelve.new(data=key).read(3), "little") & 0x3FFFF
    for _ in range(4):
        letters += "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[check % 26]
        check //= 26
    return letters


@given(st.binary(min_size=32, max_size=32))
def test_identities_match_the_reference(key: bytes) -> None:
    identity = identity_from_public_key(key)
    assert identity == reference_identity(key)
    assert validate_identity(identity) == identity


@given(st.text(max_size=70))
def test_anything_else_is_refused_or_is_a_real_identity(text: str) -> None:
    try:
        validate_identity(text)
    except InvalidInput:
        return
    assert text == reference_identity(public_key_from_identity(text))


@given(st.binary(min_size=32, max_size=32), st.integers(0, 59), st.sampled_from("ABCXYZ"))
def test_any_changed_letter_is_refused(key: bytes, position: int, letter: str) -> None:
    identity = identity_from_public_key(key)
    changed = identity[:position] + letter + identity[position + 1 :]
    if changed == identity:
        return
    try:
        validate_identity(changed)
    except InvalidInput:
        return
    # A change in the key part may, rarely, land on another valid key with the same checksum.
    assert changed == reference_identity(public_key_from_identity(changed))
