"""Object IDs: 25 base-36 characters, like SwarmKit's; random, or from a digest."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.digits + string.ascii_lowercase
ID_LENGTH = 25


def _encode(n: int) -> str:
    out = []
    for _ in range(ID_LENGTH):
        n, digit = divmod(n, 36)
        out.append(_ALPHABET[digit])
    return "".join(out)


def new_id() -> str:
    # One draw from the OS for the whole id (not one per character: ids are made
    # for every task, and per-character draws showed in the scale profile).
    return _encode(secrets.randbelow(36**ID_LENGTH))


def id_from_digest(digest: bytes) -> str:
    """An id that is a function of digest (SHA-256 or longer: 36**25 is ~2**129),
    in the same form as new_id's, so nothing downstream can tell them apart."""
    if len(digest) < 32:
        raise ValueError("id_from_digest needs a digest of at least 256 bits")
    return _encode(int.from_bytes(digest, "big") % 36**ID_LENGTH)
