"""The InfluxDB writer: how it sorts every answer, what it sends.

The HTTP tests run against a small aiohttp server in this process that
records each request and answers as scripted. It stands in for InfluxDB
because the real one (1.6.7 here, v1 API only) cannot be made to answer
429, 503 with Retry-After, 401 on demand, or speak the v2 write API;
tests/integration/test_influx_writer.py covers what the real server does
(Basic auth, missing database or retention policy, partial writes, 413)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from pydantic import SecretStr

from farmedge.storage import StorageError
from farmedge.storage.influx import InfluxWriter, WriteKind, classify
from farmedge.storage.settings import InfluxSection
from farmedge_dev.devservers import free_port


@pytest.mark.parametrize(("status", "error", "kind"), [
    (204, "", WriteKind.OK), (200, "", WriteKind.OK),
    (0, "ClientConnectorError", WriteKind.RETRY),
    (500, '{"error":"timeout"}', WriteKind.RETRY), (502, "", WriteKind.RETRY),
    (503, "", WriteKind.RETRY), (504, "", WriteKind.RETRY), (429, "", WriteKind.RETRY),
    (408, "", WriteKind.RETRY),
    (413, '{"error":"Request Entity Too Large"}', WriteKind.TOO_LARGE),
    (400, '{"error":"partial write: unable to parse ...  dropped=0"}', WriteKind.REJECTED),
    (422, "", WriteKind.REJECTED),
    (401, "", WriteKind.AUTH), (403, "", WriteKind.AUTH),
    (404, '{"error":"database not found: \\"x\\""}', WriteKind.AUTH),
    (405, "", WriteKind.AUTH),
    # InfluxDB 1.6.7's answer to rp= naming a policy the database lacks.
    (500, '{"error":"retention policy not found: nope"}', WriteKind.AUTH),
])
def test_classify(status: int, error: str, kind: WriteKind) -> None:
    assert classify(status, error) is kind


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeInflux:
    answer: Callable[[Request], web.StreamResponse] = lambda r: web.Response(
        status=200 if r.path == "/query" else 204)
    seen: list[Request] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        r = Request(request.path, dict(request.query), dict(request.headers),
                    await request.read())
        self.seen.append(r)
        return self.answer(r)


@pytest.fixture
async def fake() -> AsyncIterator[FakeInflux]:
    f = FakeInflux()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", f.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    f.url = f"http://127.0.0.1:{port}"
    yield f
    await runner.cleanup()


async def _writer(**kw: object) -> InfluxWriter:
    w = InfluxWriter(InfluxSection(**kw))  # type: ignore[arg-type]
    await w.start()
    return w


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


async def test_v1_credentials_go_in_the_authorization_header(fake: FakeInflux) -> None:
    w = await _writer(url=fake.url, database="farm", username="edge", password=SecretStr("pw"),
                      retention_policy="raw")
    try:
        assert (await w.write(b"m f=1.0 1")).ok
        assert await w.ensure_database() and await w.ping()
    finally:
        await w.close()
    write, create, ping = fake.seen
    assert (write.path, write.query) == ("/write", {"db": "farm", "precision": "ms", "rp": "raw"})
    assert write.body == b"m f=1.0 1"
    for r in (write, create, ping):
        assert r.headers["Authorization"] == _basic("edge", "pw")
        assert not {"u", "p"} & set(r.query), r.query
    assert create.path == "/query" and b"CREATE+DATABASE" in create.body


async def test_credentials_in_the_url_go_in_the_header_too(fake: FakeInflux) -> None:
    """``http://user:pw@host`` as [influx] url: Basic auth, not the URL;
    with username set as well, username and password win (aiohttp refuses
    both at once: it raised ValueError out of write)."""
    host = fake.url.removeprefix("http://")
    for kw, expect in (({}, _basic("u@x", "p:w")),
                       ({"username": "edge", "password": SecretStr("pw")}, _basic("edge", "pw"))):
        fake.seen.clear()
        w = await _writer(url=f"http://u%40x:p%3Aw@{host}", **kw)
        try:
            assert (await w.write(b"m f=1.0 1")).ok
        finally:
            await w.close()
        [r] = fake.seen
        assert r.headers["Authorization"] == expect


async def test_v2_sends_the_token_org_and_bucket(fake: FakeInflux) -> None:
    w = await _writer(url=fake.url, api="v2", org="o", bucket="b", token=SecretStr("t0k"),
                      gzip=True)
    try:
        assert (await w.write(b"m f=1.0 1")).ok
        assert await w.ping()
        assert await w.ensure_database()  # v1 only: nothing sent
    finally:
        await w.close()
    write, ping = fake.seen
    assert (write.path, write.query) == ("/api/v2/write",
                                         {"org": "o", "bucket": "b", "precision": "ms"})
    assert write.headers["Authorization"] == ping.headers["Authorization"] == "Token t0k"
    assert write.headers["Content-Encoding"] == "gzip"
    # aiohttp's server inflates a gzip body itself.
    assert write.body == b"m f=1.0 1"


async def test_retry_after_and_the_error_text(fake: FakeInflux) -> None:
    fake.answer = lambda r: web.Response(status=503, text="  busy \n",
                                         headers={"Retry-After": "7"})
    w = await _writer(url=fake.url)
    try:
        res = await w.write(b"m f=1.0 1")
    finally:
        await w.close()
    assert (res.kind, res.status, res.error, res.retry_after_s) == (WriteKind.RETRY, 503,
                                                                     "busy", 7.0)
    assert res.retryable and not res.splittable


async def test_rejected_and_too_large_are_splittable(fake: FakeInflux) -> None:
    answers = iter([web.Response(status=400, text='{"error":"partial write"}'),
                    web.Response(status=413)])
    fake.answer = lambda r: next(answers)
    w = await _writer(url=fake.url)
    try:
        a, b = await w.write(b"x"), await w.write(b"y")
    finally:
        await w.close()
    assert (a.kind, b.kind) == (WriteKind.REJECTED, WriteKind.TOO_LARGE)
    assert a.splittable and b.splittable and a.error == '{"error":"partial write"}'


async def test_no_answer_is_a_retry() -> None:
    w = await _writer(url=f"http://127.0.0.1:{free_port()}")
    try:
        res = await w.write(b"m f=1.0 1")
        assert not await w.ping() and not await w.ensure_database()
    finally:
        await w.close()
    assert res.kind is WriteKind.RETRY and res.status == 0 and res.error


async def test_a_timeout_is_a_retry(fake: FakeInflux) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/write", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    w = await _writer(url=f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        res = await w.write(b"m f=1.0 1")
    finally:
        gate.set()
        await w.close()
        await runner.cleanup()
    assert res.kind is WriteKind.RETRY and res.status == 0 and "Timeout" in res.error


async def test_before_start_is_a_storage_error() -> None:
    w = InfluxWriter(InfluxSection())
    with pytest.raises(StorageError, match="start"):
        await w.write(b"m f=1.0 1")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8086/?u=admin&p=SECRET",
                                 "http://127.0.0.1:8086?p=SECRET", "http://h:8086/#SECRET"])
def test_a_url_with_a_query_is_refused_without_echoing_it(url: str) -> None:
    """InfluxDB 1.x accepts ``?u=&p=`` credentials: in the URL they would be
    logged at start (only userinfo is masked) and every write would go to
    ``/?u=..&p=../write``. The setting is refused; the message does not
    repeat the value."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        InfluxSection(url=url)
    [err] = e.value.errors()
    assert "must not have a query or fragment" in err["msg"]
    assert "SECRET" not in err["msg"]

