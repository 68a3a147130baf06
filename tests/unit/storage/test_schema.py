"""The InfluxDB schema (farmedge/storage/schema.py): complete for the
contract, consistent with itself, and what docs/storage.md documents."""

from __future__ import annotations

import re
from pathlib import Path

from farmedge.contract.kinds import KINDS
from farmedge.storage import schema
from farmedge.storage.schema import (
    KIND_POINTS,
    MEASUREMENTS,
    READING_MEASUREMENTS,
    FieldType,
    Measurement,
    Tag,
    point,
    reading_fields,
)

ROOT = Path(__file__).resolve().parents[3]


def _names(ns: type) -> set[str]:
    return {v for k, v in vars(ns).items() if k.isupper() and isinstance(v, str)}


def test_every_contract_kind_has_a_measurement_and_a_field() -> None:
    assert set(KIND_POINTS) == set(KINDS)
    for name, kind in KINDS.items():
        p = point(kind)
        assert p is point(name)
        assert p.measurement in READING_MEASUREMENTS
        assert MEASUREMENTS[p.measurement].fields[p.field] is FieldType.FLOAT


def test_no_two_kinds_share_a_field() -> None:
    where = [(p.measurement, p.field) for p in KIND_POINTS.values()]
    assert len(where) == len(set(where))
    assert reading_fields() == where  # the contract's order, each once


def test_the_fields_the_edge_writes_today() -> None:
    """The schema stays as it is (docs/storage.md): the kind -> measurement
    mapping the contract used to hold, spelled out."""
    assert {k: (p.measurement, p.field) for k, p in KIND_POINTS.items()} == {
        "soil_moisture": ("soil", "moisture"), "soil_temperature": ("soil", "temperature"),
        "soil_ec": ("soil", "ec"), "soil_ph": ("soil", "ph"),
        "soil_nitrogen": ("soil", "nitrogen"), "soil_phosphorus": ("soil", "phosphorus"),
        "soil_potassium": ("soil", "potassium"),
        "air_temperature": ("weather", "temperature"),
        "air_humidity": ("weather", "humidity"), "rainfall": ("weather", "rainfall"),
        "animal_body_temperature": ("livestock", "body_temperature"),
        "animal_activity": ("livestock", "activity"),
        "animal_presence": ("livestock", "presence"), "water_level": ("water", "level"),
        "battery_voltage": ("device", "battery_voltage"),
    }


def test_every_measurement_is_described() -> None:
    assert set(MEASUREMENTS) == _names(Measurement)
    for name, m in MEASUREMENTS.items():
        assert m.name == name
        assert set(m.tags) <= _names(Tag)
        # A name is either a tag or a field of one measurement, never both
        # (InfluxQL could not tell them apart without ::tag / ::field).
        assert not set(m.tags) & set(m.fields), name


def test_the_field_namespaces_are_the_described_fields() -> None:
    for ns, m in ((schema.GatewayField, Measurement.GATEWAY),
                  (schema.DeadLetterField, Measurement.INGEST_ERRORS),
                  (schema.EdgeField, Measurement.EDGE), (schema.AlertField, Measurement.ALERTS)):
        assert _names(ns) == set(MEASUREMENTS[m].fields), m
    readings = {f for m in READING_MEASUREMENTS for f in MEASUREMENTS[m].fields}
    assert _names(schema.ReadingField) == readings


def test_docs_storage_names_every_measurement_and_field() -> None:
    text = (ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    quoted = set(re.findall(r"`([a-z_0-9<>]+)`", text))
    for name, m in MEASUREMENTS.items():
        if name == Measurement.ALERTS:
            continue  # docs/alerts.md
        assert name in quoted, name
        missing = [f for f in (*m.fields, *m.tags) if f not in quoted]
        assert not missing, (name, missing)


def test_docs_alerts_names_the_alerts_fields() -> None:
    text = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    section = text[text.index("## The `alerts` measurement"):]
    quoted = set(re.findall(r"`([a-z_]+)`", section))
    m = MEASUREMENTS[Measurement.ALERTS]
    assert not [n for n in (*m.tags, *m.fields) if n not in quoted]


def test_every_name_is_plain() -> None:
    """Names need no escaping anywhere (line protocol, InfluxQL identifiers,
    Flux) and read the same on every InfluxDB."""
    names = [*MEASUREMENTS, *_names(Tag)]
    for m in MEASUREMENTS.values():
        names += [*m.fields, *(f + s for f in m.fields for s in m.suffixed)]
    bad = [n for n in names if not re.fullmatch(r"[a-z][a-z0-9_]*", n)]
    assert not bad


def _schema_names() -> set[str]:
    names = {*MEASUREMENTS, *_names(Tag)}
    for m in MEASUREMENTS.values():
        names |= set(m.fields)
    return names


def _strings(node: object, keys: set[str]) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k in keys and isinstance(v, str)]
        for v in node.values():
            out += _strings(v, keys)
        return out
    if isinstance(node, list):
        return [s for v in node for s in _strings(v, keys)]
    return []


def test_every_name_the_dashboards_use_is_in_the_schema() -> None:
    from farmedge.provision.dashboards import dashboards

    known = _schema_names()
    seen: set[str] = set()
    for uid, doc in dashboards().items():
        for text in _strings(doc, {"query", "definition"}):
            aliases = set(re.findall(r'\bAS "([^"]+)"', text))
            quoted = set(re.findall(r'"([^"]+)"', text)) - aliases
            for group in re.findall(r"FROM /\^\(([a-z_|]+)\)\$/", text):
                quoted |= set(group.split("|"))
            unknown = quoted - known
            assert not unknown, (uid, unknown, text[:200])
            seen |= quoted
        for text in _strings(doc, {"alias"}):
            tags = set(re.findall(r"\$tag_(\w+)", text))
            assert tags <= _names(Tag), (uid, text)
        for text in _strings(doc, {"tagsColumn", "textColumn", "titleColumn"}):
            assert set(text.split(",")) <= known, (uid, text)
    # The check sees the dashboards' names (a parse that found none would pass).
    assert {Measurement.SOIL, Measurement.GATEWAY, Measurement.ALERTS, Tag.COUNTY,
            schema.GatewayField.ONLINE, schema.EdgeField.SPOOL_LINES} <= seen


def test_the_downsampling_set_up_names_what_the_schema_does() -> None:
    """v1-setup.iql (InfluxDB 1.x, applied by ``farmedge provision influx``
    or by hand) and the 2.x init script stay readable shell and InfluxQL
    files; this keeps their names those of the schema."""
    ds = schema.Downsample
    iql = (ROOT / "farmedge" / "provision" / "v1-setup.iql").read_text(encoding="utf-8")
    policies = re.findall(r'CREATE RETENTION POLICY "(\w+)"', iql)
    assert policies == [ds.RAW, ds.HOURLY]
    cqs = dict(re.findall(r'CREATE CONTINUOUS QUERY "(\w+)" .* BEGIN (.*) END;', iql))
    assert set(cqs) == {ds.CQ_HOURLY, ds.CQ_HOURLY_RAIN}
    assert f'."{ds.RAW}"./^({"|".join(schema.DOWNSAMPLED)})$/' in cqs[ds.CQ_HOURLY]
    rain = schema.point("rainfall")
    assert (f'SELECT sum("{rain.field}") AS "{ds.SUM_RAINFALL}" INTO '
            f'"${{INFLUX_DATABASE}}"."{ds.HOURLY}"."{rain.measurement}"') in cqs[ds.CQ_HOURLY_RAIN]
    sh = (ROOT / "deploy" / "influxdb" / "init" / "farmedge-init.sh").read_text(encoding="utf-8")
    assert f"r._measurement =~ /^({'|'.join(schema.DOWNSAMPLED)})$/" in sh
    assert (f'r._measurement == "{rain.measurement}" and r._field == "{rain.field}"') in sh
    assert f'_field: "{ds.SUM_RAINFALL}"' in sh
    assert f"--rp {ds.RAW} " in sh and f"--rp {ds.HOURLY} " in sh
