"""Broker accounts and the trust rules they keep, on either backend of
:mod:`farmedge.provision.dynsec` (the running broker or its file).

- A gateway's account is its path ``county/farm/gateway`` (ids never hold a
  "/", so the path is unambiguous). Its client id is bound to the account
  (the plugin's ``clientid``): the path for gateways provisioned now, the bare
  gateway id for gateways imported from a password file (what they use in
  the field). A connection with any other client id is refused, so no
  gateway can take over another client's session, and two gateways with
  the same id in two farms no longer share one.
- Each gateway has a role of its own (Mosquitto 2.0.11 has no ``%u``
  patterns in this plugin): it may publish on its own telemetry and status
  topics and nowhere else (not on its farm's alerts topic), and it may not
  subscribe at all, ``$share/...`` included.
- Service accounts (edge instances, the demo's simulator, the plugin's
  administrator) are named ``svc~NAME``: "~" is a character no id may hold,
  so no county, farm or gateway can ever be given a service's name.
- Ids that are topic levels of the system (``alerts``, ``status``,
  ``telemetry``: farmedge.contract.ids.RESERVED_IDS) are refused as county,
  farm or gateway ids.

Adding or removing one gateway creates or deletes only that gateway's
client and role: the plugin disconnects no one else.
"""

from __future__ import annotations

from typing import Any

from farmedge.contract import status_topic, telemetry_topic
from farmedge.contract.ids import RESERVED_IDS, InvalidId, check_topic_id, is_valid_id

from .dynsec import ADMIN_ROLE, Backend
from .errors import ProvisionError

__all__ = [
    "EDGE_ROLE",
    "RESERVED_IDS",
    "SERVICE_PREFIX",
    "SERVICE_ROLES",
    "SIMULATOR_ROLE",
    "check_gateway_ids",
    "gateway_acls",
    "gateway_path",
    "gateway_role",
    "remove_account",
    "remove_gateway",
    "service_username",
    "set_gateway",
    "set_service",
]

SERVICE_PREFIX = "svc~"

EDGE_ROLE = "service:edge"
SIMULATOR_ROLE = "service:simulator"


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def edge_acls() -> list[dict[str, Any]]:
    """Read all of farm/v1/ (also through a shared subscription
    $share/GROUP/farm/v1/..., which the plugin checks as written), publish
    alerts on farm/v1/{county}/{farm}/alerts."""
    return [_acl("subscribePattern", "farm/v1/#"),
            _acl("subscribePattern", "$share/+/farm/v1/#"),
            _acl("publishClientReceive", "farm/v1/#"),
            _acl("publishClientSend", "farm/v1/+/+/alerts")]


def simulator_acls() -> list[dict[str, Any]]:
    """Demo only: publish as any gateway (telemetry and status), read nothing."""
    return [_acl("publishClientSend", "farm/v1/+/+/+/telemetry"),
            _acl("publishClientSend", "farm/v1/+/+/+/status"),
            _acl("subscribePattern", "#", allow=False)]


#: kind -> (role, its ACLs, what it is)
SERVICE_ROLES = {
    "edge": (EDGE_ROLE, edge_acls, "edge instances: read farm/v1/#, publish alerts"),
    "simulator": (SIMULATOR_ROLE, simulator_acls,
                  "simulated farms (demo only): publish as any gateway"),
}


def gateway_path(county: str, farm: str, gateway: str) -> str:
    """A gateway's broker username and (provisioned now) client id."""
    return f"{county}/{farm}/{gateway}"


def gateway_role(county: str, farm: str, gateway: str) -> str:
    return f"gateway:{gateway_path(county, farm, gateway)}"


def gateway_acls(county: str, farm: str, gateway: str) -> list[dict[str, Any]]:
    return [_acl("publishClientSend", telemetry_topic(county, farm, gateway)),
            _acl("publishClientSend", status_topic(county, farm, gateway)),
            _acl("subscribePattern", "#", allow=False)]


def check_gateway_ids(county: str, farm: str, gateway: str) -> None:
    """The contract's rule for topic-level ids (farmedge.contract.ids):
    valid ids, and none of the words the system's topics use."""
    for what, value in (("county", county), ("farm", farm), ("gateway", gateway)):
        try:
            check_topic_id(value, what=what)
        except InvalidId as exc:
            raise ProvisionError(str(exc)) from None


def service_username(name: str) -> str:
    """``edge`` or ``svc~edge`` -> ``svc~edge``."""
    base = name[len(SERVICE_PREFIX):] if name.startswith(SERVICE_PREFIX) else name
    if not is_valid_id(base):
        raise ProvisionError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    return SERVICE_PREFIX + base


def _ok(res: dict[str, Any], *, allow: tuple[str, ...] = ()) -> bool:
    """True when the command succeeded, False when it failed with an error in
    ``allow``; raises on any other error."""
    err = res.get("error")
    if not err:
        return True
    if err in allow:
        return False
    raise ProvisionError(f"the broker refused {res.get('command')}: {err}")


def _key(a: dict[str, Any]) -> tuple[str, str, bool]:
    return (str(a["acltype"]), str(a["topic"]), bool(a.get("allow", False)))


def ensure_role(b: Backend, rolename: str, acls: list[dict[str, Any]], textname: str) -> None:
    """Create the role, or make its ACLs exactly ``acls``. Changing an
    existing role's ACLs makes the broker disconnect the clients holding it
    (they reconnect under the new rules); an unchanged role is left alone."""
    if _ok(b.one({"command": "createRole", "rolename": rolename, "textname": textname,
                  "acls": acls}), allow=("Role already exists",)):
        return
    res = b.one({"command": "getRole", "rolename": rolename})
    _ok(res)
    have = {_key(a) for a in res.get("data", {}).get("role", {}).get("acls", [])}
    want = {_key(a) for a in acls}
    cmds: list[dict[str, Any]] = []
    for acltype, topic, _ in sorted(have - want):
        cmds.append({"command": "removeRoleACL", "rolename": rolename, "acltype": acltype,
                     "topic": topic})
    for acltype, topic, allow in sorted(want - have):
        cmds.append({"command": "addRoleACL", "rolename": rolename, "acltype": acltype,
                     "topic": topic, "allow": allow})
    for res in b.run(cmds):
        _ok(res)


def _get_client(b: Backend, username: str) -> dict[str, Any] | None:
    res = b.one({"command": "getClient", "username": username})
    if not _ok(res, allow=("Client not found",)):
        return None
    client: dict[str, Any] = res.get("data", {}).get("client", {})
    return client


def set_gateway(b: Backend, county: str, farm: str, gateway: str, password: str,
                *, client_id: str | None = None) -> bool:
    """Create the gateway's account and role, or (it exists) give it a new
    password, its ACLs and ``client_id`` (default: its path). Returns True
    when it was created. A re-provisioned gateway's open connection is closed
    by the broker (its password changed); nobody else's is."""
    check_gateway_ids(county, farm, gateway)
    user = gateway_path(county, farm, gateway)
    cid = client_id or user
    role = gateway_role(county, farm, gateway)
    ensure_role(b, role, gateway_acls(county, farm, gateway), f"gateway {user}")
    have = _get_client(b, user)
    if have is None:
        _ok(b.one({"command": "createClient", "username": user, "password": password,
                   "clientid": cid, "textname": f"gateway {user}",
                   "roles": [{"rolename": role}]}))
        return True
    cmds: list[dict[str, Any]] = []
    if have.get("clientid") != cid:
        cmds.append({"command": "setClientId", "username": user, "clientid": cid})
    if all(r.get("rolename") != role for r in have.get("roles", [])):
        cmds.append({"command": "addClientRole", "username": user, "rolename": role})
    cmds.append({"command": "setClientPassword", "username": user, "password": password})
    for res in b.run(cmds):
        _ok(res)
    return False


def remove_gateway(b: Backend, county: str, farm: str, gateway: str) -> bool:
    """Delete the gateway's account (the broker closes its connection at once)
    and its role. False when there was no such account."""
    user = gateway_path(county, farm, gateway)
    gone = _ok(b.one({"command": "deleteClient", "username": user}),
               allow=("Client not found",))
    _ok(b.one({"command": "deleteRole", "rolename": gateway_role(county, farm, gateway)}),
        allow=("Role not found",))
    return gone


def set_service(b: Backend, kind: str, username: str, password: str) -> bool:
    """A service account (``kind`` edge or simulator) with a new password;
    True when created. Its client id is not bound: an edge opens two
    connections (its subscriber and the alert publisher), the simulator one
    per farm, and the plugin binds one id per account."""
    role, acls, what = SERVICE_ROLES[kind]
    if username.startswith(SERVICE_PREFIX):
        service_username(username)  # validates the rest
    ensure_role(b, role, acls(), what)
    have = _get_client(b, username)
    if have is None:
        _ok(b.one({"command": "createClient", "username": username, "password": password,
                   "textname": f"{kind} service", "roles": [{"rolename": role}]}))
        return True
    cmds: list[dict[str, Any]] = []
    if all(r.get("rolename") != role for r in have.get("roles", [])):
        cmds.append({"command": "addClientRole", "username": username, "rolename": role})
    cmds.append({"command": "setClientPassword", "username": username, "password": password})
    for res in b.run(cmds):
        _ok(res)
    return False


def remove_account(b: Backend, username: str) -> bool:
    """Delete a service account; False when there was none."""
    have = _get_client(b, username)
    if have is None:
        return False
    if any(r.get("rolename") == ADMIN_ROLE for r in have.get("roles", [])):
        raise ProvisionError(f"{username!r} is the broker's administrator: not revoked here")
    return _ok(b.one({"command": "deleteClient", "username": username}),
               allow=("Client not found",))
