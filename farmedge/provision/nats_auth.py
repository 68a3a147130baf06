"""Trust on a NATS cluster: who may connect, and publish or read what.

The NATS counterpart of :mod:`farmedge.provision.accounts` (docs/scaling.md,
"Trust on NATS"). ``farmedge provision nats`` keeps the credentials in a
file of bcrypt hashes (``users.json``, mode 600) and writes from it and the
registry the ``authorization`` part of every node's configuration
(``auth.conf``, included by each node), which the nodes re-read on a reload
signal, without a restart.

- **One account**, the server's global one, holds the gateways and the
  edges (top-level ``authorization { users }``, with the partition mapping
  at top level beside it). The server keeps an account's MQTT sessions and
  QoS 1 messages in that account's own streams (``$MQTT_msgs``...), and a
  gateway's PUBACK covers the message only once it is in them
  (docs/scaling.md, "What a PUBACK covers"); the edge reads them there, so
  it must be in the same account. Not an ``accounts`` block of its own:
  nats-server 2.15.1 parses an MQTT CONNECT before it binds the client to
  its account, with the global account's mappings, so in any other account
  a last will escapes the partition mapping (it arrives on
  ``farm.v1...status``, which no partition consumer reads) while everything
  else is mapped (tested).
- **A gateway** is the user ``county/farm/gateway`` (its path, as with
  Mosquitto), allowed to connect over MQTT only, to publish exactly its own
  telemetry and status (the server checks permissions on the subject after
  the partition mapping: ``farmp.v1.<partition>.<county>.<farm>.<gateway>.telemetry``,
  ``.`` in ids written ``//``, the last will included) and to subscribe to
  nothing. It needs no
  internal ``$MQTT.`` subject (tested with nats-server 2.15.1: persistent
  session, QoS 1, retained status and last will all work without them).
- **An edge** is ``svc~NAME``, allowed to connect over the NATS protocol
  only, to use the JetStream API for the
  stream it reads and its key-value buckets (and nothing else), to
  acknowledge those streams' messages, to publish alerts and the partition
  probes, and to subscribe to its inboxes and the probes' subjects.
- **An administrator** (``svc~admin``, optional) may do anything in the
  account, over the NATS protocol only: for operators' tools.

What the server does not do: bind an MQTT client id to a user. Any user of
the account may connect with any client id, and takes over the session of
whoever had it (docs/scaling.md says what that exposes and what limits it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .accounts import SERVICE_PREFIX, check_gateway_ids, gateway_path
from .errors import ProvisionError

__all__ = [
    "AUTH_FILE",
    "BCRYPT_COST",
    "USERS_FILE",
    "EdgeScope",
    "Intruder",
    "UserStore",
    "admin_permissions",
    "edge_permissions",
    "gateway_client_id",
    "gateway_permissions",
    "gateway_subjects",
    "hash_password",
    "intruders",
    "render_auth_conf",
]

USERS_FILE = "users.json"
AUTH_FILE = "auth.conf"
#: bcrypt's cost for the users' hashes. Every connection costs the server
#: one check (15 ms at 8, 60 ms at 10, 120 ms at 11 on a 2 GHz core), which
#: adds up when thousands of gateways reconnect after a node dies; the
#: passwords are 192 random bits, which no cost makes guessable or not.
BCRYPT_COST = 8

Kind = Literal["gateway", "edge", "admin"]
KINDS: tuple[Kind, ...] = ("gateway", "edge", "admin")
#: A user whose password no one knows, always in the list (see render_auth_conf).
LOCKED_USER = SERVICE_PREFIX + "locked"


def hash_password(password: str, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash as nats-server accepts it (``$2b$...``)."""
    try:
        import bcrypt
    except ImportError:
        raise ProvisionError(
            "the bcrypt package is missing: pip install 'farmedge[nats]'") from None
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def gateway_client_id(county: str, farm: str, gateway: str) -> str:
    """The MQTT client id of a gateway on NATS: its path with each ``.``
    written ``:``. nats-server (2.15.1) refuses ``.``, ``*``, ``>`` and
    spaces in client ids; ids hold ``.`` but never ``:``, so the mapping is
    reversible and two gateways never share a client id."""
    return gateway_path(county, farm, gateway).replace(".", ":")


def _token(id_: str) -> str:
    # The subject token NATS's MQTT listener makes of an id (farmedge.transport.nats).
    return id_.replace(".", "//")


def gateway_subjects(county: str, farm: str, gateway: str, partitions: int) -> list[str]:
    """The subjects a gateway publishes on, as the server checks them: after
    the partition mapping."""
    from farmedge.transport.nats import PARTITIONED_PREFIX, partition_of

    p = partition_of(county, farm, partitions)
    base = ".".join((PARTITIONED_PREFIX, str(p), _token(county), _token(farm), _token(gateway)))
    return [f"{base}.telemetry", f"{base}.status"]


def gateway_permissions(county: str, farm: str, gateway: str,
                        partitions: int) -> dict[str, Any]:
    return {"publish": {"allow": gateway_subjects(county, farm, gateway, partitions)},
            "subscribe": {"deny": [">"]}}


@dataclass(frozen=True)
class EdgeScope:
    """What the edges use: ``[source] stream`` and the key-value buckets
    (``[source] lease_bucket``, the alert state's)."""

    stream: str = "$MQTT_msgs"
    buckets: tuple[str, ...] = ("farmedge_leases", "farmedge_alerts")

    def streams(self) -> list[str]:
        return [self.stream, *(f"KV_{b}" for b in self.buckets)]


#: The county of the edge's partition probes (farmedge.transport.nats.check_partition_mapping).
_PROBE_COUNTY = "farmedge-probe"


def edge_permissions(scope: EdgeScope) -> dict[str, Any]:
    from farmedge.transport.nats_conf import PARTITIONED_PREFIX, SUBJECT_PREFIX

    api = "$JS.API"
    pub = [f"{api}.INFO"]
    for s in scope.streams():
        pub += [
            f"{api}.STREAM.INFO.{s}", f"{api}.STREAM.CREATE.{s}", f"{api}.STREAM.UPDATE.{s}",
            f"{api}.STREAM.MSG.GET.{s}", f"{api}.DIRECT.GET.{s}", f"{api}.DIRECT.GET.{s}.>",
            f"{api}.CONSUMER.CREATE.{s}", f"{api}.CONSUMER.CREATE.{s}.>",
            f"{api}.CONSUMER.DURABLE.CREATE.{s}.*", f"{api}.CONSUMER.INFO.{s}.*",
            f"{api}.CONSUMER.DELETE.{s}.*", f"{api}.CONSUMER.MSG.NEXT.{s}.*",
            f"{api}.CONSUMER.NAMES.{s}", f"{api}.CONSUMER.LIST.{s}",
            f"$JS.ACK.{s}.>", f"$JS.FC.{s}.>",
        ]
    pub += [f"$KV.{b}.>" for b in scope.buckets]
    pub += [
        # Alerts to a farm: farm/v1/<county>/<farm>/alerts (not mapped).
        f"{SUBJECT_PREFIX}.*.*.alerts",
        # The partition probes, checked after the mapping like the gateways'.
        f"{PARTITIONED_PREFIX}.*.{_PROBE_COUNTY}.>",
    ]
    sub = ["_INBOX.>", f"{PARTITIONED_PREFIX}.*.{_PROBE_COUNTY}.>",
           f"{SUBJECT_PREFIX}.{_PROBE_COUNTY}.>"]
    return {"publish": {"allow": pub}, "subscribe": {"allow": sub}}


_NOTHING: dict[str, Any] = {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}


def admin_permissions() -> dict[str, Any]:
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


# ---------------------------------------------------------------- the store


@dataclass
class UserStore:
    """``users.json``: every NATS user's bcrypt hash and kind, and the
    settings the configuration is written with. No password is ever kept."""

    path: Path
    partitions: int = 16
    scope: EdgeScope = field(default_factory=EdgeScope)
    users: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> UserStore:
        if not path.exists():
            return cls(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            scope = doc.get("edge", {})
            store = cls(path, partitions=int(doc.get("partitions", 16)),
                        scope=EdgeScope(stream=str(scope.get("stream", "$MQTT_msgs")),
                                        buckets=tuple(scope.get(
                                            "buckets", EdgeScope().buckets))),
                        users={str(k): {"kind": str(v["kind"]), "hash": str(v["hash"])}
                               for k, v in doc.get("users", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProvisionError(f"{path}: not a farmedge NATS users file ({exc})") from None
        for name, u in store.users.items():
            if u["kind"] not in KINDS or not u["hash"].startswith("$2"):
                raise ProvisionError(f"{path}: user {name!r} has no bcrypt hash or kind")
        return store

    def save(self) -> None:
        doc = {"partitions": self.partitions,
               "edge": {"stream": self.scope.stream, "buckets": list(self.scope.buckets)},
               "users": dict(sorted(self.users.items()))}
        _write_private(self.path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    def set(self, username: str, kind: Kind, password: str) -> bool:
        """Give ``username`` this password (hashed); True if it is new."""
        new = username not in self.users
        self.users[username] = {"kind": kind, "hash": hash_password(password)}
        return new

    def remove(self, username: str) -> bool:
        return self.users.pop(username, None) is not None


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 600 (the file holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- the config


def _q(value: str) -> str:
    if any(c in value for c in '"\\\n\r'):
        raise ProvisionError(f"{value!r}: no quotes, backslashes or line breaks in a NATS "
                             "configuration string")
    return f'"{value}"'


def _perm_block(perms: dict[str, Any], indent: str) -> str:
    out = []
    for what in ("publish", "subscribe"):
        rules = perms.get(what, {})
        parts = [f"{k}: [{', '.join(_q(s) for s in v)}]" for k, v in rules.items()]
        out.append(f"{indent}  {what}: {{ {', '.join(parts)} }}")
    return "{\n" + "\n".join(out) + f"\n{indent}}}"


@dataclass(frozen=True)
class AuthReport:
    gateways: int
    services: int
    #: Registry gateways with no NATS credential yet (they cannot connect).
    missing: list[str]
    #: Gateway credentials of gateways no longer in the registry (left out).
    stale: list[str]


def render_auth_conf(store: UserStore,
                     gateways: Iterable[tuple[str, str, str]]) -> tuple[str, AuthReport]:
    """The part of every node's configuration that says who may do what: the
    users of the registry's ``gateways`` that have a credential, the
    services, and the partition mapping their permissions are written for."""
    from farmedge.transport.nats_conf import server_mappings

    wanted = {gateway_path(*g): g for g in gateways}
    users: list[str] = []
    missing = sorted(p for p in wanted if store.users.get(p, {}).get("kind") != "gateway")
    stale: list[str] = []
    n_gw = n_svc = 0
    ind = "    "
    for name, u in sorted(store.users.items()):
        if u["kind"] == "gateway":
            g = wanted.get(name)
            if g is None:
                stale.append(name)
                continue
            check_gateway_ids(*g)
            perms = gateway_permissions(*g, store.partitions)
            kinds = ["MQTT"]
            n_gw += 1
        else:
            perms = edge_permissions(store.scope) if u["kind"] == "edge" else admin_permissions()
            # Not MQTT: any MQTT user may take any client id's session.
            kinds = ["STANDARD"]
            n_svc += 1
        users.append(
            f"{ind}{{ user: {_q(name)}, password: {_q(u['hash'])},\n"
            f"{ind}  allowed_connection_types: [{', '.join(_q(k) for k in kinds)}],\n"
            f"{ind}  permissions: {_perm_block(perms, ind + '  ')} }}")
    # nats-server lets anyone in when the users list is empty (before the
    # first gateway or edge is provisioned): a user no one can be, always.
    import secrets

    users.append(
        f"{ind}# No one: keeps the list from ever being empty (an empty one lets anyone in).\n"
        f"{ind}{{ user: {_q(LOCKED_USER)}, "
        f"password: {_q(hash_password(secrets.token_urlsafe(32)))},\n"
        f"{ind}  permissions: {_perm_block(_NOTHING, ind + '  ')} }}")
    maps = "\n".join(f"  {_q(src)}: {_q(dst)}"
                     for src, dst in server_mappings(store.partitions).items())
    text = f"""\
# Written by `farmedge provision nats` from {store.path.name} and the registry:
# edit those and run it again, not this file. Every node of the cluster
# includes it (include "{AUTH_FILE}", a path relative to the node's file) in
# place of its own partition mapping; a node re-reads it on a reload
# (nats-server --signal reload, or SIGHUP), keeping its connections, and
# closes those of users no longer listed. It holds password hashes: mode 600.
authorization {{
  users: [
{chr(10).join(users)}
  ]
}}
# The gateways' subjects, partitioned by farm as they come in: the
# gateways' permissions above are these mapped subjects, for
# [source] partitions = {store.partitions} on every edge.
mappings {{
{maps}
}}
"""
    return text, AuthReport(n_gw, n_svc, missing, stale)


@dataclass(frozen=True)
class Intruder:
    """An MQTT connection holding a client id that is not its user's."""

    node: str
    cid: int
    user: str
    client_id: str
    ip: str

    def __str__(self) -> str:
        return (f"{self.node}: connection {self.cid} from {self.ip} is user {self.user!r} "
                f"with client id {self.client_id!r}")


def intruders(connz: dict[str, Any], node: str = "") -> list[Intruder]:
    """The MQTT connections of a node's ``/connz?auth=true`` whose client id
    is not their user's: a gateway's user with another client id than its
    own (its path with ``:`` for ``.``), or a service's user with a
    gateway's (a path). NATS binds no client id to a user; this finds who
    took a session that was not theirs."""
    out: list[Intruder] = []
    for c in connz.get("connections") or []:
        if not isinstance(c, dict) or not c.get("mqtt_client"):
            continue
        user, cid = str(c.get("authorized_user") or ""), str(c["mqtt_client"])
        if user.startswith(SERVICE_PREFIX):
            bad = cid.count("/") == 2
        else:
            bad = cid != user.replace(".", ":")
        if bad:
            out.append(Intruder(node or str(connz.get("server_name", "")), int(c.get("cid", 0)),
                                user, cid, str(c.get("ip", ""))))
    return out


def service_user(name: str) -> str:
    return name if name.startswith(SERVICE_PREFIX) else SERVICE_PREFIX + name


def gateway_toml(*, county: str, farm: str, gateway: str, urls: Sequence[str], password: str,
                 ca_file: str | None = None) -> str:
    """A gateway's ``gateway.toml`` for the NATS cluster's MQTT listeners."""
    from datetime import UTC, datetime

    def s(v: str) -> str:
        return json.dumps(v, ensure_ascii=False)

    user = gateway_path(county, farm, gateway)
    ca = (f"  ca_file = {s(ca_file)}\n" if ca_file else
          "  ## The CA of the cluster's certificates, if not one the system trusts:\n"
          '  # ca_file = "/etc/farmedge/nats-ca.crt"\n')
    return f"""\
## farmedge gateway agent: {user}, for a NATS cluster.
## Written by `farmedge provision nats gateway` on {datetime.now(UTC):%Y-%m-%d}. Copy it
## onto the gateway as /etc/farmedge/gateway.toml, readable only by the user
## the agent runs as: it holds the gateway's password. Add the sensors
## ([[sensors]]) and any other setting from gateway.example.toml, then check
##   farmedge gateway check-config --config /etc/farmedge/gateway.toml

## Who this gateway is: the cluster lets this user publish its telemetry and
## status (farm/v1/{county}/{farm}/{gateway}/...) and nothing else.
county = {s(county)}
farm = {s(farm)}
gateway = {s(gateway)}

[mqtt]
  ## Every node's MQTT listener (TLS): the agent moves to the next when one dies.
  urls = [{", ".join(s(u) for u in urls)}]
  ## NATS's MQTT listener speaks 3.1.1 only.
  protocol = "3.1.1"
  username = {s(user)}
  password = {s(password)}
  ## The path with ":" for ".": NATS refuses "." in client ids.
  client_id = {s(gateway_client_id(county, farm, gateway))}
{ca}"""
