"""Moving a center from Mosquitto's password file and ACL (what earlier
farmedge versions provisioned) into the dynamic security plugin, without
knowing any password and without touching a gateway.

``mosquitto_passwd``'s ``$7$`` hashes are PBKDF2-HMAC-SHA512 with a 12-byte
salt, which is exactly what the plugin stores (``password``, ``salt`` and
``iterations``, base64): they are copied as they are, and every credential
keeps working. ``$6$`` hashes (Mosquitto 1.x, salted SHA-512) have no
equivalent in the plugin: those accounts are listed for re-provisioning.

- ``county/farm/gateway`` accounts become gateways with their own role. Their
  client id is bound to the bare gateway id, which is what gateways in the
  field use (``[mqtt] client_id`` unset); re-provisioning one later binds it
  to its path.
- ``user NAME`` blocks of the ACL that read ``farm/v1/#`` become edge
  instances, blocks that write ``farm/v1/#`` the demo's simulator; they are
  renamed into the service namespace (``edge`` -> ``svc~edge``) unless
  ``keep_service_names``.
- Anything else is left out, and said so.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from farmedge.contract.ids import is_valid_id

from .accounts import SERVICE_ROLES, ensure_role, gateway_acls, gateway_path, gateway_role
from .accounts import service_username as _service_username
from .broker import passwd_users
from .dynsec import DynsecFile
from .errors import ProvisionError

__all__ = ["ImportReport", "acl_services", "import_passwd", "plugin_hash"]


@dataclass
class ImportReport:
    gateways: list[str] = field(default_factory=list)
    services: list[tuple[str, str, str]] = field(default_factory=list)  # (old, new, kind)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (user, why)
    shared_client_ids: dict[str, list[str]] = field(default_factory=dict)


def plugin_hash(stored: str) -> dict[str, object] | None:
    """The plugin's password fields for a ``$7$`` hash, else None."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return None
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        return None
    if iterations <= 0 or len(salt) != 12 or len(digest) != 64:
        return None
    return {"password": parts[4], "salt": parts[3], "iterations": iterations}


def acl_services(text: str) -> dict[str, str]:
    """user -> kind ("edge" or "simulator") from the ``user`` blocks of an ACL."""
    blocks: dict[str, set[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "user":
            current = rest.strip()
            blocks.setdefault(current, set())
        elif word == "pattern":
            current = None
        elif word == "topic" and current is not None:
            blocks[current].add(" ".join(rest.split()))
    out: dict[str, str] = {}
    for user, topics in blocks.items():
        if "read farm/v1/#" in topics:
            out[user] = "edge"
        elif "write farm/v1/#" in topics or "readwrite farm/v1/#" in topics:
            out[user] = "simulator"
    return out


def _split_gateway(user: str) -> tuple[str, str, str] | None:
    parts = user.split("/")
    if len(parts) == 3 and all(is_valid_id(p) for p in parts):
        return parts[0], parts[1], parts[2]
    return None


def import_passwd(dst: DynsecFile, passwd: Path, acl: Path | None, *,
                  keep_service_names: bool = False) -> ImportReport:
    try:
        users = passwd_users(passwd, missing_ok=False)
    except FileNotFoundError:
        raise ProvisionError(f"{passwd}: no such file") from None
    try:
        services = acl_services(acl.read_text(encoding="utf-8")) if acl else {}
    except OSError as exc:
        raise ProvisionError(f"{acl}: cannot read: {exc.strerror or exc}") from None
    rep = ImportReport()
    existing = {c["username"] for c in dst.client_records()}
    legacy_ids: Counter[str] = Counter()
    legacy_of: dict[str, list[str]] = {}
    for user, stored in users.items():
        fields = plugin_hash(stored)
        if fields is None:
            rep.skipped.append((user, "its hash is not mosquitto_passwd's $7$ (PBKDF2-SHA512): "
                                      "re-provision it"))
            continue
        gw = _split_gateway(user)
        if gw is not None:
            if user in existing:
                rep.skipped.append((user, "already in the dynamic security file"))
                continue
            role = gateway_role(*gw)
            ensure_role(dst, role, gateway_acls(*gw), f"gateway {user}")
            dst.add_hashed_client({"username": gateway_path(*gw), "clientid": gw[2],
                                   "textName": f"gateway {user} (imported)",
                                   "roles": [{"rolename": role}], **fields})
            rep.gateways.append(user)
            legacy_ids[gw[2]] += 1
            legacy_of.setdefault(gw[2], []).append(user)
            continue
        kind = services.get(user)
        if kind is None:
            rep.skipped.append((user, "neither a county/farm/gateway account nor an edge or "
                                      "simulator block of the ACL"))
            continue
        new = user if keep_service_names else _service_username(user)
        if new in existing:
            rep.skipped.append((user, f"{new} is already in the dynamic security file"))
            continue
        role, acls, what = SERVICE_ROLES[kind]
        ensure_role(dst, role, acls(), what)
        dst.add_hashed_client({"username": new, "textName": f"{kind} service (imported)",
                               "roles": [{"rolename": role}], **fields})
        existing.add(new)
        rep.services.append((user, new, kind))
    rep.shared_client_ids = {cid: legacy_of[cid] for cid, n in legacy_ids.items() if n > 1}
    return rep
