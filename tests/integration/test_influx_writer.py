"""The InfluxDB writer against the real InfluxDB 1.6.7 with authentication
on and v1-setup.iql's users: credentials as HTTP Basic auth (the server's
own request log shows the user and no credentials in the URL), and how the
writer sorts what the real server answers (missing database, missing
retention policy, a partial write, a body over max-body-size); and the
InfluxQL reader (farmedge.storage.query) with the same credentials."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from farmedge.storage.influx import InfluxWriter, WriteKind
from farmedge.storage.query import DatabaseNotFound, InfluxQuery, QueryError
from farmedge.storage.settings import InfluxSection
from tests.stack_support import (
    ADMIN,
    EDGE_USER,
    ENV,
    GRAFANA_USER,
    AuthInflux,
    query,
    setup_v1,
)
from tests.support import eventually

pytestmark = pytest.mark.servers

DB = ENV["INFLUX_DATABASE"]
MAX_BODY = 20_000
UNICODE_USER = ("农场-edge", "密码-ü-1")
#: Within the raw retention policy (400 days).
T0 = int(time.time() * 1000) - 60_000


def lp(text: str) -> bytes:
    """Lines with times relative to T0 (``@5`` is T0 + 5 ms)."""
    return re.sub(r"@(\d+)", lambda m: str(T0 + int(m[1])), text).encode()


@dataclass
class LoggingInflux(AuthInflux):
    """Request log on (InfluxDB logs each request with its user), and a
    small max-body-size so that a 413 is easy to provoke."""

    def conf_text(self) -> str:
        return super().conf_text().replace(
            "  log-enabled = false\n  max-body-size = 0",
            f"  log-enabled = true\n  max-body-size = {MAX_BODY}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggingInflux]:
    s = setup_v1(LoggingInflux(tmp_path_factory.mktemp("influx-writer")).start())
    user, pw = UNICODE_USER
    query(s.url, f"CREATE USER \"{user}\" WITH PASSWORD '{pw}'", ADMIN)
    query(s.url, f'GRANT WRITE ON "{DB}" TO "{user}"', ADMIN)
    yield s
    s.stop()


@pytest.fixture
async def writer_for(server: LoggingInflux) -> AsyncIterator[type[InfluxWriter]]:
    made: list[InfluxWriter] = []

    class Made(InfluxWriter):
        def __init__(self, settings: InfluxSection) -> None:
            super().__init__(settings)
            made.append(self)

    yield Made
    for w in made:
        await w.close()


def _settings(server: LoggingInflux, user: tuple[str, str] | None = EDGE_USER,
              **kw: object) -> InfluxSection:
    creds: dict[str, object] = {}
    if user is not None:
        creds = {"username": user[0], "password": SecretStr(user[1])}
    return InfluxSection(**{"url": server.url, "database": DB, "create_database": False,
                            **creds, **kw})


def _count(server: LoggingInflux, measurement: str) -> int:
    rows = query(server.url, f'SELECT count("f") FROM "{measurement}"', ADMIN, DB)
    return int(rows[0]["values"][0][1]) if rows else 0


async def test_credentials_go_as_basic_auth_never_in_the_url(
        server: LoggingInflux, writer_for: type[InfluxWriter]) -> None:
    w = writer_for(_settings(server))
    await w.start()
    res = await w.write(lp("auth_ok f=1.0 @1000\nauth_ok f=2.0 @2000"))
    assert res.ok, res
    assert _count(server, "auth_ok") == 2
    admin = writer_for(_settings(server, ADMIN, create_database=True))
    await admin.start()
    assert await admin.ensure_database() and await admin.ping()
    log = server.log_path.read_text(errors="replace")
    assert any('"POST /query HTTP' in ln and f" - {ADMIN[0]} [" in ln for ln in log.splitlines())
    assert ADMIN[1] not in log
    writes = [ln for ln in log.splitlines() if '"POST /write?' in ln]
    assert writes and all(f" - {EDGE_USER[0]} [" in ln for ln in writes), writes[-3:]
    assert EDGE_USER[1] not in log
    assert not re.search(r"[?&](u|p)=", log)


async def test_a_password_outside_latin_1(server: LoggingInflux,
                                          writer_for: type[InfluxWriter]) -> None:
    """Sent as UTF-8, as InfluxDB stored it (aiohttp's BasicAuth encoded
    latin-1 and raised UnicodeEncodeError out of write)."""
    w = writer_for(_settings(server, UNICODE_USER))
    await w.start()
    assert (await w.write(lp("auth_utf8 f=1.0 @1000"))).ok
    assert _count(server, "auth_utf8") == 1


@pytest.mark.parametrize("user", [None, (EDGE_USER[0], "wrong")])
async def test_refused_credentials_raise_the_alarm(
        server: LoggingInflux, writer_for: type[InfluxWriter],
        user: tuple[str, str] | None) -> None:
    w = writer_for(_settings(server, user))
    await w.start()
    res = await w.write(lp("auth_bad f=1.0 @1000"))
    assert (res.kind, res.status) == (WriteKind.AUTH, 401), res
    assert _count(server, "auth_bad") == 0


async def test_missing_database_or_retention_policy_is_not_retried(
        server: LoggingInflux, writer_for: type[InfluxWriter]) -> None:
    """InfluxDB 1.6.7 answers 404 to a missing database and 500 to a missing
    retention policy: both are configuration, kept and alarmed (a missing
    policy was retried as if InfluxDB were busy)."""
    w = writer_for(InfluxSection(url=server.url, database="nope", create_database=False,
                                 username=ADMIN[0], password=SecretStr(ADMIN[1])))
    await w.start()
    res = await w.write(lp("m f=1.0 @1000"))
    assert (res.kind, res.status) == (WriteKind.AUTH, 404) and "database not found" in res.error
    w = writer_for(_settings(server, ADMIN, retention_policy="nope"))
    await w.start()
    res = await w.write(lp("m f=1.0 @1000"))
    assert (res.kind, res.status) == (WriteKind.AUTH, 500), res
    assert "retention policy not found" in res.error


async def test_a_partial_write_keeps_the_good_lines(
        server: LoggingInflux, writer_for: type[InfluxWriter]) -> None:
    w = writer_for(_settings(server))
    await w.start()
    assert (await w.write(lp("partial f=1.0 @1000"))).ok
    res = await w.write(lp("partial f=2.0 @2000\npartial f=3i @3000\npartial f= @4000\n"
                           "partial f=5.0 @5000"))
    assert (res.kind, res.status) == (WriteKind.REJECTED, 400) and "partial write" in res.error
    assert res.splittable
    eventually(lambda: _count(server, "partial") == 3, timeout=30, what="good lines stored")


async def test_a_body_over_max_body_size_is_split(
        server: LoggingInflux, writer_for: type[InfluxWriter]) -> None:
    w = writer_for(_settings(server))
    await w.start()
    lines = [f"big,sensor=s{i} f={i}.0 {T0 + i}" for i in range(1000)]
    body = "\n".join(lines).encode()
    assert len(body) > MAX_BODY
    res = await w.write(body)
    assert (res.kind, res.status) == (WriteKind.TOO_LARGE, 413) and res.splittable
    half = len(lines) // 4
    for part in (lines[i:i + half] for i in range(0, len(lines), half)):
        assert (await w.write("\n".join(part).encode())).ok
    assert _count(server, "big") == 1000


async def test_the_reader_sends_the_same_credentials(
        server: LoggingInflux, writer_for: type[InfluxWriter]) -> None:
    w = writer_for(_settings(server))
    await w.start()
    assert (await w.write(lp("read_me,sensor=s1 f=1.0 @1000\nread_me,sensor=s2 f=2.0 @2000"))).ok
    ask = InfluxQuery(_settings(server, GRAFANA_USER))
    [counts, tags] = ask(['SELECT count("f") FROM "read_me"',
                          'SHOW TAG VALUES FROM "read_me" WITH KEY = "sensor"'])
    assert counts[0]["values"][0][1] == 2
    assert [v[1] for v in tags[0]["values"]] == ["s1", "s2"]
    log = server.log_path.read_text(errors="replace")
    reads = [ln for ln in log.splitlines() if '"POST /query ' in ln]
    assert any(f" - {GRAFANA_USER[0]} [" in ln for ln in reads)
    assert GRAFANA_USER[1] not in log
    with pytest.raises(QueryError, match="authorization failed"):
        InfluxQuery(_settings(server, (GRAFANA_USER[0], "wrong")))(["SHOW MEASUREMENTS"])
    with pytest.raises(DatabaseNotFound) as e:
        InfluxQuery(InfluxSection(url=server.url, database="nope", username=ADMIN[0],
                                  password=SecretStr(ADMIN[1])))(['SELECT * FROM "m"'] * 2)
    assert e.value.database == "nope"
