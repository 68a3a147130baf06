"""Prometheus metrics of one edge service (its own registry, so several
services can live in one process, as they do in the tests)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from farmedge.contract import excerpt
from farmedge.disk import is_disk_full
from farmedge.logs import Throttle

__all__ = ["EdgeMetrics", "Incidents", "counter_total"]

disable_created_metrics()  # type: ignore[no-untyped-call]


class EdgeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter("farmedge_messages", "MQTT messages received", registry=r)
        self.readings_written = Counter("farmedge_readings_written",
                                        "Readings written to InfluxDB (directly or on replay)",
                                        registry=r)
        self.readings_accepted = Counter("farmedge_readings_accepted",
                                         "Readings that passed validation", registry=r)
        self.rejected = Counter("farmedge_rejected", "Messages or readings rejected, by reason",
                                ["reason"], registry=r)
        self.spooled_lines = Counter("farmedge_spooled_lines",
                                     "Lines appended to the local spool", registry=r)
        self.spool_dropped = Counter("farmedge_spool_dropped_lines",
                                     "Lines dropped because the spool was full", registry=r)
        self.spool_depth = Gauge("farmedge_spool_depth_lines", "Lines waiting in the spool",
                                 registry=r)
        self.spool_bytes = Gauge("farmedge_spool_bytes", "Bytes the spool holds", registry=r)
        self.batch_size = Histogram("farmedge_batch_lines", "Lines per InfluxDB write",
                                    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
                                    registry=r)
        self.write_latency = Histogram("farmedge_write_latency_seconds",
                                       "InfluxDB write request latency",
                                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                       registry=r)
        self.write_failures = Counter("farmedge_write_failures",
                                      "Failed InfluxDB write requests, by HTTP status (0: network)",
                                      ["status"], registry=r)
        self.seq_gaps = Counter("farmedge_seq_gap_messages",
                                "Messages missing in gateways' sequence numbers", registry=r)
        self.seq_duplicates = Counter("farmedge_seq_duplicate_messages",
                                      "Messages received again (redelivery)", registry=r)
        self.seq_restarts = Counter("farmedge_seq_restarts",
                                    "Gateways' seq starting over (a new outbox), not gaps",
                                    registry=r)
        self.pending = Gauge("farmedge_pending_messages",
                             "Messages received but not yet acknowledged", registry=r)
        self.mqtt_connected = Gauge("farmedge_mqtt_connected", "1 while connected to the broker",
                                    registry=r)
        self.influx_up = Gauge("farmedge_influx_up", "1 while InfluxDB takes writes",
                               registry=r)
        self.internal_errors = Counter(
            "farmedge_internal_errors",
            "Failures inside the edge contained to one message or call, by where "
            "(ingest: the message became an `internal` dead letter; observer)",
            ["where"], registry=r)
        self.disk_full = Gauge("farmedge_disk_full",
                               "1 while the spool's disk is full (messages are not acknowledged)",
                               registry=r)
        # [source] kind = "nats" (docs/edge.md, "Health and metrics")
        self.nats_connected = Gauge("farmedge_nats_connected",
                                    "1 while connected to a node of the NATS cluster", registry=r)
        self.partitions_owned = Gauge("farmedge_partitions_owned",
                                      "Partitions whose lease this edge holds", registry=r)
        self.partition_lag = Gauge("farmedge_partition_lag_messages",
                                   "Messages of an owned partition not yet delivered to the edge",
                                   ["partition"], registry=r)
        self.lease_changes = Counter("farmedge_lease_changes",
                                     "Partition leases this edge gained or lost (taken, expired, "
                                     "given back)", ["change"], registry=r)
        self.acks_fenced = Counter("farmedge_acks_fenced",
                                   "Durable batches not acknowledged because the partition's "
                                   "lease was no longer this edge's (delivered again)",
                                   registry=r)
        self.disk_free = Gauge("farmedge_disk_free_bytes",
                               "Free bytes on the spool's filesystem", registry=r)


class Incidents:
    """Failures inside the edge's own code contained to one message or one
    call: counted (``farmedge_internal_errors_total{where}``) and logged,
    throttled, with the traceback (``edge.internal_error``)."""

    def __init__(self, metrics: EdgeMetrics, log: Any) -> None:
        self._metrics = metrics
        self._log = log
        self._throttle = Throttle()
        #: When a stage last met a full disk (monotonic), or 0.
        self.stage_disk_full_at = 0.0

    def __call__(self, where: str, exc: Exception, topic: str = "") -> None:
        self._metrics.internal_errors.labels(where).inc()
        if where == "observer" and is_disk_full(exc):
            self.stage_disk_full_at = time.monotonic()
        suppressed = self._throttle.allow((where, type(exc).__name__))
        if suppressed is not None:
            self._log.error("edge.internal_error", where=where,
                            error=f"{type(exc).__name__}: {exc}"[:500],
                            topic=excerpt(topic, 200) if topic else None,
                            suppressed_since_last=suppressed, exc_info=exc)


def counter_total(counter: Any) -> float:
    """The sum of a labelled counter's ``_total`` samples."""
    out = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out += sample.value
    return out
