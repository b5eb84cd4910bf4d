"""Object IDs: 25 random base-36 characters, like SwarmKit's."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.digits + string.ascii_lowercase
ID_LENGTH = 25


def new_id() -> str:
    # One draw from the OS for the whole id (not one per character: ids are made
    # for every task, and per-character draws showed in the scale profile).
    n = secrets.randbelow(36**ID_LENGTH)
    out = []
    for _ in range(ID_LENGTH):
        n, digit = divmod(n, 36)
        out.append(_ALPHABET[digit])
    return "".join(out)
