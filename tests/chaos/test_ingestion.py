"""Blast radius of one gateway and of one message, against the real servers
with the edge as a process: a flooding gateway cannot take the database's
series from the others (cardinality budget), dead letters are never lost or
stamped in the future, and a message delivered any number of times (after
SIGKILLs, retained at reconnect) yields exactly the same points."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from farmedge.contract import encode_status
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.edgeproc import EdgeProcess
from tests.support import Publisher, count, eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.chaos]


def _publish_all(pub: Publisher, items: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    """Publish without waiting for each PUBACK, then wait for all of them."""
    infos = [pub.publish(t, p, wait=False, retain=retain) for t, p in items]
    for info in infos:
        info.wait_for_publish(60)


def _rows(url: str, db: str, q: str) -> list[list[Any]]:
    series = influx_query(url, q, db)
    return list(series[0]["values"]) if series else []  # type: ignore[call-overload]


def _reasons(url: str, db: str) -> dict[str, int]:
    series = influx_query(url, 'SELECT count("count") FROM ingest_errors GROUP BY "reason"', db)
    return {str(s["tags"]["reason"]): int(s["values"][0][1])  # type: ignore[index]
            for s in series}


def test_a_flooding_gateway_cannot_starve_a_registered_one(
        mosquitto: MosquittoServer, influx_factory: object, county: str,
        tmp_path: Path) -> None:
    """InfluxDB's series limit lowered to 400 and its tag-value limit to 300: a
    gateway inventing 3,000 sensor ids gets its budget (50) and dead letters
    for the rest; a registered gateway's readings are all stored; after a
    restart the budget still holds."""
    influx = InfluxServer(tmp_path / "influx", max_series_per_database=400,
                          max_values_per_tag=300).start()
    try:
        influx.create_database("farm")
        reg = tmp_path / "registry.yaml"
        reg.write_text(f"""
farms:
  - county: {county}
    farm: f
    gateways:
      gw-flood: {{}}
      gw-good:
        only_listed_sensors: true
        sensors: {{s0: {{}}, s1: {{}}, s2: {{}}, s3: {{}}, s4: {{}}}}
""")
        edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influx.url, database="farm",
                           data_dir=tmp_path / "edge", county=county,
                           extra_env={"FARMEDGE_REGISTRY": str(reg),
                                      "FARMEDGE_INGEST_MAX_IDS_PER_GATEWAY": "50"}).start()
        now = int(time.time() * 1000)
        pub = Publisher(mosquitto.url)
        flood = [(f"farm/v1/{county}/f/gw-flood/telemetry",
                  make_payload("gw-flood", m, [
                      {"sensor": f"x{m}-{j}", "kind": "soil_moisture", "ts": now - m,
                       "value": 20.0, "unit": "%"} for j in range(30)]))
                 for m in range(100)]
        good = [(f"farm/v1/{county}/f/gw-good/telemetry",
                 make_payload("gw-good", m, [
                     {"sensor": f"s{j}", "kind": "soil_moisture", "ts": now - 1000 * m,
                      "value": 21.0, "unit": "%"} for j in range(5)]))
                for m in range(20)]
        _publish_all(pub, flood)
        _publish_all(pub, good)
        pub.publish(f"farm/v1/{county}/f/gw-good/telemetry", make_payload("gw-good", 20, [
            {"sensor": "intruder", "kind": "soil_moisture", "ts": now, "value": 1.0,
             "unit": "%"}]))
        eventually(lambda: count(influx.url, "farm", "soil", "moisture",
                                 "gateway = 'gw-good'") == 100, timeout=60,
                   what="all 100 readings of the good gateway")
        eventually(lambda: count(influx.url, "farm", "ingest_errors", "count") == 2951,
                   timeout=60, what="2,950 budget dead letters and one unknown sensor")
        assert count(influx.url, "farm", "soil", "moisture", "gateway = 'gw-flood'") == 50
        assert _reasons(influx.url, "farm") == {"cardinality_budget": 2950,
                                                "unknown_sensor": 1}
        edge.stop()

        # The budget survives a restart: new ids are still refused.
        edge.start()
        pub.publish(f"farm/v1/{county}/f/gw-flood/telemetry", make_payload("gw-flood", 100, [
            {"sensor": f"y{j}", "kind": "soil_moisture", "ts": now, "value": 20.0,
             "unit": "%"} for j in range(10)]))
        pub.publish(f"farm/v1/{county}/f/gw-good/telemetry", make_payload("gw-good", 21, [
            {"sensor": "s0", "kind": "soil_moisture", "ts": now + 1, "value": 22.0,
             "unit": "%"}]))
        eventually(lambda: count(influx.url, "farm", "ingest_errors", "count") == 2961,
                   timeout=60, what="10 more budget dead letters after the restart")
        eventually(lambda: count(influx.url, "farm", "soil", "moisture",
                                 "gateway = 'gw-good'") == 101, timeout=30)
        assert count(influx.url, "farm", "soil", "moisture", "gateway = 'gw-flood'") == 50
        pub.close()
        assert "max-series" not in edge.log_tail(200_000)
        edge.stop()
    finally:
        influx.stop()


def test_dead_letters_of_a_burst_and_a_restart_are_all_kept_and_never_in_the_future(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """20,000 malformed messages in two bursts (the second the same bytes as
    the first: each message counts), the edge killed with SIGKILL in the
    middle of the first and restarted: exactly 20,000 dead letters, the
    redelivered ones not twice, none stamped after the edge's clock."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = Publisher(mosquitto.url)
    topic = f"farm/v1/{county}/f/gw-1/telemetry"
    # U+2028 (line separator) must be escaped as itself, not as "\x28".
    bad = [(topic, f"{{broken \u2028 {i}".encode()) for i in range(10_000)]
    infos = [pub.publish(t, p, wait=False) for t, p in bad]
    eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") >= 2000,
               timeout=120, what="the first dead letters")
    edge.kill()
    for info in infos:
        info.wait_for_publish(60)
    edge.start()
    eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") >= 10_000,
               timeout=120, what="the first burst's 10,000 dead letters")
    _publish_all(pub, bad)
    eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") >= 20_000,
               timeout=120, what="20,000 dead letters")
    done = int(time.time() * 1000)
    pub.close()
    edge.stop()
    assert count(influxdb.url, influx_db, "ingest_errors", "count") == 20_000
    [last] = _rows(influxdb.url, influx_db, 'SELECT last("count") FROM ingest_errors')
    assert int(last[0]) <= done, "no dead letter stamped in the future"
    [ex] = _rows(influxdb.url, influx_db, "SELECT excerpt FROM ingest_errors LIMIT 1")
    assert "\\u2028" in str(ex[1])
    tags = _rows(influxdb.url, influx_db, 'SHOW TAG KEYS FROM "ingest_errors"')
    assert sorted(t[0] for t in tags) == ["edge", "reason", "slot"]


def _unsynced(gateway: str, seq: int, sent: int, n: int) -> bytes:
    return make_payload(gateway, seq, [
        {"sensor": f"s{j}", "kind": "soil_moisture", "ts": sent - 500,
         "value": round(20.0 + j + seq * 0.001, 3), "unit": "%"} for j in range(n)],
        sent=sent, clock="unsynced")


def _what_the_edge_did(edge: EdgeProcess, url: str, db: str, sent_of: dict[int, int]) -> str:
    """What is stored and what the edge says, for a failure message."""
    out: list[str] = []
    try:
        rows = _rows(url, db, "SELECT moisture, sensor FROM soil")
        by_sensor: dict[str, set[int]] = {}
        times: dict[int, int] = {}
        for ts, value, sensor in rows:
            j = int(str(sensor)[1:])
            by_sensor.setdefault(str(sensor), set()).add(round((float(value) - 20.0 - j) * 1000))
            times[int(ts)] = times.get(int(ts), 0) + 1
        out.append(f"points: {len(rows)}, distinct times: {len(times)}")
        missing = sorted(set(range(600)) - by_sensor.get("s0", set()))
        out.append(f"seqs missing for s0 ({len(missing)}): {missing[:60]}")
        s0 = _rows(url, db, "SELECT moisture FROM soil WHERE sensor = 's0'")
        offsets: dict[int, list[int]] = {}
        for ts, value in s0:
            seq = round((float(value) - 20.0) * 1000)
            if seq in sent_of:
                offsets.setdefault(int(ts) - (sent_of[seq] - 500), []).append(seq)
        by_sent: dict[int, list[int]] = {}
        for seq, sent in sent_of.items():
            by_sent.setdefault(sent, []).append(seq)
        shared = [v for v in by_sent.values() if len(v) > 1]
        out.append(f"seqs published with the same sent ({len(shared)}): {shared[:30]}")
        out.append("offsets: " + ", ".join(f"{o}: seq {min(v)}..{max(v)} ({len(v)})"
                                           for o, v in sorted(offsets.items())))
    except Exception as exc:  # a report, not a check
        out.append(f"InfluxDB query failed: {exc!r}")
    try:
        out.append(f"healthz: {edge.health()}")
        out.append("metrics: " + " | ".join(
            ln for ln in edge.metrics().splitlines()
            if ln.startswith("farmedge_") and not ln.startswith("farmedge_write_latency")))
    except Exception as exc:
        out.append(f"edge did not answer: {exc!r}")
    out.append(f"edge log:\n{edge.log_tail(6000)}")
    return "\n".join(out)


def test_an_unsynced_gateway_redelivered_across_sigkills_is_stored_once(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """A gateway whose clock thinks it is 1970 publishes 600 messages of 10
    readings at 50 a second (its clock runs at real speed); the edge is
    killed with SIGKILL three times meanwhile. Exactly 6,000 points, all
    placed with one offset (so their spacing is the gateway's).

    Each message is sampled at its own millisecond: a publishing thread that
    falls behind on a loaded machine sends several at once, and two readings
    of a sensor at one ``ts`` are one point (docs/protocol.md, "Delivery and
    idempotency"), which a gateway must never send."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    topic = f"farm/v1/{county}/f/gw-1/telemetry"
    fake_base = 3_600_000
    t0 = time.monotonic()
    sent_of: dict[int, int] = {}
    done = threading.Event()

    def publish() -> None:
        pub = Publisher(mosquitto.url)
        infos = []
        sent = 0
        for seq in range(600):
            sent = sent_of[seq] = max(sent + 1, fake_base + int((time.monotonic() - t0) * 1000))
            infos.append(pub.publish(topic, _unsynced("gw-1", seq, sent, 10), wait=False))
            delay = t0 + (seq + 1) / 50 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for info in infos:
            info.wait_for_publish(60)
        pub.close()
        done.set()

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    seen = 0
    for _ in range(3):
        want = min(seen + 300, 6000)
        seen = eventually(lambda w=want: (n := count(influxdb.url, influx_db, "soil",  # type: ignore[misc]
                                                     "moisture")) >= w and n,
                          timeout=60, what="progress")
        edge.kill()
        edge.start()
    th.join(60)
    assert done.is_set()
    try:
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") >= 6000,
                   timeout=120, what="6,000 readings")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_what_the_edge_did(edge, influxdb.url, influx_db, sent_of)}"
                             ) from None
    edge.stop()
    assert count(influxdb.url, influx_db, "soil", "moisture") == 6000
    rows = _rows(influxdb.url, influx_db, "SELECT moisture FROM soil WHERE sensor = 's0'")
    placed = {round((float(v[1]) - 20.0) * 1000): int(v[0]) for v in rows}
    assert sorted(placed) == list(range(600))
    offsets = {t - (sent_of[seq] - 500) for seq, t in placed.items()}
    assert len(offsets) == 1, f"one offset for the whole run, got {sorted(offsets)[:5]}"


def test_a_backlog_queued_at_the_broker_keeps_its_spacing(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """The edge saw an unsynced gateway 11 minutes ago (its state file says so,
    as a running edge would have left it) and was away since; the gateway's
    ten messages of the last ten minutes, one a minute, arrive at once from
    the broker. They are stored a minute apart, not folded together."""
    from farmedge.edge.state import ClockSegment, IngestState

    data = tmp_path / "edge"
    data.mkdir()
    now = int(time.time() * 1000)
    fake_last = 3_600_000
    offset = (now - 660_000) - fake_last  # the gateway's last message 11 min ago
    st = IngestState(data / "ingest.sqlite3")
    st.save_segment((county, "f", "gw-1"),
                    ClockSegment(0, 0, 9, fake_last - 9000, fake_last, offset))
    st.close()
    pub = Publisher(mosquitto.url, client_id=f"gw-{county}")
    topic = f"farm/v1/{county}/f/gw-1/telemetry"
    # Queue the backlog in the edge's session: subscribe once, go away.
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "first", county=county).start()
    edge.stop()
    _publish_all(pub, [(topic, _unsynced("gw-1", 10 + i, fake_last + 60_000 * (i + 1), 1))
                       for i in range(10)])
    pub.close()
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=data, county=county).start()
    eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 10, timeout=30)
    edge.stop()
    times = [int(v[0]) for v in _rows(influxdb.url, influx_db, "SELECT moisture FROM soil")]
    assert [b - a for a, b in itertools.pairwise(times)] == [60_000] * 9
    assert times[0] == fake_last + 60_000 - 500 + offset


def test_retained_status_and_telemetry_land_on_the_same_points_at_every_reconnect(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """A retained last will (online: false, no time of its own) and a retained
    unsynced telemetry message, with the edge restarted three times (SIGTERM
    and SIGKILL): one status point at the time it was first stored, and the
    telemetry's readings once. An unsynced reading whose placed time would be
    before 2020 is a dead letter, not a point in 1970."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = Publisher(mosquitto.url)
    pub.publish(f"farm/v1/{county}/f/gw-1/status",
                encode_status(gateway="gw-1", online=False), retain=True)
    fake = 3_600_000
    pub.publish(f"farm/v1/{county}/f/gw-1/telemetry", _unsynced("gw-1", 1, fake, 3),
                retain=True)
    # Its clock says 2255 and the reading is from 1970: placed before 2020.
    pub.publish(f"farm/v1/{county}/f/gw-3/telemetry", make_payload("gw-3", 1, [
        {"sensor": "old", "kind": "soil_moisture", "ts": 0, "value": 20.0, "unit": "%"}],
        sent=9_000_000_000_000, clock="unsynced"))
    synced_ts = int(time.time() * 1000) - 5000
    pub.publish(f"farm/v1/{county}/f/gw-2/status", encode_status(
        gateway="gw-2", online=True, ts=synced_ts, clock="synced"), retain=True)
    eventually(lambda: count(influxdb.url, influx_db, "gateway", "online") == 2)
    eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 3)
    first = _rows(influxdb.url, influx_db, "SELECT online FROM gateway WHERE gateway = 'gw-1'")
    eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") == 1)
    for stop in (edge.stop, edge.kill, edge.stop):
        stop()
        edge.start()
        # the three retained messages, handled again
        eventually(lambda: edge.health().get("messages", 0) >= 3
                   and edge.health().get("pending_messages") == 0, timeout=20)
    edge.stop()
    pub.close()
    assert count(influxdb.url, influx_db, "gateway", "online") == 2
    assert count(influxdb.url, influx_db, "soil", "moisture") == 3
    again = _rows(influxdb.url, influx_db, "SELECT online FROM gateway WHERE gateway = 'gw-1'")
    assert again == first
    gw2 = _rows(influxdb.url, influx_db, "SELECT online FROM gateway WHERE gateway = 'gw-2'")
    assert gw2 == [[synced_ts, True]], "a synced status at its own time"
    assert _reasons(influxdb.url, influx_db) == {"ts_implausible": 1}
    [oldest] = _rows(influxdb.url, influx_db, "SELECT first(moisture) FROM soil")
    assert int(oldest[0]) > 1_577_836_800_000


def test_an_edge_whose_ingest_state_file_is_corrupt_sets_it_aside_and_runs(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """A state file damaged on disk (a bad SD card, a half-copied backup) is
    moved aside and a fresh one started: the edge runs, stores readings,
    /healthz is healthy and what it learns is saved again."""
    data = tmp_path / "edge"
    data.mkdir()
    (data / "ingest.sqlite3").write_bytes(b"this is not a database " * 200)
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=data, county=county).start()
    pub = Publisher(mosquitto.url)
    try:
        now = int(time.time() * 1000)
        pub.publish(f"farm/v1/{county}/farm-1/gw-1/telemetry", make_payload("gw-1", 0, [
            {"sensor": f"s{i}", "kind": "soil_moisture", "ts": now - 1000, "value": 20.0,
             "unit": "%"} for i in range(5)]))
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 5,
                   timeout=30, what="readings stored")
        h = edge.health()
        assert h["http_status"] == 200 and h["status"] == "ok", h
        aside = list(data.glob("ingest.sqlite3.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    finally:
        pub.close()
        assert edge.stop() == 0
    with sqlite3.connect(data / "ingest.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM known_id").fetchone()[0] == 5


def test_an_edge_whose_ingest_state_cannot_be_opened_says_so_and_runs(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """The state file is a directory (an operator's mistake): the edge runs
    from memory, stores readings, and /healthz is degraded with the reason."""
    data = tmp_path / "edge"
    (data / "ingest.sqlite3").mkdir(parents=True)
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=data, county=county).start()
    pub = Publisher(mosquitto.url)
    try:
        now = int(time.time() * 1000)
        pub.publish(f"farm/v1/{county}/farm-1/gw-1/telemetry", make_payload("gw-1", 0, [
            {"sensor": "s1", "kind": "soil_moisture", "ts": now - 1000, "value": 20.0,
             "unit": "%"}]))
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 1,
                   timeout=30, what="reading stored")
        h = edge.health()
        assert h["http_status"] == 503 and h["status"] == "degraded", h
        assert any("ingest state unavailable" in r for r in h["reasons"]), h
    finally:
        pub.close()
        assert edge.stop() == 0
