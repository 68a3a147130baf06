"""The nats-server configuration of one node of a farmedge NATS cluster.

One generator for every place a node is configured, so that they cannot
drift apart: the test cluster on loopback (tools/farmedge_dev/natscluster.py)
and the committed files of the compose layout (deploy/nats/, written by
``farmedge provision nats-cluster``, checked by ``--check``). What every node
needs besides its listeners (docs/scaling.md, "The NATS cluster"):

* JetStream, with its store on the node's own disk;
* routes to the other nodes, and one cluster name;
* ``mqtt { stream_replicas: 3 }``: the server's MQTT streams (sessions,
  QoS 1 messages, retained messages) on three nodes. Left to itself the
  server sizes them by the nodes it knows at the first MQTT connection,
  which can be two of three during a start-up, and an R2 stream stalls for
  good when either node dies;
* the subject mapping that partitions the gateways' subjects by county and
  farm as they come in, with the same partition count on every node and in
  the edges' ``[source] partitions``.

No import of the NATS client here: ``farmedge provision`` uses it without the
``nats`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PARTITIONED_PREFIX",
    "SUBJECT_PREFIX",
    "NodeConf",
    "NodeTls",
    "node_conf",
    "server_mapping_conf",
    "server_mappings",
]

#: The gateways' subjects as the MQTT listener makes them of their topics.
SUBJECT_PREFIX = "farm.v1"
#: The same subjects after the partition mapping.
PARTITIONED_PREFIX = "farmp.v1"


def server_mappings(partitions: int) -> dict[str, str]:
    """The account subject mapping that partitions the gateways' subjects."""
    return {
        f"{SUBJECT_PREFIX}.*.*.*.*": (
            f"{PARTITIONED_PREFIX}.{{{{partition({partitions},1,2)}}}}"
            ".{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{wildcard(4)}}"),
    }


def server_mapping_conf(partitions: int) -> str:
    """The ``mappings`` block of every node's nats-server configuration (for
    the account the gateways and the edge use; top level for the default one)."""
    lines = [f'  "{src}": "{dest}"' for src, dest in server_mappings(partitions).items()]
    return "mappings {\n" + "\n".join(lines) + "\n}\n"


@dataclass(frozen=True)
class NodeTls:
    """TLS on a node's client, MQTT and route listeners: its certificate and
    key, and the CA that signed the other nodes' certificates (routes
    verify each other's: mutual TLS). Paths as the node sees them."""

    cert_file: str
    key_file: str
    ca_file: str
    #: Seconds for a TLS handshake (slow mobile links need more than 0.5).
    timeout: float = 5.0

    def block(self, *, verify: bool = False) -> str:
        return (f"tls {{ cert_file: {_q(self.cert_file)}, key_file: {_q(self.key_file)}, "
                f"ca_file: {_q(self.ca_file)}, timeout: {self.timeout:g}"
                + (", verify: true" if verify else "") + " }")


@dataclass(frozen=True)
class NodeConf:
    """Where one node listens and what it knows of the others. Addresses are
    ``host:port``; ``routes`` are the other nodes' cluster listeners."""

    name: str
    listen: str
    cluster_listen: str
    mqtt_listen: str
    http_listen: str
    store_dir: str
    routes: Sequence[str]
    cluster_name: str = "farmedge"
    #: ``[source] partitions`` of the edges.
    partitions: int = 16
    #: Replicas of the server's MQTT streams: 3, or the cluster's size if smaller.
    mqtt_replicas: int = 3
    max_memory_store: str = "256MB"
    max_file_store: str = "4GB"
    #: Redeliver a QoS 1 message an MQTT subscriber has not acknowledged.
    mqtt_ack_wait: str = "10s"
    #: TLS on every listener but the monitoring one (docs/scaling.md, "Trust on NATS").
    tls: NodeTls | None = None
    #: The users' file ``farmedge provision nats`` writes (auth.conf), relative
    #: to this node's file: included in place of the partition mapping, which
    #: it holds with the same partition count as its users' permissions.
    auth_include: str | None = None


def _q(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"{value!r}: no quotes or line breaks in a server setting")
    return f'"{value}"'


def node_conf(n: NodeConf) -> str:
    """The node's configuration file (nats-server's format)."""
    if n.partitions < 1:
        raise ValueError("at least one partition")
    routes = ",\n    ".join(_q(f"nats-route://{r}") for r in n.routes)

    def tls(where: str) -> str:
        if n.tls is None:
            return ""
        indent = "" if where == "client" else "  "
        return indent + n.tls.block(verify=where == "route") + "\n"

    if n.auth_include is not None:
        tail = ("# Users, permissions and the partition mapping (farmedge provision nats).\n"
                f"include {_q(n.auth_include)}\n")
    else:
        tail = ("# The gateways' subjects, partitioned by farm as they come in.\n"
                + server_mapping_conf(n.partitions))
    return f"""\
server_name: {_q(n.name)}
listen: {_q(n.listen)}
http: {_q(n.http_listen)}
max_payload: 1MB
{tls("client")}jetstream {{
  store_dir: {_q(n.store_dir)}
  max_memory_store: {n.max_memory_store}
  max_file_store: {n.max_file_store}
}}
cluster {{
  name: {_q(n.cluster_name)}
  listen: {_q(n.cluster_listen)}
  # Clients use the URLs they were given, not the nodes' own listen
  # addresses the cluster would tell them of (which a site's NAT, proxy or
  # firewall may not let them reach).
  no_advertise: true
{tls("route")}  routes: [
    {routes}
  ]
}}
mqtt {{
  listen: {_q(n.mqtt_listen)}
{tls("mqtt")}  # Redeliver an unacknowledged QoS 1 message to a subscriber after this.
  ack_wait: {_q(n.mqtt_ack_wait)}
  max_ack_pending: 10000
  # The server's own MQTT streams (sessions, QoS 1 messages with MQTT
  # subscribers, retained messages) on every node: left to itself the
  # server picks the replicas from the nodes it knows at the first MQTT
  # connection, which can be 2 of 3 during start-up, and an R2 stream
  # stalls when either node dies.
  stream_replicas: {n.mqtt_replicas}
}}
{tail}"""
