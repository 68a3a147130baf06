"""The edge's InfluxDB writes: the v2 API, and how each kind of failure is
handled (retry 5xx honouring Retry-After, split on 413, dead-letter the lines a
400 rejects, spool and alarm on 401).

These run against a small HTTP server that checks each request the way
InfluxDB's v2 write API defines it (POST /api/v2/write?org=&bucket=&precision=,
``Authorization: Token``, line protocol body) and answers as scripted. It stands
in for InfluxDB because no 2.x server can run here (Debian ships 1.6.7, v1 API
only) and because a real server cannot be made to answer 413, 429 or 401 on
demand. The broker is the real Mosquitto.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from farmedge.edge.app import EdgeService
from farmedge.edge.settings import (
    EdgeSettings,
    HttpSection,
    InfluxSection,
    MqttSection,
)
from farmedge_dev.devservers import MosquittoServer, free_port
from tests.support import Publisher, make_payload

pytestmark = pytest.mark.servers

LINE = re.compile(r"^[a-z_]+(,[a-z_]+=[^ ,=]+)* [a-z_]+=[^ ]+( \d+)$")


@dataclass
class FakeInfluxV2:
    token: str = "write-token"
    org: str = "county-org"
    bucket: str = "farm-raw"
    #: request -> (status, body, headers) or None for "store and 204"
    script: Callable[[list[str]], tuple[int, str, dict[str, str]] | None] = lambda lines: None
    stored: list[str] = field(default_factory=list)
    requests: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        if request.path != "/api/v2/write":
            self.problems.append(f"path {request.path}")
        if q.get("org") != self.org or q.get("bucket") != self.bucket:
            self.problems.append(f"org/bucket {dict(q)}")
        if q.get("precision") not in {"ns", "us", "ms", "s"}:
            self.problems.append(f"precision {q.get('precision')}")
        if not request.headers.get("Content-Type", "").startswith("text/plain"):
            self.problems.append("content type")
        if request.headers.get("Authorization") != f"Token {self.token}":
            return web.json_response({"code": "unauthorized", "message": "unauthorized access"},
                                     status=401)
        lines = (await request.text()).split("\n")
        self.requests.append((time.monotonic(), len(lines)))
        for ln in lines:
            # Readings are checked closely; the edge's own, dead-letter and
            # alert-record points (free text in string fields) are not.
            if not LINE.match(ln.replace('\\"', "").replace('"', "")) and "ingest_errors" \
                    not in ln and not ln.startswith(("edge,", "alerts,")):
                self.problems.append(f"line {ln[:80]}")
        answer = self.script(lines)
        if answer is None:
            self.stored.extend(lines)
            return web.Response(status=204)
        status, body, headers = answer
        return web.Response(status=status, text=body, headers=headers,
                            content_type="application/json")


async def _ping(request: web.Request) -> web.Response:
    return web.Response(status=204)


@pytest.fixture
async def fake_influx() -> AsyncIterator[FakeInfluxV2]:
    fake = FakeInfluxV2()
    app = web.Application()
    app.router.add_post("/api/v2/write", fake.handle)
    app.router.add_get("/ping", _ping)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def settings_for(fake: FakeInfluxV2, mosquitto: MosquittoServer, county: str,
                 tmp_path: Path, **influx: object) -> EdgeSettings:
    return EdgeSettings(
        data_dir=tmp_path / "edge",
        mqtt=MqttSection(url=mosquitto.url, client_id=f"edge-{county}",
                         topics=[f"farm/v1/{county}/+/+/telemetry"]),
        influx=InfluxSection(url=fake.url, api="v2", org=fake.org, bucket=fake.bucket,
                             token=SecretStr(fake.token), flush_interval_s=0.1,
                             backoff_min_s=0.05, **influx),  # type: ignore[arg-type]
        http=HttpSection(port=0),
    )


async def until(cond: Callable[[], object], limit: float = 45, what: str = "condition") -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met after {limit}s")
        await asyncio.sleep(0.05)


async def run_edge(s: EdgeSettings) -> tuple[EdgeService, asyncio.Event, asyncio.Task[None]]:
    svc = EdgeService(s)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await until(lambda: svc.mqtt.subscribed, what="subscribed")
    return svc, stop, task


async def publish(url: str, county: str, sensors: list[str], seq: int = 1) -> None:
    def go() -> None:
        p = Publisher(url)
        now = int(time.time() * 1000)
        readings = [{"sensor": s, "kind": "soil_moisture", "ts": now, "value": 20.5,
                     "unit": "%"} for s in sensors]
        p.publish(f"farm/v1/{county}/f/gw-1/telemetry", make_payload("gw-1", seq, readings))
        p.close()

    await asyncio.to_thread(go)


def soil(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("soil,")]


async def test_v2_write_api_request_is_well_formed(fake_influx: FakeInfluxV2,
                                                   mosquitto: MosquittoServer, county: str,
                                                   tmp_path: Path) -> None:
    _svc, stop, task = await run_edge(settings_for(fake_influx, mosquitto, county, tmp_path))
    await publish(mosquitto.url, county, [f"s{i}" for i in range(20)])
    await until(lambda: len(soil(fake_influx.stored)) == 20)
    stop.set()
    await task
    assert fake_influx.problems == []
    assert all(",county=" in ln and ",sensor=s" in ln for ln in soil(fake_influx.stored))


async def test_5xx_is_retried_honouring_retry_after(fake_influx: FakeInfluxV2,
                                                    mosquitto: MosquittoServer, county: str,
                                                    tmp_path: Path) -> None:
    calls = {"n": 0}

    def script(lines: list[str]) -> tuple[int, str, dict[str, str]] | None:
        calls["n"] += 1
        if calls["n"] == 1:
            return 503, '{"message":"error syncing wal"}', {"Retry-After": "1"}
        return None

    fake_influx.script = script
    svc, stop, task = await run_edge(settings_for(fake_influx, mosquitto, county, tmp_path))
    await publish(mosquitto.url, county, ["a", "b", "c"])
    await until(lambda: len(soil(fake_influx.stored)) == 3)
    (t1, _), (t2, _) = fake_influx.requests[:2]
    assert t2 - t1 >= 0.95, "Retry-After: 1 was honoured"
    assert svc.spool.lines == 0
    stop.set()
    await task


async def test_413_splits_the_batch(fake_influx: FakeInfluxV2, mosquitto: MosquittoServer,
                                    county: str, tmp_path: Path) -> None:
    fake_influx.script = lambda lines: (413, '{"message":"too large"}', {}) \
        if len(lines) > 7 else None
    _svc, stop, task = await run_edge(settings_for(fake_influx, mosquitto, county, tmp_path))
    await publish(mosquitto.url, county, [f"s{i}" for i in range(40)])
    await until(lambda: len(soil(fake_influx.stored)) == 40)
    stop.set()
    await task
    assert sorted(set(soil(fake_influx.stored))) == sorted(soil(fake_influx.stored))


async def test_400_partial_write_dead_letters_only_the_rejected_line(
        fake_influx: FakeInfluxV2, mosquitto: MosquittoServer, county: str,
        tmp_path: Path) -> None:
    def script(lines: list[str]) -> tuple[int, str, dict[str, str]] | None:
        bad = [ln for ln in lines if ln.startswith("soil,") and "sensor=conflict" in ln]
        if not bad:
            return None
        # like InfluxDB: the good lines are written, the request still fails
        fake_influx.stored.extend(ln for ln in lines if ln not in bad)
        return 400, ('{"code":"invalid","message":"partial write: field type conflict: '
                     'input field \\"moisture\\" on measurement \\"soil\\" is type float, '
                     'already exists as type string dropped=1"}'), {}

    fake_influx.script = script
    _svc, stop, task = await run_edge(settings_for(fake_influx, mosquitto, county, tmp_path))
    await publish(mosquitto.url, county, ["a", "conflict", "b", "c", "d"])
    await until(lambda: any(ln.startswith("ingest_errors,") for ln in fake_influx.stored))
    stop.set()
    await task
    assert sorted({ln.split(",sensor=")[1].split(" ")[0] for ln in soil(fake_influx.stored)}) \
        == ["a", "b", "c", "d"]
    [dead] = [ln for ln in fake_influx.stored if ln.startswith("ingest_errors,")]
    assert "reason=influx_rejected" in dead
    assert "field type conflict" in dead
    assert "sensor=conflict" in dead


async def test_401_keeps_the_data_in_the_spool_and_raises_the_alarm(
        fake_influx: FakeInfluxV2, mosquitto: MosquittoServer, county: str,
        tmp_path: Path) -> None:
    real_token = fake_influx.token
    svc, stop, task = await run_edge(settings_for(fake_influx, mosquitto, county, tmp_path,
                                                  retry_for_s=0.5, backoff_max_s=0.5))
    fake_influx.token = "rotated-by-the-admin"
    await publish(mosquitto.url, county, ["a", "b"])
    await until(lambda: svc.spool.lines >= 2, what="spooled")
    h = svc.health()
    assert not h.ok
    assert any("401" in r for r in h.reasons)
    fake_influx.token = real_token  # the admin fixes the token
    await until(lambda: len(soil(fake_influx.stored)) == 2, limit=60, what="replayed")
    await until(lambda: svc.health().ok, what="healthy again")
    assert svc.spool.lines == 0
    stop.set()
    await task
