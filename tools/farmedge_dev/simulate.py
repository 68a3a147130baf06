"""``farmedge simulate``: simulated farms publishing contract-valid telemetry.

N farms × G gateways × M sensor channels publish JSON telemetry (wire contract
v1) with QoS 1 over MQTT 5, with values from :mod:`farmedge.simdata`. Each
gateway keeps its own ``seq`` counter; each reading carries its own time.

Pacing:

- without ``--rate`` (live): every gateway samples its sensors every
  ``--interval`` seconds of wall-clock time, like a real gateway;
- with ``--rate R``: readings are published at R readings/s in total
  (``--rate 0``: as fast as the broker acknowledges) and simulated time runs
  ahead by ``--interval`` per round, starting in the past so that the
  readings catch up with the present (never stamped in the future).

A message counts as published only when the broker acknowledged it (PUBACK
with a success reason code). The Python API (:class:`Simulator`,
:func:`build_messages`, :class:`GatewayStream`) serves the demo, the tests and
the benchmarks. The simulator shares a few MQTT connections among all
simulated gateways; real gateway agents each use their own.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from farmedge.backoff import Backoff
from farmedge.contract import MAX_READINGS, encode_json
from farmedge.logs import get_logger
from farmedge.simdata import GatewaySim, SimReading, make_farms
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.errors import BrokerUrlError, ConnectRefused, NotConnected, TransportError
from farmedge.transport.publisher import REFUSED, Publisher
from farmedge.transport.reconnect import reconnect_in_thread

__all__ = [
    "GatewayStream",
    "SimError",
    "SimMessage",
    "SimStats",
    "Simulator",
    "add_parser",
    "build_messages",
    "encode_message",
]


class SimError(RuntimeError):
    """The simulator could not connect or publish."""


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One telemetry message, ready to publish."""

    topic: str
    payload: bytes
    gateway: str
    seq: int
    readings: tuple[SimReading, ...]

    @property
    def bad(self) -> int:
        return sum(1 for r in self.readings if r.bad)


def encode_message(gateway: str, seq: int, readings: list[SimReading] | tuple[SimReading, ...],
                   *, sent: int | None = None, clock: str = "synced") -> bytes:
    """A JSON telemetry payload of wire contract v1, built by the contract's
    encoder (its injected faults are readings the edge rejects one by one:
    well-formed, out of range or in a wrong unit)."""
    if sent is None:
        sent = int(time.time() * 1000)
    return encode_json(gateway=gateway, seq=seq, sent=sent, clock=clock,
                       readings=[r.to_wire() for r in readings])


class GatewayStream:
    """One simulated gateway's timeline: sampling rounds every ``interval_ms``
    of simulated time, cut into messages of ``readings_per_message``.

    Rounds are stamped ``start_ms + i * interval_ms``, but no reading later
    than the wall clock passed in as ``now_ms`` (a gateway cannot read the
    future); stamps always increase, so no reading repeats another's series
    and time.
    """

    def __init__(self, gateway: GatewaySim, *, start_ms: int, interval_ms: int,
                 readings_per_message: int, bad_rate: float = 0.0, seq_start: int = 0) -> None:
        if not 1 <= readings_per_message <= MAX_READINGS:
            raise ValueError(f"readings_per_message must be 1..{MAX_READINGS}")
        if interval_ms < 1:
            raise ValueError("interval_ms must be at least 1")
        self.gateway = gateway
        self.interval_ms = interval_ms
        self.readings_per_message = readings_per_message
        self.bad_rate = bad_rate
        self.next_ts = start_ms
        self.seq = seq_start
        self.pending: list[SimReading] = []
        self._last_ts = -1
        self._span = gateway.round_span(interval_ms)

    def due(self, now_ms: int) -> bool:
        """Whether a live gateway would have finished its next round by now."""
        return self.next_ts + self._span <= now_ms

    def sample(self, now_ms: int) -> None:
        """Take one round, stamped at the next round time, but so that its
        last reading is not later than ``now_ms``."""
        ts = max(min(self.next_ts, now_ms - self._span), self._last_ts + 1)
        readings = self.gateway.round(ts, interval_ms=self.interval_ms, bad_rate=self.bad_rate)
        self._last_ts = readings[-1].ts
        self.next_ts = ts + self.interval_ms
        self.pending.extend(readings)

    def ready(self) -> bool:
        return len(self.pending) >= self.readings_per_message

    def take(self, *, sent: int | None = None, partial: bool = False) -> SimMessage | None:
        """The next full message (or, with ``partial``, whatever is pending)."""
        n = self.readings_per_message
        if len(self.pending) < n and not (partial and self.pending):
            return None
        chunk, self.pending = self.pending[:n], self.pending[n:]
        seq = self.seq
        self.seq += 1
        payload = encode_message(self.gateway.gateway, seq, chunk, sent=sent)
        return SimMessage(self.gateway.topic, payload, self.gateway.gateway, seq, tuple(chunk))

    def next_message(self, now_ms: int) -> SimMessage:
        """Sample as many rounds as needed and return a full message."""
        while not self.ready():
            self.sample(now_ms)
        msg = self.take(sent=now_ms)
        assert msg is not None
        return msg


def _streams(*, seed: int, county: str, farms: int, gateways_per_farm: int, sensors: int,
             interval_ms: int, readings_per_message: int, bad_rate: float, start_ms: int,
             seq_start: int, fever_rate: float = 0.01, first_farm: int = 1
             ) -> list[GatewayStream]:
    sims = make_farms(seed=seed, county=county, farms=farms, gateways_per_farm=gateways_per_farm,
                      sensors=sensors, fever_rate=fever_rate, first_farm=first_farm)
    return [GatewayStream(gw, start_ms=start_ms, interval_ms=interval_ms,
                          readings_per_message=readings_per_message, bad_rate=bad_rate,
                          seq_start=seq_start)
            for farm in sims for gw in farm.gateways]


def _backdated_start(now_ms: int, *, total_readings: float, gateways: int, sensors: int,
                     interval_ms: int) -> int:
    rounds = math.ceil(total_readings / max(1, gateways * sensors)) + 1
    return now_ms - rounds * interval_ms


def build_messages(*, count: int, seed: int = 0, county: str = "demo", farms: int = 3,
                   gateways_per_farm: int = 1, sensors: int = 6, interval: float = 60.0,
                   readings_per_message: int | None = None, bad_rate: float = 0.0,
                   start_ms: int | None = None, seq_start: int = 0) -> list[SimMessage]:
    """``count`` messages, round-robin over all gateways, without publishing.

    Simulated time starts far enough in the past (unless ``start_ms`` says
    otherwise) that the last readings are stamped at about now.
    """
    rpm = readings_per_message or sensors
    now = int(time.time() * 1000)
    n_gw = farms * gateways_per_farm
    interval_ms = max(1, int(interval * 1000))
    if start_ms is None:
        start_ms = _backdated_start(now, total_readings=count * rpm, gateways=n_gw,
                                    sensors=sensors, interval_ms=interval_ms)
    streams = _streams(seed=seed, county=county, farms=farms, gateways_per_farm=gateways_per_farm,
                       sensors=sensors, interval_ms=interval_ms, readings_per_message=rpm,
                       bad_rate=bad_rate, start_ms=start_ms, seq_start=seq_start)
    return [streams[i % len(streams)].next_message(now) for i in range(count)]


@dataclass
class SimStats:
    """Counters of a run; safe to read while the simulator runs."""

    sent: int = 0  # messages handed to the MQTT client
    published: int = 0  # messages the broker acknowledged
    failed: int = 0  # messages the broker refused (PUBACK reason code >= 0x80)
    readings: int = 0  # readings in acknowledged messages
    bad: int = 0  # injected bad readings in acknowledged messages
    bad_by_kind: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    last: dict[str, SimMessage] = field(default_factory=dict)  # per gateway, last acked

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def unacked(self) -> int:
        return self.sent - self.published - self.failed

    def summary(self) -> str:
        secs = max(self.elapsed, 1e-9)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.bad_by_kind.items())) or "none"
        return (
            f"published {self.published} messages ({self.readings} readings) in {secs:.1f} s: "
            f"{self.published / secs:.0f} messages/s, {self.readings / secs:.0f} readings/s\n"
            f"acked {self.published} of {self.sent} sent, {self.failed} refused, "
            f"{self.unacked} unacknowledged\n"
            f"bad readings injected: {self.bad} ({kinds})"
        )


class _Conn:
    """One MQTT connection (the transport's Publisher); counts a message only
    on its PUBACK. A lost connection fails what it had in flight and is made
    again with the shared back-off."""

    def __init__(self, url: str, client_id: str, window: int, stats: SimStats,
                 lock: threading.Lock) -> None:
        try:
            self.broker = parse_broker_url(url)
        except BrokerUrlError as exc:
            raise SimError(f"--mqtt-url: {exc}") from None
        self.client_id = client_id
        self.window = threading.BoundedSemaphore(window)
        self.stats = stats
        self.lock = lock
        self.pub: Publisher | None = None
        self._gen = 0
        self.inflight: dict[int, SimMessage] = {}
        self.early: dict[int, bool] = {}  # PUBACKs seen before publish() returned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self, timeout: float = 15.0) -> Publisher:
        with self.lock:
            self._gen += 1
            gen = self._gen
        # max_inflight 0 (no limit in paho): paho rescans all its in-flight
        # messages on every PUBACK when it enforces a limit itself, which
        # costs more than the publishing. self.window bounds what is in flight.
        pub = Publisher(self.broker, client_id=self.client_id, keepalive_s=30,
                        max_inflight=0, on_ack=lambda mid, code: self._on_ack(gen, mid, code))
        pub.connect(timeout)
        self.pub = pub
        return pub

    def _hold(self, pub: Publisher) -> None:
        while not pub.lost.wait(0.2):
            if self._stop.is_set():
                return
        # Lost: what it had in flight will never be acknowledged.
        with self.lock:
            self.pub = None
            self._gen += 1
            lost, self.inflight = self.inflight, {}
            self.early.clear()
            for msg in lost.values():
                self._settle(msg, False)
        pub.close()

    def _on_ack(self, gen: int, mid: int, code: int) -> None:
        ok = code < REFUSED
        with self.lock:
            if gen != self._gen:
                return
            msg = self.inflight.pop(mid, None)
            if msg is None:
                self.early[mid] = ok
                return
            self._settle(msg, ok)

    def _settle(self, msg: SimMessage, ok: bool) -> None:
        st = self.stats
        if ok:
            st.published += 1
            st.readings += len(msg.readings)
            for r in msg.readings:
                if r.bad:
                    st.bad += 1
                    st.bad_by_kind[r.bad] += 1
            st.last[msg.gateway] = msg
        else:
            st.failed += 1
        self.window.release()

    def start(self, timeout: float = 15.0) -> None:
        where = f"{self.broker.host}:{self.broker.port}"
        try:
            first = self._open(timeout)
        except ConnectRefused as exc:
            raise SimError(f"the broker at {where} refused the connection: {exc.reason}"
                           ) from None
        except TransportError as exc:
            raise SimError(f"cannot connect to the broker at {where}: {exc}") from None
        self._thread = threading.Thread(
            target=reconnect_in_thread, name=f"mqtt-{self.client_id}", daemon=True,
            args=(self._open, self._hold),
            kwargs={"backoff": Backoff(1.0, 5.0), "stop": self._stop,
                    "log": get_logger("farmedge_dev.simulate", broker=self.broker.redacted),
                    "first": first})
        self._thread.start()

    def publish(self, msg: SimMessage, stop: threading.Event) -> bool:
        while not self.window.acquire(timeout=0.2):
            if stop.is_set():
                return False
        with self.lock:
            self.stats.sent += 1
            pub, gen = self.pub, self._gen
        # Not under self.lock: paho runs on_publish holding its own message
        # lock, which publish() takes too. A PUBACK that arrives before the
        # mid is registered waits in self.early.
        try:
            if pub is None:
                raise NotConnected("reconnecting")
            mid = pub.publish(msg.topic, msg.payload, qos=1)
        except TransportError:
            with self.lock:
                self.stats.failed += 1
            self.window.release()
            return True
        with self.lock:
            if gen != self._gen:  # lost meanwhile: never acknowledged
                self._settle(msg, False)
                return True
            ok = self.early.pop(mid, None)
            if ok is None:
                self.inflight[mid] = msg
            else:
                self._settle(msg, ok)
        return True

    def pending(self) -> int:
        with self.lock:
            return len(self.inflight)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        pub, self.pub = self.pub, None
        if pub is not None:
            pub.close()


class Simulator:
    """Simulated farms publishing to a broker. Build it, then :meth:`run`."""

    def __init__(self, *, mqtt_url: str, county: str = "demo", farms: int = 3,
                 gateways_per_farm: int = 1, sensors: int = 6, interval: float = 10.0,
                 readings_per_message: int | None = None, rate: float | None = None,
                 duration: float | None = None, messages: int | None = None,
                 bad_rate: float = 0.0, seed: int = 0, start_ms: int | None = None,
                 seq_start: int = 0, connections: int = 2, window: int = 1000,
                 fever_rate: float = 0.01, client_prefix: str = "farmedge-sim",
                 processes: int = 1, first_farm: int = 1) -> None:
        if farms < 1 or gateways_per_farm < 1 or sensors < 1:
            raise ValueError("farms, gateways per farm and sensors must be at least 1")
        if not 0 <= bad_rate <= 1:
            raise ValueError("bad_rate must be between 0 and 1")
        if rate is not None and rate < 0:
            raise ValueError("rate must be 0 (unlimited) or more")
        self.mqtt_url = mqtt_url
        self.county = county
        self.rate = rate
        self.duration = duration
        self.messages = messages
        self.interval_ms = max(1, int(interval * 1000))
        self.readings_per_message = readings_per_message or sensors
        self.connections = max(1, connections)
        self.window = window
        self.client_prefix = client_prefix
        self.stats = SimStats()
        # Everything a worker process needs to simulate a share of the farms.
        self._options: dict[str, Any] = dict(
            mqtt_url=mqtt_url, county=county, gateways_per_farm=gateways_per_farm,
            sensors=sensors, interval=interval, readings_per_message=readings_per_message,
            duration=duration, bad_rate=bad_rate, seed=seed, seq_start=seq_start,
            connections=connections, window=window, fever_rate=fever_rate,
            client_prefix=client_prefix)
        self.processes = max(1, min(processes, farms))
        self.farms = farms
        self.first_farm = first_farm
        now = int(time.time() * 1000)
        n_gw = farms * gateways_per_farm
        if start_ms is None:
            if rate is None:
                start_ms = now
            else:
                if messages is not None:
                    total: float = messages * self.readings_per_message
                elif duration is not None:
                    total = duration * (rate or 20_000.0)
                else:
                    total = 24 * 3600 * 1000 / self.interval_ms * n_gw * sensors  # one day
                start_ms = _backdated_start(now, total_readings=total, gateways=n_gw,
                                            sensors=sensors, interval_ms=self.interval_ms)
        self.streams = _streams(seed=seed, county=county, farms=farms,
                                gateways_per_farm=gateways_per_farm, sensors=sensors,
                                interval_ms=self.interval_ms,
                                readings_per_message=self.readings_per_message,
                                bad_rate=bad_rate, start_ms=start_ms, seq_start=seq_start,
                                fever_rate=fever_rate, first_farm=first_farm)
        self.start_ms = start_ms

    def _messages(self, stop: threading.Event) -> Iterator[SimMessage]:
        if self.rate is None:
            yield from self._live(stop)
            return
        i = 0
        while not stop.is_set():
            now = int(time.time() * 1000)
            yield self.streams[i % len(self.streams)].next_message(now)
            i += 1

    def _live(self, stop: threading.Event) -> Iterator[SimMessage]:
        while not stop.is_set():
            now = int(time.time() * 1000)
            for s in self.streams:
                while s.due(now):
                    s.sample(now)
                    while (msg := s.take(sent=now)) is not None:
                        yield msg
            wake = min(s.next_ts for s in self.streams)
            stop.wait(max(0.0, min(1.0, (wake - int(time.time() * 1000)) / 1000)))
        # A gateway uploads what it holds before it shuts down.
        now = int(time.time() * 1000)
        for s in self.streams:
            while (msg := s.take(sent=now, partial=True)) is not None:
                yield msg

    def run(self, stop: threading.Event | None = None, *, ack_timeout: float = 30.0) -> SimStats:
        """Publish until ``duration`` or ``messages`` is reached or ``stop`` is set;
        then wait up to ``ack_timeout`` seconds for outstanding PUBACKs.

        With ``processes`` > 1 the farms are shared among that many worker
        processes (one Python process publishes a few thousand messages a
        second); the stats are then complete only when run returns."""
        stop = stop or threading.Event()
        if self.processes > 1:
            return self._run_processes(stop, ack_timeout)
        lock = threading.Lock()

        conns = [_Conn(self.mqtt_url, f"{self.client_prefix}-{os.getpid()}-{i}",
                       self.window, self.stats, lock)
                 for i in range(min(self.connections, len(self.streams)))]
        started: list[_Conn] = []
        try:
            for c in conns:
                c.start()
                started.append(c)
            self.stats.started = time.monotonic()
            deadline = (self.stats.started + self.duration) if self.duration else None
            timer: threading.Timer | None = None
            if deadline is not None:
                timer = threading.Timer(self.duration or 0, stop.set)
                timer.daemon = True
                timer.start()
            readings_sent = 0
            gw_conn = {s.gateway.gateway: conns[i % len(conns)]
                       for i, s in enumerate(self.streams)}
            for msg in self._messages(stop):
                if self.messages is not None and self.stats.sent >= self.messages:
                    break
                if self.rate:
                    due = self.stats.started + readings_sent / self.rate
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                if not gw_conn[msg.gateway].publish(msg, stop):
                    break
                readings_sent += len(msg.readings)
                if self.messages is not None and self.stats.sent >= self.messages:
                    break
            if timer is not None:
                timer.cancel()
            end = time.monotonic() + ack_timeout
            while any(c.pending() for c in started) and time.monotonic() < end:
                time.sleep(0.02)
        finally:
            self.stats.finished = time.monotonic()
            for c in started:
                c.close()
        return self.stats


    def _run_processes(self, stop: threading.Event, ack_timeout: float) -> SimStats:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        mp_stop = ctx.Event()
        results: Any = ctx.Queue()
        n = self.processes
        workers = []
        first = self.first_farm
        assigned = 0
        for i in range(n):
            farms = self.farms // n + (1 if i < self.farms % n else 0)
            share = dict(self._options, farms=farms, first_farm=first, start_ms=self.start_ms,
                         client_prefix=f"{self._options['client_prefix']}-p{i}")
            if self.rate is not None:
                share["rate"] = self.rate * farms / self.farms
            if self.messages is not None:
                m = self.messages * (first - self.first_farm + farms) // self.farms - assigned
                assigned += m
                share["messages"] = m
                if m == 0:
                    first += farms
                    continue
            first += farms
            w = ctx.Process(target=_worker, args=(share, mp_stop, results, ack_timeout),
                            name=f"farmedge-sim-{i}", daemon=True)
            workers.append(w)
        self.stats.started = time.monotonic()
        for w in workers:
            w.start()
        errors: list[str] = []
        pending = len(workers)
        while pending:
            if stop.is_set():
                mp_stop.set()
            try:
                res = results.get(timeout=0.2)
            except Exception:  # queue.Empty
                if not any(w.is_alive() for w in workers) and results.empty():
                    errors.append("a simulator process died")
                    break
                continue
            pending -= 1
            if "error" in res:
                errors.append(res["error"])
                continue
            st = self.stats
            st.sent += res["sent"]
            st.published += res["published"]
            st.failed += res["failed"]
            st.readings += res["readings"]
            st.bad += res["bad"]
            st.bad_by_kind.update(res["bad_by_kind"])
        for w in workers:
            w.join(5)
        self.stats.finished = time.monotonic()
        if errors:
            raise SimError("; ".join(sorted(set(errors))))
        return self.stats


def _worker(options: dict[str, Any], stop: Any, results: Any, ack_timeout: float) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        st = Simulator(**options).run(stop, ack_timeout=ack_timeout)
    except SimError as exc:
        results.put({"error": str(exc)})
        return
    results.put({"sent": st.sent, "published": st.published, "failed": st.failed,
                 "readings": st.readings, "bad": st.bad, "bad_by_kind": dict(st.bad_by_kind)})


# --- command line -------------------------------------------------------


def _epoch_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    return int(dt.timestamp() * 1000)


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return v


def positive_number(text: str) -> float:
    """A finite number > 0 (``nan``, ``inf`` and ``-1`` are refused)."""
    v = float(text)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError("must be a number above 0")
    return v


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError("must be a number, 0 or more")
    return v


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="publish realistic simulated telemetry for N farms",
        description=(
            "Publish contract-valid telemetry (JSON, QoS 1, MQTT 5) for FARMS farms x "
            "GATEWAYS gateways x SENSORS sensor channels, and print what the broker "
            "acknowledged. Without --rate, gateways sample every --interval seconds of "
            "wall-clock time; with --rate, readings go out at that many per second and "
            "simulated time runs ahead."),
        epilog=("examples:\n"
                "  farmedge simulate --farms 5 --sensors 11 --interval 60\n"
                "  farmedge simulate --mqtt-url mqtt://simulator:PASSWORD@127.0.0.1:1883 "
                "--rate 2000 --messages 10000"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mqtt-url",
                   default=os.environ.get("FARMEDGE_MQTT_URL") or "mqtt://127.0.0.1:1883",
                   help="broker, mqtt://[user:pass@]host[:port] or mqtts:// "
                        "(default: $FARMEDGE_MQTT_URL or mqtt://127.0.0.1:1883)")
    p.add_argument("--county", default="demo", help="county id in the topics")
    p.add_argument("--farms", type=positive_int, default=3,
                   help="simulated farms (default 3)")
    p.add_argument("--gateways-per-farm", type=positive_int, default=1,
                   help="gateways on each farm (default 1)")
    p.add_argument("--sensors", type=positive_int, default=6,
                   help="sensor channels per gateway (a soil probe gives several; default 6)")
    p.add_argument("--interval", type=positive_number, default=10.0,
                   help="seconds between two readings of a sensor (default 10)")
    p.add_argument("--readings-per-message", type=positive_int, default=None,
                   help="readings per message (default: one message per sampling round)")
    p.add_argument("--rate", type=non_negative, default=None,
                   help="readings per second in total; 0 = as fast as the broker acknowledges "
                        "(default: live, paced by --interval)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=non_negative, default=None,
                      help="stop after this many seconds")
    stop.add_argument("--messages", type=positive_int, default=None,
                      help="stop after this many messages in total")
    p.add_argument("--bad-rate", type=fraction, default=0.0,
                   help="share of readings replaced by a bad value (spike, DS18B20 glitch, "
                        "wrong unit), e.g. 0.01")
    p.add_argument("--seed", type=int, default=0, help="same seed, same values")
    p.add_argument("--start", type=_epoch_ms, default=None,
                   help="simulated time of the first round (epoch ms or ISO 8601)")
    p.add_argument("--seq-start", type=int, default=0, help="first seq of every gateway")
    p.add_argument("--connections", type=positive_int, default=2,
                   help="MQTT connections per process shared by the simulated gateways")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="share the farms among this many processes (for high rates)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.readings_per_message is not None and args.readings_per_message > MAX_READINGS:
        print(f"farmedge simulate: --readings-per-message is at most {MAX_READINGS}",
              file=sys.stderr)
        return 2
    try:
        sim = Simulator(
            mqtt_url=args.mqtt_url, county=args.county, farms=args.farms,
            gateways_per_farm=args.gateways_per_farm, sensors=args.sensors,
            interval=args.interval, readings_per_message=args.readings_per_message,
            rate=args.rate, duration=args.duration, messages=args.messages,
            bad_rate=args.bad_rate, seed=args.seed, start_ms=args.start,
            seq_start=args.seq_start, connections=args.connections,
            processes=args.processes)
    except ValueError as exc:
        print(f"farmedge simulate: {exc}", file=sys.stderr)
        return 2
    from farmedge.cli import stop_on_signals
    from farmedge.logs import redact_url

    stop = stop_on_signals()
    n_gw = len(sim.streams)
    print(f"farmedge simulate: {args.farms} farms, {n_gw} gateways, "
          f"{n_gw * args.sensors} sensor channels -> {redact_url(args.mqtt_url)} "
          f"(county {args.county})",
          file=sys.stderr, flush=True)
    try:
        stats = sim.run(stop)
    except SimError as exc:
        print(f"farmedge simulate: {exc}", file=sys.stderr)
        return 1
    print(stats.summary(), flush=True)
    return 0 if stats.failed == 0 and stats.unacked == 0 else 1
