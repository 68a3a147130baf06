"""The broker's credential files: Mosquitto's password file and ACL.

Passwords are hashed the way Mosquitto 2.0's ``mosquitto_passwd`` does it
(``$7$``: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, base64), in
Python rather than by running ``mosquitto_passwd -b``, which would put the
password on a command line where ``ps`` shows it. Files are replaced
atomically (write a temporary file, then rename), so a broker reloading on
SIGHUP never reads half a file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from .errors import ProvisionError

__all__ = [
    "DEFAULT_ACL",
    "acl_add_edge",
    "acl_add_publisher",
    "acl_remove_user",
    "check_password",
    "ensure_acl",
    "hash_password",
    "new_password",
    "passwd_remove",
    "passwd_set",
    "passwd_users",
]

_ITERATIONS = 101
_SALT_BYTES = 12

#: The ACL shipped in deploy/mosquitto/acl, written when none exists yet.
DEFAULT_ACL = """\
## farmedge broker ACL (Mosquitto acl_file). Kept by `farmedge provision`.
##
## Gateways. A gateway's username is "county/farm/gateway" (ids never hold a
## "/", so the path is unambiguous), and %u below is that username: a
## gateway may publish only under its own farm/v1/{county}/{farm}/{gateway}/#
## (telemetry, retained status, its last will) and may read nothing. Ids
## cannot hold "+" or "#" either, and Mosquitto refuses pattern access to a
## username that does.
pattern write farm/v1/%u/#

## Edge instances: read everything under farm/v1/ (telemetry, status, also
## through a shared subscription $share/GROUP/farm/v1/...), publish alerts on
## farm/v1/{county}/{farm}/alerts. `farmedge provision edge --name NAME` adds
## one block per instance; `farmedge provision revoke --edge NAME` removes it.
"""

_GATEWAY_PATTERN = "pattern write farm/v1/%u/#"


def new_password() -> str:
    """A random password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``$7$`` hash Mosquitto 2.0 stores for ``password``."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return (f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` or ``$6$`` hash of the file."""
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


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = path.stat().st_mode & 0o777 if path.exists() else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _check_username(username: str) -> None:
    if not username or any(c in username for c in ":\n\r\0"):
        raise ProvisionError(f"username {username!r} cannot go into a Mosquitto password file")


def passwd_users(path: Path) -> dict[str, str]:
    """username -> stored hash."""
    out: dict[str, str] = {}
    for line in _read(path).splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            user, _, stored = line.partition(":")
            out[user] = stored
    return out


def passwd_set(path: Path, username: str, password: str) -> None:
    """Add ``username`` or replace its password."""
    _check_username(username)
    entry = f"{username}:{hash_password(password)}"
    lines = [ln for ln in _read(path).splitlines()
             if ln.strip() and ln.partition(":")[0] != username]
    lines.append(entry)
    # Readable by the broker's group only: the hashes are salted, but not for everyone.
    _write_atomic(path, "\n".join(lines) + "\n", 0o640)


def passwd_remove(path: Path, username: str) -> bool:
    text = _read(path)
    lines = text.splitlines()
    kept = [ln for ln in lines if ln.partition(":")[0] != username]
    if len(kept) == len(lines):
        return False
    _write_atomic(path, "\n".join(kept) + ("\n" if kept else ""), 0o640)
    return True


def ensure_acl(path: Path) -> None:
    """Write the default ACL when ``path`` is missing; refuse an ACL without
    the gateway pattern, since gateways then could not publish."""
    text = _read(path)
    if not text:
        _write_atomic(path, DEFAULT_ACL, 0o644)
        return
    if _GATEWAY_PATTERN not in (ln.strip() for ln in text.splitlines()):
        raise ProvisionError(
            f"{path}: the ACL lacks the line {_GATEWAY_PATTERN!r} that lets each gateway "
            "publish under its own topics; add it before any 'user' line"
        )


_EDGE_RULES = ["topic read farm/v1/#", "topic write farm/v1/+/+/alerts"]
_PUBLISHER_RULES = ["topic write farm/v1/#"]


def _add_user(path: Path, name: str, rules: list[str], comment: str) -> bool:
    ensure_acl(path)
    text = _read(path)
    if f"user {name}" in (ln.strip() for ln in text.splitlines()):
        return False
    block = [f"# {comment}", f"user {name}", *rules]
    _write_atomic(path, text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n", 0o644)
    return True


def acl_add_edge(path: Path, name: str) -> bool:
    """Add the block of edge instance ``name`` (read farm/v1/#, write alerts);
    False when the user is already there."""
    return _add_user(path, name, _EDGE_RULES, "edge instance")


def acl_add_publisher(path: Path, name: str) -> bool:
    """Add a user that may publish as any gateway: the demo's simulated farms.
    Never give one to a real gateway."""
    return _add_user(path, name, _PUBLISHER_RULES,
                     "simulated farms (demo only): may publish as any gateway")


def acl_remove_user(path: Path, name: str) -> bool:
    """Remove ``user NAME`` and its ``topic`` lines (and its comment line)."""
    lines = _read(path).splitlines()
    out: list[str] = []
    skipping = removed = False
    for ln in lines:
        s = ln.strip()
        if s == f"user {name}":
            skipping = removed = True
            if out and out[-1].startswith("# "):
                out.pop()  # the block's own comment line
            continue
        if skipping and (s.startswith("topic ") or not s):
            continue
        skipping = False
        out.append(ln)
    if not removed:
        return False
    while out and not out[-1].strip():
        out.pop()
    _write_atomic(path, "\n".join(out) + "\n", 0o644)
    return True
