"""The ``[source]`` section: where the edge takes the gateways' messages from.

``kind = "mqtt"`` (the default) is the ``[mqtt]`` section's broker, as before.
``kind = "nats"`` is a NATS cluster with JetStream (docs/scaling.md, "The NATS cluster"):
the gateways publish over MQTT to the cluster's MQTT listeners, a replicated
stream keeps their telemetry and status, split into ``partitions`` by farm,
and each partition is read by one durable consumer, owned by one edge at a
time through a lease in the cluster's key-value store.

Names (stream, consumers, key-value bucket) are checked here the way the
server checks them, so that a wrong one is refused at start with its key, not
later by the server.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from farmedge.config import Section
from farmedge.logs import redact_url

__all__ = ["MQTT_STREAM", "NAME_RE", "SourceSection"]

#: The stream in which the NATS server keeps QoS 1 MQTT messages.
MQTT_STREAM = "$MQTT_msgs"

#: Stream, consumer and bucket names: what the server accepts in a subject
#: token and a file name (no ".", "*", ">", path separators or spaces).
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PosFloat = Annotated[float, Field(gt=0)]


class SourceSection(Section):
    #: "mqtt": the [mqtt] section's broker; "nats": a NATS JetStream cluster.
    kind: Literal["mqtt", "nats"] = "mqtt"
    #: The cluster's client URLs (nats:// or tls://); the client moves to
    #: another when its node dies, so list every node.
    nats_urls: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    #: CA bundle for tls:// URLs (default: the system's).
    nats_ca_file: Path | None = None
    #: The replicated stream the edge reads: "$MQTT_msgs", the server's own
    #: stream of QoS 1 MQTT messages (a gateway's PUBACK then means the
    #: message is in it: docs/scaling.md, "What a PUBACK covers"), or
    #: the name of a stream of the edge's own that captures the partitioned
    #: subjects (for publishers that are not MQTT clients; a PUBACK does not
    #: cover it).
    stream: str = "$MQTT_msgs"
    #: Replicas of the stream and of the lease bucket (3 survives one node).
    replicas: Annotated[int, Field(ge=1, le=5)] = 3
    #: Farms are split into this many partitions (by a hash of county and
    #: farm); each is read by one edge at a time. Changing it re-partitions
    #: the stream: only with every edge stopped and the stream drained.
    partitions: Annotated[int, Field(ge=1, le=1024)] = 16
    #: Durable consumer names: <consumer_prefix><partition number>.
    consumer_prefix: str = "farmedge-p"
    #: A delivered message not acknowledged within this time is delivered
    #: again; the edge sends "in progress" every third of it while it writes.
    ack_wait_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    #: When a batch is acknowledged to the stream. "influx": once InfluxDB
    #: has its lines; while InfluxDB is down the edge holds the batch and
    #: the stream keeps the backlog (a dead edge strands nothing in its
    #: spool; alerts wait for InfluxDB too). "durable": once the lines are
    #: in InfluxDB or in the edge's spool (alerts go on while InfluxDB is
    #: down; what an edge spooled, only that edge replays).
    ack_when: Literal["influx", "durable"] = "influx"
    #: Messages fetched at once per partition.
    fetch_batch: Annotated[int, Field(ge=1, le=10000)] = 500
    #: How long a stream of the edge's own (``stream`` not "$MQTT_msgs") keeps
    #: messages (a backlog older than this is lost); "$MQTT_msgs" is the
    #: server's, with no age limit.
    max_age_days: Annotated[float, Field(gt=0)] = 7.0
    #: Key-value bucket of the partition leases and edge instances.
    lease_bucket: str = "farmedge_leases"
    #: Key-value bucket of the alert state of each partition (rule states,
    #: groups, the farms' outbox, budgets and history), loaded by the edge that
    #: takes a partition over. Replicated like the lease bucket.
    alert_bucket: str = "farmedge_alerts"
    #: A lease not renewed within this time expires and another edge may take
    #: the partition (whole seconds: the server's per-key TTLs). Renewed every
    #: third of it.
    lease_ttl_s: Annotated[int, Field(ge=2, le=300)] = 15
    #: How often an edge looks for partitions to take or give back. A dead
    #: edge's partitions are owned again within lease_ttl_s + rebalance_s
    #: (20 s by default).
    rebalance_s: PosFloat = 5.0
    #: This edge's name among the instances (default: the top-level
    #: ``instance``). Must differ between edges.
    instance: str | None = None

    @field_validator("nats_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one nats:// URL")
        for url in v:
            shown = redact_url(url)  # a URL may hold a password
            try:
                u = urlsplit(url)
                _ = u.port
            except ValueError:
                raise ValueError(f"{shown!r} has an invalid port") from None
            if u.scheme not in {"nats", "tls"}:
                raise ValueError(f"{shown!r} must start with nats:// or tls://")
            if not u.hostname:
                raise ValueError(f"{shown!r} has no host")
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if v != MQTT_STREAM and not NAME_RE.fullmatch(v):
            raise ValueError(f"use {MQTT_STREAM!r} or 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("consumer_prefix", "lease_bucket", "alert_bucket")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '-' or '_'")
        return v

    @model_validator(mode="after")
    def _timing(self) -> SourceSection:
        if len(self.consumer_prefix) + len(str(self.partitions - 1)) > 64:
            raise ValueError("consumer_prefix is too long for its partition numbers")
        if self.alert_bucket == self.lease_bucket:
            raise ValueError("alert_bucket must differ from lease_bucket")
        return self

    @property
    def mqtt_stream(self) -> bool:
        return self.stream == MQTT_STREAM

    def consumer_name(self, partition: int) -> str:
        return f"{self.consumer_prefix}{partition}"

    def tls_context(self) -> ssl.SSLContext | None:
        """The client's TLS context: for tls:// URLs or a CA file (verifying
        with ``nats_ca_file``, else the system's CAs); None for plain nats://.
        Raises OSError or ssl.SSLError for a CA file that is missing or
        holds no certificate."""
        if self.nats_ca_file is None and not any(u.startswith("tls://")
                                                 for u in self.nats_urls):
            return None
        return ssl.create_default_context(
            cafile=str(self.nats_ca_file) if self.nats_ca_file else None)

    @property
    def takeover_bound_s(self) -> float:
        """How long a dead edge's partitions stay without an owner, at most."""
        return self.lease_ttl_s + self.rebalance_s
