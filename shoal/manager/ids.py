"""Object IDs: 25 random base-36 characters, like SwarmKit's."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.digits + string.ascii_lowercase
ID_LENGTH = 25


def new_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH))
