"""Helpers for the gateway tests: settings, an agent on its own thread, a
telemetry subscriber with a persistent session."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from farmedge.contract import ParsedTelemetry, parse_telemetry
from farmedge.gateway import Agent, GatewaySettings
from farmedge.gateway.clock import ClockSource
from farmedge.gateway.drivers import Driver

from .edgeproc import EdgeProcess as _EdgeProcess


def _merged(doc: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``over``: a section is merged key by key, anything else replaced."""
    out = dict(doc)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def gateway_doc(url: str, county: str, data: Path, **over: Any) -> dict[str, Any]:
    """A gateway's settings as the test gateways run them, with ``over``
    merged in (a section key by key, any other key replaced)."""
    return _merged({
        "county": county, "farm": "farm-1", "gateway": "gw-1", "data_dir": str(data),
        "log_format": "json",
        "mqtt": {"url": url, "backoff_min_s": 0.1, "backoff_max_s": 0.5},
        "outbox": {"commit_interval_s": 0.2},
        "uplink": {"batch_max_wait_s": 0.2},
        "clock": {"source": "trust"},
        "sensors": [],
    }, over)


def gw_settings(tmp: Path, url: str, county: str, **over: Any) -> GatewaySettings:
    """gateway_doc for an agent in this process (data in ``tmp``/data)."""
    doc = gateway_doc(url, county, tmp / "data", log_format="console",
                      status={"interval_s": 0.5})
    return GatewaySettings.model_validate(_merged(doc, over))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def write_gateway_toml(path: Path, url: str, county: str, data: Path, **over: Any) -> Path:
    """gateway_doc written as a gateway.toml for ``farmedge gateway run``."""
    doc = gateway_doc(url, county, data, **over)
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items()
              if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items()
             if k not in tables and k not in arrays]
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    for name, items in arrays.items():
        for item in items:
            lines += [f"[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentThread:
    """Runs an Agent on an event loop of its own; ``stop()`` is SIGTERM."""

    def __init__(self, settings: GatewaySettings, *, clock: ClockSource | None = None,
                 drivers: dict[str, Driver] | None = None) -> None:
        self.agent = Agent(settings, clock=clock, drivers=drivers, drain_s=5)
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self._started.set()
            await self.agent.run(self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def start(self) -> AgentThread:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "agent did not stop"
        if self.error is not None:
            raise self.error


class Subscriber:
    """Subscribes to everything under farm/v1/{county}/# with a persistent
    session, so it gets every QoS 1 message even across broker restarts."""

    def __init__(self, url: str, county: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.county = county
        self.telemetry: list[ParsedTelemetry] = []
        self.content_types: list[str | None] = []
        self.sizes: list[int] = []
        self.status: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.values: dict[str, set[float]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id="sub-" + uuid.uuid4().hex[:8], protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self._connected = threading.Event()
        self.client.reconnect_delay_set(0.1, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(self.host, self.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._connected.wait(10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"farm/v1/{self.county}/#", qos=1)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self._handle(msg)
        except Exception as exc:  # keep the network thread alive; tests check this
            self.errors.append(f"{msg.topic}: {type(exc).__name__}: {exc}")

    def _handle(self, msg: Any) -> None:
        import json

        if msg.topic.endswith("/status"):
            self.status.append(json.loads(msg.payload))
            return
        if not msg.topic.endswith("/telemetry"):
            return  # alerts the edge raised
        ct = getattr(msg.properties, "ContentType", None) if msg.properties else None
        self.content_types.append(ct)
        self.sizes.append(len(msg.payload))
        p = parse_telemetry(msg.payload, content_type=ct)
        self.telemetry.append(p)
        for r in p.readings:
            self.values.setdefault(r.sensor, set()).add(r.value)

    def readings(self) -> list[tuple[str, str, int, float]]:
        assert not self.errors, self.errors[:3]
        return [(r.sensor, r.kind.name, r.ts_ms, r.value)
                for p in list(self.telemetry) for r in p.readings]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class EdgeProcess(_EdgeProcess):
    """``python -m farmedge edge run`` writing to one InfluxDB database,
    started and subscribed on construction (tests/edgeproc.py does the work)."""

    def __init__(self, mqtt_url: str, influx_url: str, database: str, data: Path) -> None:
        super().__init__(mqtt_url=mqtt_url, influx_url=influx_url, database=database,
                         data_dir=data, client_id="edge-" + uuid.uuid4().hex[:8])
        self.start()

    def stop(self, *args: Any, **kw: Any) -> int:
        rc = super().stop(*args, **kw)
        assert rc == 0, self.log_tail()
        return rc


def influx_points(url: str, db: str, measurement: str, field: str,
                  where: str = "") -> list[tuple[int, float, str]]:
    """(time ms, value, sensor) of every point, oldest first."""
    from farmedge_dev.devservers import influx_query

    q = f'SELECT "{field}", "sensor" FROM "{measurement}"' + (f" WHERE {where}" if where else "")
    try:
        series = influx_query(url, q, db)
    except Exception:
        return []
    out = []
    for s in series:
        for t, v, sensor in s["values"]:  # type: ignore[union-attr]
            out.append((int(t), float(v), str(sensor)))
    return out
