"""The line-protocol encoder against the real InfluxDB 1.6.7: awkward names
and values are written and read back as tests/unit/storage/test_lineproto.py
expects (that test's parser follows what this one sees)."""

from __future__ import annotations

import urllib.request

import pytest

from farmedge.storage.lineproto import field_str, float_field, int_field, line
from farmedge_dev.devservers import InfluxServer
from tests.unit.storage.test_lineproto import NASTY, stored_field_key, stored_tag

pytestmark = pytest.mark.servers


def _write(server: InfluxServer, db: str, lines: list[str]) -> None:
    req = urllib.request.Request(f"{server.url}/write?db={db}&precision=ms",
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204


def test_awkward_tags_and_strings_are_stored_as_the_encoder_says(
        influxdb: InfluxServer, influx_db: str) -> None:
    values = [*NASTY, '"', "ends in quote\"", "tab\tchar", "nul\x00"]
    lines = [line("m", {"t": v, "i": str(i)},
                  {"s": field_str(v), "n": int_field(i), "x": float_field(i / 3)}, 1000 + i)
             for i, v in enumerate(values)]
    _write(influxdb, influx_db, lines)
    rows = influxdb.query('SELECT "t", "s", "n", "x" FROM "m"', influx_db)[0]["values"]
    assert [r[1:] for r in rows] == [
        [stored_tag(v), v.replace("\n", "\\n").replace("\r", "\\r"), i, i / 3]
        for i, v in enumerate(values)]


def test_awkward_names_are_stored_as_the_encoder_says(
        influxdb: InfluxServer, influx_db: str) -> None:
    keys = [v for v in NASTY if v not in ("x\ny", "x\r\ny")]
    _write(influxdb, influx_db, [line(f"m{i}", {v: "tag"}, {v: "1i"}, 1000)
                                 for i, v in enumerate(keys)])
    for i, v in enumerate(keys):
        [s] = influxdb.query(f'SHOW TAG KEYS FROM "m{i}"', influx_db)
        assert s["values"] == [[stored_tag(v)]]
        [s] = influxdb.query(f'SHOW FIELD KEYS FROM "m{i}"', influx_db)
        assert s["values"] == [[stored_field_key(v), "integer"]]
    # Measurements: farmedge's are plain names (tests/unit/storage/test_schema.py);
    # a backslash before a special character is not written the same way
    # by every InfluxDB, so only the special characters themselves here.
    names = ["a b", "a,b", "a=b", "a\\b", '"q"', "中文 名", "a\\"]
    _write(influxdb, influx_db, [line(v, {"t": "x"}, {"f": "1i"}, 1000) for v in names])
    stored = {r[0] for r in influxdb.query("SHOW MEASUREMENTS", influx_db)[0]["values"]}
    assert stored == {f"m{i}" for i in range(len(keys))} | {stored_tag(v) for v in names}
