import os

import pytest

from qubix_cli.errors import InvalidInput
from qubix_cli.qubic import identity_from_public_key, public_key_from_identity, validate_identity

ZERO = "A" * 56 + "FXIB"


def test_the_all_zero_key_has_the_documented_identity() -> None:
    assert identity_from_public_key(bytes(32)) == ZERO
    assert public_key_from_identity(ZERO) == bytes(32)


@pytest.mark.parametrize("position", range(60))
def test_changing_any_one_letter_is_rejected(position: int) -> None:
    letter = "B" if ZERO[position] != "B" else "C"
    with pytest.raises(InvalidInput):
        validate_identity(ZERO[:position] + letter + ZERO[position + 1 :])


@pytest.mark.parametrize(
    "bad",
    [ZERO.lower(), ZERO[:-1], ZERO + "A", ZERO[:-1] + "1", ZERO[:-1] + "É", "", " " + ZERO[1:]],
)
def test_case_length_and_alphabet_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_identity(bad)


def test_a_key_word_out_of_range_is_rejected() -> None:
    # 14 base-26 digits can hold more than 64 bits; "Z" * 14 is above 2**64.
    with pytest.raises(InvalidInput, match="out of range"):
        validate_identity("Z" * 14 + ZERO[14:])


def test_random_keys_round_trip() -> None:
    for _ in range(200):
        key = os.urandom(32)
        identity = identity_from_public_key(key)
        assert len(identity) == 60 and identity.isalpha() and identity.isupper()
        assert public_key_from_identity(identity) == key
