"""Mosquitto password files (``mosquitto_passwd``), read for the import into
the dynamic security plugin (farmedge.provision.migrate), and the password
hash both use: ``$7$`` is PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt,
base64, the same three values the plugin keeps per client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from .dynsec import new_password
from .errors import ProvisionError

__all__ = ["check_password", "hash_password", "new_password", "passwd_users"]

_ITERATIONS = 101
_SALT_BYTES = 12


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``$7$`` line ``mosquitto_passwd`` writes for ``password``."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return (f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` or ``$6$`` hash of a password file."""
    parts = stored.split("$")
    try:
        if parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                      iterations)
        elif parts[1] == "6":
            salt, digest = parts[2], parts[3]
            got = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (IndexError, ValueError):
        return False


def passwd_users(path: Path, *, missing_ok: bool = True) -> dict[str, str]:
    """username -> stored hash, from a Mosquitto password file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            user, _, stored = line.partition(":")
            out[user] = stored.strip()
    return out
