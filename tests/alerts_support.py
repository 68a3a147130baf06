"""Receivers and helpers for the alert tests: a local HTTP server that Apprise's
``json://`` posts to, a local SMTP server (aiosmtpd) for ``mailto://``, a
simulated clock, and a small MQTT feeder that stands in for the edge where a
test needs the engine alone (it parses with the same wire contract and hands
the engine one Accepted record per message on the event loop, as the edge
does)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from aiohttp import web
from aiosmtpd.controller import Controller
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.contract import encode_status
from farmedge.contract.models import Clock, GatewayStatus
from farmedge.contract.parse import parse_telemetry
from farmedge.contract.topics import parse_gateway_topic
from farmedge.records import Accepted, StatusEvent
from farmedge.records import Stage as Observer
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta
from farmedge_dev.devservers import free_port

T = TypeVar("T")
CST = timezone(timedelta(hours=8))


def local_ts(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    """Epoch seconds of a China Standard Time wall clock."""
    return datetime(y, mo, d, h, mi, tzinfo=CST).timestamp()


def soil_dry_rules(for_s: float) -> str:
    """A rule file of one soil-moisture rule held ``for_s`` seconds (below 20 %
    raises, from 24 % clears) and no device rules: short enough for the
    cluster tests' handovers."""
    return f"""
profiles:
  test-dry:
    description: one soil rule with short times, for tests
    rules:
      - id: soil-dry
        kind: soil_moisture
        when: {{below: 20}}
        clear: {{at_least: 24}}
        for: {for_s:g}s
        group_by: plot
        template: soil-dry
  device:
    rules: []
"""


class SimClock:
    """Simulated time in epoch seconds; tests move it with ``advance``."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    @property
    def ms(self) -> int:
        return int(self.t * 1000)


def farm_registry(county: str = "c1", *, contacts: list[Contact], profile: str = "test-dry",
                  sensors: int = 2, budget: int = 10, center: list[Contact] | None = None,
                  interval: float = 600) -> Registry:
    """One farm (wang-12, gateway gw-1) with ``sensors`` soil probes in one plot."""
    sens = {f"soil-{i}": SensorMeta(plot="field-3", crop="maize", interval_s=interval)
            for i in range(1, sensors + 1)}
    return Registry(
        farms=[Farm(county=county, farm="wang-12", name="王家农场", profile=profile,
                    plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36,
                                           wilting_point=19)},
                    gateways={"gw-1": GatewayEntry(interval_s=interval, sensors=sens)},
                    contacts=contacts, daily_message_budget=budget)],
        center_contacts=center or [])


async def until(fn: Callable[[], T], *, timeout: float = 30.0,  # noqa: ASYNC109
                what: str = "condition") -> T:
    """Poll ``fn`` on the event loop until truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not met after {timeout}s (last: {last!r})")


async def settle(engine: Any, *, passes: int = 3) -> None:
    """Let the engine run a few passes and finish in-flight sends (real time,
    bounded): used before asserting that nothing more was sent."""
    for _ in range(passes):
        engine.wake()
        await asyncio.sleep(0.05)
        await until(lambda: not engine._inflight, timeout=30, what="sends finished")


class HttpReceiver:
    """An aiohttp server collecting Apprise ``json://`` posts. ``fail_next``
    makes the next N requests answer 500."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[dict[str, Any]] = []
        self.fail_next = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "sms") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500, text="try later")
        body["_path"] = request.path
        self.posts.append(body)
        return web.Response(text="ok")

    def messages(self, path: str | None = None) -> list[str]:
        return [p["message"] for p in self.posts if path is None or p["_path"] == f"/{path}"]

    async def start(self) -> HttpReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ThreadedReceiver:
    """An :class:`HttpReceiver` on an event loop of its own thread, for tests
    that are not async (those running the edge as a process): the
    ``threaded_http`` fixture."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.http = asyncio.run_coroutine_threadsafe(HttpReceiver().start(),
                                                     self.loop).result(30)

    def messages(self, path: str) -> list[str]:
        return list(self.http.messages(path))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.http.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class SmtpReceiver:
    """A local SMTP server (aiosmtpd) collecting mails for ``mailto://``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()
        self._ctl = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.mails.append(msg)  # type: ignore[arg-type]
        return "250 OK"

    def url(self, to: str = "agronomist@example.org") -> str:
        return f"mailto://127.0.0.1:{self.port}?from=edge@example.org&to={to}"

    def bodies(self) -> list[str]:
        out = []
        with self._lock:
            for m in self.mails:
                part = m.get_body(preferencelist=("plain",)) if m.is_multipart() else m
                assert part is not None
                out.append(part.get_content().strip())
        return out

    def start(self) -> SmtpReceiver:
        self._ctl.start()
        return self

    def stop(self) -> None:
        self._ctl.stop()


class MqttFeeder:
    """Subscribes to one county's telemetry and status on the real broker and
    hands them to an Observer on the loop, as the edge does after its writes.
    Reading times come from the payload; ``clock`` stamps status events."""

    def __init__(self, url_port: int, county: str, observer: Observer,
                 loop: asyncio.AbstractEventLoop, clock: Callable[[], float],
                 registry: Registry | None = None) -> None:
        self.index = registry.index() if registry is not None else {}
        self.county = county
        self.observer = observer
        self.loop = loop
        self.clock = clock
        self.rejected = 0
        self._ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._ready.set()
        c.connect("127.0.0.1", url_port)
        c.loop_start()
        self.client = c
        if not self._ready.wait(10):
            raise AssertionError("feeder could not subscribe")

    def _on_connect(self, client: Any, *a: Any) -> None:
        client.subscribe([(f"farm/v1/{self.county}/+/+/telemetry", 1),
                          (f"farm/v1/{self.county}/+/+/status", 1)])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        t = parse_gateway_topic(msg.topic)
        if t.channel == "status":
            st = GatewayStatus.model_validate_json(msg.payload)
            ev = StatusEvent(t.county, t.farm, t.gateway, st, int(self.clock() * 1000))
            self.loop.call_soon_threadsafe(self.observer.on_status, ev)
            return
        parsed = parse_telemetry(msg.payload)
        self.rejected += len(parsed.rejected)
        ok = parsed.envelope.clock == Clock.SYNCED
        hit = self.index.get((t.county, t.farm, t.gateway))
        rec = Accepted(t.county, t.farm, t.gateway, int(self.clock() * 1000), ok, 0,
                       parsed.readings, hit[1] if hit is not None else None)
        self.loop.call_soon_threadsafe(self.observer.on_accepted, [rec])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reading(sensor: str, kind: str, value: float, ts_ms: int, unit: str = "%",
            **extra: Any) -> dict[str, Any]:
    return {"sensor": sensor, "kind": kind, "ts": ts_ms, "value": value, "unit": unit, **extra}


def status_payload(gateway: str, online: bool, **extra: Any) -> bytes:
    return encode_status(gateway=gateway, online=online, **extra)
