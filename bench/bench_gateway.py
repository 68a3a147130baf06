"""Gateway agent benchmark: prints its figures.

(1) bytes per reading on the wire, MQTT framing included (PUBLISH QoS 1 with
    an MQTT 5 content type, and its PUBACK): JSON one reading per message,
    JSON 60 per message, compact 60 per message;
(2) what a month of a 20-sensor farm at one reading per sensor every 10
    minutes costs, telemetry alone and with status messages and keepalives;
(3) backlog replay: readings/s from a 500,000-reading outbox to InfluxDB
    through the edge (real Mosquitto, edge process, InfluxDB);
(4) the gateway process after N seconds of 50 simulated sensors at 1 Hz:
    resident memory and CPU seconds per 1,000 readings.

Usage:

    python bench/bench_gateway.py [--only wire,month,replay,rss]
                                  [--rss-seconds 600] [--backlog 500000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farmedge.contract import (  # noqa: E402
    COMPACT,
    JSON,
    encode_compact,
    encode_json,
    encode_status,
    status_topic,
    telemetry_topic,
)
from farmedge.contract.models import Quality  # noqa: E402
from farmedge.simdata import make_farms  # noqa: E402
from farmedge_dev.devservers import (  # noqa: E402
    InfluxServer,
    MosquittoServer,
    free_port,
    influx_query,
    process_stats,
    wait_edge_subscribed,
)

COUNTY, FARM, GATEWAY = "heilongjiang-bayan", "farm-001", "gw-001-1"
TOPIC = telemetry_topic(COUNTY, FARM, GATEWAY)
PUBACK = 4  # MQTT 5 PUBACK with reason "success" and no properties


def _varint_len(n: int) -> int:
    k = 1
    while n >= 128:
        n //= 128
        k += 1
    return k


def publish_bytes(topic: str, payload: int, content_type: str | None) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH on the wire plus its PUBACK."""
    props = 0 if content_type is None else 1 + 2 + len(content_type.encode())
    variable = 2 + len(topic.encode()) + 2 + _varint_len(props) + props
    remaining = variable + payload
    return 1 + _varint_len(remaining) + remaining + PUBACK


def farm_readings(sensors: int, rounds: int, interval_ms: int) -> list[dict[str, Any]]:
    """Realistic readings of one gateway from farmedge.simdata, round by round."""
    [farm] = make_farms(seed=1, county=COUNTY, farms=1, sensors=sensors)
    gw = farm.gateways[0]
    t0 = 1_763_800_000_000
    out = []
    for k in range(rounds):
        out += [r.to_wire() for r in gw.round(t0 + k * interval_ms, interval_ms=interval_ms)]
    return out


def envelope(readings: list[dict[str, Any]], seq: int) -> bytes:
    return encode_json(gateway=GATEWAY, seq=seq, sent=1_763_800_000_000, clock="synced",
                       readings=readings)


def wire(per_message: int = 60) -> dict[str, float]:
    rs = farm_readings(sensors=20, rounds=30, interval_ms=600_000)  # 600 readings
    n = len(rs)
    one = sum(publish_bytes(TOPIC, len(envelope([r], 18231)), JSON) for r in rs) / n
    # The same message without MQTT 5 properties (a 3.1.1 publisher, pretty JSON).
    pretty = sum(publish_bytes(TOPIC, len(json.dumps(
        {"v": 1, "gateway": GATEWAY, "seq": 18231, "sent": 1_763_800_000_000,
         "clock": "synced", "readings": [r]}, indent=1).encode()), None) for r in rs) / n
    out = {"json_1": one, "json_1_pretty_v311": pretty}
    batches = [rs[i:i + per_message] for i in range(0, n, per_message)]
    out["json_60"] = sum(publish_bytes(TOPIC, len(envelope(b, 18231)), JSON)
                         for b in batches) / n
    for comp in ("deflate-dict", "zstd-dict", "zstd", "none"):
        total = 0
        for b in batches:
            p = encode_compact(gateway=GATEWAY, seq=18231, sent=1_763_800_000_000,
                               clock="synced", readings=b, compression=comp)
            total += publish_bytes(TOPIC, len(p), COMPACT)
        out[f"compact_60_{comp}"] = total / n
    return out


def month(status_interval_s: float, keepalive_s: float) -> dict[str, float]:
    """A 20-sensor farm, one reading per sensor every 10 minutes, 30 days."""
    rounds_per_month = 30 * 24 * 6
    rs = farm_readings(sensors=20, rounds=36, interval_ms=600_000)  # 6 hours
    out: dict[str, float] = {}
    # Default settings (batch_max_wait_s 60): one message per round of 20.
    for label, per_msg_rounds in (("compact_per_round", 1), ("compact_60", 3),
                                  ("json_per_round", 1)):
        total = 0
        for i in range(0, len(rs), 20 * per_msg_rounds):
            b = rs[i:i + 20 * per_msg_rounds]
            if label.startswith("json"):
                total += publish_bytes(TOPIC, len(envelope(b, 18231)), JSON)
            else:
                p = encode_compact(gateway=GATEWAY, seq=18231, sent=1_763_800_000_000,
                                   clock="synced", readings=b)
                total += publish_bytes(TOPIC, len(p), COMPACT)
        out[label] = total / 36 * rounds_per_month / 1e6
    json_each = sum(publish_bytes(TOPIC, len(envelope([r], 18231)), JSON) for r in rs)
    out["json_one_per_message"] = json_each / 36 * rounds_per_month / 1e6
    status = encode_status(gateway=GATEWAY, online=True, ts=1_763_800_000_123,
                           uptime_s=864000.2, version="0.1.0", clock="synced", outbox_depth=0,
                           dropped=0, outbox_oldest_age_s=0.0, cpu_temperature=51.2,
                           disk_free_mb=9123.4)
    seconds = 30 * 86400
    out["status"] = (seconds / status_interval_s
                     * publish_bytes(status_topic(COUNTY, FARM, GATEWAY), len(status), None)
                     / 1e6)
    out["keepalive"] = seconds / keepalive_s * 4 / 1e6  # PINGREQ + PINGRESP, 2 bytes each
    # What a metered SIM counts: IP packets. Each exchange (PUBLISH + PUBACK,
    # PINGREQ + PINGRESP) is about 4 TCP segments (data and ACK each way) of
    # 52 bytes of IPv4 + TCP headers (with the timestamp option).
    exchanges = rounds_per_month + seconds / status_interval_s + seconds / keepalive_s
    out["tcp_ip_headers"] = exchanges * 4 * 52 / 1e6
    return out


# -- processes ----------------------------------------------------------------


def gateway_config(path: Path, url: str, data: Path, sensors: int, interval_s: float,
                   extra: str = "") -> None:
    kinds = ["soil_moisture", "soil_temperature", "air_temperature", "air_humidity",
             "animal_body_temperature", "water_level", "battery_voltage", "soil_ec"]
    body = [f'county = "{COUNTY}"', f'farm = "{FARM}"', f'gateway = "{GATEWAY}"',
            f'data_dir = "{data}"', 'log_level = "warning"', 'log_format = "json"',
            "[mqtt]", f'url = "{url}"', "[clock]", 'source = "trust"', extra]
    for i in range(sensors):
        body += ["[[sensors]]", 'driver = "simulated"', f'id = "s-{i:03d}"',
                 f'kinds = ["{kinds[i % len(kinds)]}"]', f"interval_s = {interval_s}",
                 f"seed = {i}"]
    path.write_text("\n".join(body) + "\n")


def rss_run(tmp: Path, seconds: float) -> dict[str, float]:
    mq = MosquittoServer(tmp / "mq").start()
    try:
        cfg = tmp / "gw-rss.toml"
        gateway_config(cfg, mq.url, tmp / "rss-data", sensors=50, interval_s=1.0)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run", "--config",
                              str(cfg)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(5)  # start-up (imports) is not part of the steady state
        cpu0 = process_stats(p.pid).cpu_s
        t0 = time.monotonic()
        samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(30.0, seconds))
            samples.append(process_stats(p.pid).rss_kb)
        st = process_stats(p.pid)
        rss, hwm, cpu1 = st.rss_kb, st.peak_rss_kb, st.cpu_s
        elapsed = time.monotonic() - t0
        p.terminate()
        p.wait(60)
        readings = 50 * elapsed
        return {"seconds": elapsed, "rss_mb": rss / 1024, "peak_rss_mb": hwm / 1024,
                "rss_first_mb": samples[0] / 1024 if samples else rss / 1024,
                "cpu_s_per_1000": (cpu1 - cpu0) / readings * 1000, "readings": readings}
    finally:
        mq.stop()


def fill_outbox(path: Path, n: int) -> None:
    from farmedge.gateway.outbox import NewRow, Outbox

    ob = Outbox(path, max_bytes=2**34).open()
    now = int(time.time() * 1000) - n * 10
    kinds = [("soil_moisture", "%", 23.4), ("soil_temperature", "degC", 12.3),
             ("soil_ec", "uS/cm", 412.0)]
    batch = []
    for i in range(n):
        kind, unit, base = kinds[i % 3]
        batch.append(NewRow(f"s-{(i // 3) % 50:03d}", kind, unit, base + (i % 17) * 0.1,
                            Quality.OK, None, now + i * 10, i, True))
        if len(batch) == 10_000:
            ob.add(batch, "bench-boot")
            ob.commit()
            batch = []
    ob.add(batch, "bench-boot")
    ob.close()


def replay(tmp: Path, backlog: int) -> dict[str, float]:
    mq = MosquittoServer(tmp / "mq2").start()
    ix = InfluxServer(tmp / "ix").start()
    db = "replay"
    ix.create_database(db)
    http_port = free_port()
    edge_env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    edge_env.update(FARMEDGE_MQTT_URL=mq.url, FARMEDGE_INFLUX_URL=ix.url,
                    FARMEDGE_INFLUX_DATABASE=db, FARMEDGE_DATA_DIR=str(tmp / "edge"),
                    FARMEDGE_HTTP_PORT=str(http_port), FARMEDGE_LOG_LEVEL="warning",
                    PYTHONPATH=str(ROOT))
    edge = subprocess.Popen([sys.executable, "-m", "farmedge", "edge", "run"], env=edge_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = None
    try:
        wait_edge_subscribed(http_port, 60, edge)
        data = tmp / "replay-data"
        data.mkdir()
        t_fill = time.monotonic()
        fill_outbox(data / "outbox.sqlite3", backlog)
        fill_s = time.monotonic() - t_fill
        cfg = tmp / "gw-replay.toml"
        gateway_config(cfg, mq.url, data, sensors=0, interval_s=1.0,
                       extra="[uplink]\nmax_rate = 1000000\nmax_inflight = 16\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.monotonic()
        gw = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run", "--config",
                               str(cfg)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        sent_s = None
        stored = 0
        while time.monotonic() - t0 < 3600:
            time.sleep(1.0)
            if sent_s is None:
                import sqlite3

                c = sqlite3.connect(f"file:{data / 'outbox.sqlite3'}?mode=ro", uri=True)
                try:
                    left = c.execute("SELECT COUNT(*) FROM reading").fetchone()[0]
                except sqlite3.OperationalError:
                    left = backlog
                c.close()
                if left == 0:
                    sent_s = time.monotonic() - t0
            try:
                series = influx_query(ix.url, 'SELECT count("moisture") FROM "soil"', db)
                m = int(series[0]["values"][0][1]) if series else 0  # type: ignore[index]
                series = influx_query(ix.url, 'SELECT count("temperature") FROM "soil"', db)
                t = int(series[0]["values"][0][1]) if series else 0  # type: ignore[index]
                series = influx_query(ix.url, 'SELECT count("ec") FROM "soil"', db)
                e = int(series[0]["values"][0][1]) if series else 0  # type: ignore[index]
                stored = m + t + e
            except Exception:
                continue
            if stored >= backlog:
                break
        total = time.monotonic() - t0
        return {"backlog": backlog, "fill_s": fill_s, "sent_s": sent_s or total,
                "stored_s": total, "stored": stored,
                "gateway_rate": backlog / (sent_s or total), "end_to_end_rate": stored / total}
    finally:
        if gw is not None:
            gw.terminate()
            gw.wait(60)
        edge.terminate()
        edge.wait(60)
        ix.stop()
        mq.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="wire,month,replay,rss")
    ap.add_argument("--rss-seconds", type=float, default=600.0)
    ap.add_argument("--backlog", type=int, default=500_000)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "wire" in only:
        w = wire()
        print(f"bytes per reading on the wire (MQTT 5 PUBLISH QoS 1 + PUBACK, "
              f"{len(TOPIC)}-byte topic):")
        print(f"  JSON, one reading per message        {w['json_1']:7.1f}")
        print(f"  JSON, one per message, pretty, 3.1.1 {w['json_1_pretty_v311']:7.1f}")
        print(f"  JSON, 60 readings per message        {w['json_60']:7.1f}")
        for comp in ("deflate-dict", "zstd-dict", "zstd", "none"):
            print(f"  compact, 60 per message, {comp:<12}{w[f'compact_60_{comp}']:7.1f}")
    if "month" in only:
        # Old defaults; the shipped defaults; a frugal setting.
        for status_s, keepalive in ((60.0, 60.0), (300.0, 240.0), (600.0, 600.0)):
            m = month(status_interval_s=status_s, keepalive_s=keepalive)
            print(f"a month of a 20-sensor farm, 1 reading/sensor/10 min (MB), "
                  f"status every {status_s:g} s, keepalive {keepalive:g} s:")
            print(f"  telemetry, JSON one per message      {m['json_one_per_message']:7.2f}")
            print(f"  telemetry, JSON one message a round  {m['json_per_round']:7.2f}")
            print(f"  telemetry, compact one message/round {m['compact_per_round']:7.2f}")
            print(f"  telemetry, compact 60 per message    {m['compact_60']:7.2f}")
            print(f"  status messages                      {m['status']:7.2f}")
            print(f"  keepalive pings                      {m['keepalive']:7.2f}")
            mqtt_total = m["compact_per_round"] + m["status"] + m["keepalive"]
            print(f"  total MQTT, compact one message/round {mqtt_total:6.2f}")
            print(f"  TCP/IP headers (about 4 segments of 52 B per exchange) "
                  f"{m['tcp_ip_headers']:5.2f}")
            print(f"  total at the IP level                {mqtt_total + m['tcp_ip_headers']:7.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as d:
        tmp = Path(d)
        if "replay" in only:
            r = replay(tmp, args.backlog)
            print(f"backlog replay of {r['backlog']:,} readings (filled in {r['fill_s']:.0f} s):")
            print(f"  outbox empty (all PUBACKed) after    {r['sent_s']:7.1f} s "
                  f"= {r['gateway_rate']:,.0f} readings/s")
            print(f"  all stored in InfluxDB after         {r['stored_s']:7.1f} s "
                  f"= {r['end_to_end_rate']:,.0f} readings/s ({r['stored']:,} stored)")
        if "rss" in only:
            s = rss_run(tmp, args.rss_seconds)
            print(f"gateway, 50 simulated sensors at 1 Hz for {s['seconds']:.0f} s:")
            print(f"  RSS {s['rss_mb']:.1f} MB (peak {s['peak_rss_mb']:.1f} MB, "
                  f"after 30 s {s['rss_first_mb']:.1f} MB)")
            print(f"  CPU {s['cpu_s_per_1000']:.3f} s per 1,000 readings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
