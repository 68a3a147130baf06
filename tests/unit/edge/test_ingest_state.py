"""The validator's memory across restarts (farmedge/edge/state.py), through
the real conversion (``Validator.validate``) and a real SQLite file: a new
Validator on the same file is an edge restarted. The end-to-end cases, with
the edge as a process and the real servers, are in
tests/chaos/test_ingestion.py."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from farmedge.contract import encode_status
from farmedge.edge.settings import IngestSection
from farmedge.edge.state import IngestState
from farmedge.edge.validate import Validator
from farmedge.registry import Registry
from farmedge.transport.mqtt import Inbound
from tests.support import make_payload

NOW = int(time.time() * 1000)
TOPIC = "farm/v1/c1/f1/gw-1/telemetry"


def _msg(payload: bytes, *, topic: str = TOPIC, received: int = NOW, gen: int = 1,
         dup: bool = False, retain: bool = False) -> Inbound:
    return Inbound(topic, payload, 1, 1, retain, None, received, time.monotonic(), gen, dup)


def _edge(path: Path, registry: Registry | None = None, **kw: int) -> Validator:
    return Validator(IngestSection(**kw), registry=registry, state=IngestState(path))


def _lines(ing: Validator, msg: Inbound) -> list[str]:
    """Every line the message became: readings, other points, dead letters."""
    v = ing.validate(msg)
    ing.state.flush()
    return [*v.lines, *v.points, *(ing.dead_letter_line(r) for r in v.rejected)]


def _unsynced(seq: int, sent: int) -> bytes:
    return make_payload("gw-1", seq, [{"sensor": "s1", "kind": "soil_moisture",
                                       "ts": sent - 1000, "value": 20.0, "unit": "%"}],
                        sent=sent, clock="unsynced")


def _ts(lines: list[str]) -> list[int]:
    return [int(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("soil,")]


def test_an_unsynced_message_lands_on_the_same_time_after_a_clock_reset_and_a_restart(
        tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite3"
    ing = _edge(path)
    first = [_ts(_lines(ing, _msg(_unsynced(s, 10_000 + 1000 * s),
                                  received=NOW + 1000 * s)))[0] for s in range(5)]
    assert [b - a for a, b in itertools.pairwise(first)] == [1000] * 4
    # The gateway rebooted: its clock starts over at 1970 + 2 s.
    after_reboot = _ts(_lines(ing, _msg(_unsynced(5, 2000), received=NOW + 60_000)))[0]
    assert after_reboot == NOW + 60_000 - 1000
    ing.state.close()
    # Restarted, the edge gets message 2 again, an hour later: same point.
    ing = _edge(path)
    assert _ts(_lines(ing, _msg(_unsynced(2, 12_000), received=NOW + 3_600_000,
                                dup=True))) == [first[2]]
    assert _ts(_lines(ing, _msg(_unsynced(5, 2000), received=NOW + 3_600_000))) \
        == [after_reboot]


def test_an_estimated_time_before_2020_is_a_dead_letter(tmp_path: Path) -> None:
    ing = _edge(tmp_path / "s.sqlite3")
    payload = make_payload("gw-1", 1, [{"sensor": "s1", "kind": "soil_moisture", "ts": 0,
                                        "value": 20.0, "unit": "%"}],
                           sent=9_000_000_000_000, clock="unsynced")
    [line] = _lines(ing, _msg(payload))
    assert line.startswith("ingest_errors,edge=edge-1,reason=ts_implausible,slot=0 ")


def test_the_budget_holds_across_a_restart_and_listed_sensors_do_not_count(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    reg = Registry.model_validate({"farms": [{"county": "c1", "farm": "f1", "gateways": {
        "gw-1": {"sensors": {"fixed-1": {}, "fixed-2": {"animal": "cow-1"}}},
        "gw-2": {"only_listed_sensors": True, "sensors": {"a": {}}}}}]})

    def readings(gw: str, *sensors: str) -> Inbound:
        return _msg(make_payload(gw, 1, [{"sensor": s, "kind": "soil_moisture", "ts": NOW,
                                          "value": 20.0, "unit": "%"} for s in sensors]),
                    topic=f"farm/v1/c1/f1/{gw}/telemetry")

    ing = _edge(path, reg, max_ids_per_gateway=2)
    lines = _lines(ing, readings("gw-1", "fixed-1", "fixed-2", "n1", "n2", "n3"))
    assert [x.split(" ")[0].rsplit("=", 1)[1] for x in lines if x.startswith("soil,")] \
        == ["fixed-1", "cow-1", "n1", "n2"]
    [dead] = [x for x in lines if x.startswith("ingest_errors")]
    assert "reason=cardinality_budget" in dead and 'gateway="gw-1"' in dead
    [unknown] = _lines(ing, readings("gw-2", "b"))
    assert "reason=unknown_sensor" in unknown
    ing.state.close()
    ing = _edge(path, reg, max_ids_per_gateway=2)
    lines = _lines(ing, readings("gw-1", "n2", "n4"))
    assert len([x for x in lines if x.startswith("soil,")]) == 1
    assert "reason=cardinality_budget" in lines[-1]


def test_a_status_delivered_again_lands_on_the_same_point(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    topic = "farm/v1/c1/f1/gw-1/status"
    will = encode_status(gateway="gw-1", online=False)
    alive = encode_status(gateway="gw-1", online=True, uptime_s=5.0)
    ing = _edge(path)
    [first] = _lines(ing, _msg(will, topic=topic, received=NOW, retain=True))
    ing.state.close()
    ing = _edge(path)
    assert _lines(ing, _msg(will, topic=topic, received=NOW + 5000, retain=True)) == [first]
    # online, then offline again: a new point, not the first one's time
    [on] = _lines(ing, _msg(alive, topic=topic, received=NOW + 10_000))
    [off] = _lines(ing, _msg(will, topic=topic, received=NOW + 20_000))
    assert on.endswith(f" {NOW + 10_000}") and off.endswith(f" {NOW + 20_000}")


def test_a_redelivered_bad_message_is_one_dead_letter_a_resent_one_is_two(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    ing = _edge(path)
    [first] = _lines(ing, _msg(b"{not json"))
    ing.state.close()
    ing = _edge(path)
    assert _lines(ing, _msg(b"{not json", dup=True)) == [first], "redelivery: same point"
    [again] = _lines(ing, _msg(b"{not json"))
    assert again != first, "sent again by the gateway: a dead letter of its own"


def test_closing_a_gateway_s_sensor_list_forgets_the_ids_it_had_before(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    msg = _msg(make_payload("gw-1", 1, [{"sensor": s, "kind": "soil_moisture", "ts": NOW,
                                         "value": 20.0, "unit": "%"} for s in ("a", "b")]))
    entry: dict[str, object] = {"sensors": {"a": {}}}
    reg = Registry.model_validate({"farms": [{"county": "c1", "farm": "f1",
                                              "gateways": {"gw-1": entry}}]})
    ing = _edge(path, reg)
    assert len(_ts(_lines(ing, msg))) == 2
    ing.state.close()
    entry["only_listed_sensors"] = True
    reg = Registry.model_validate({"farms": [{"county": "c1", "farm": "f1",
                                              "gateways": {"gw-1": entry}}]})
    ing = _edge(path, reg)
    lines = _lines(ing, msg)
    assert len(_ts(lines)) == 1 and "reason=unknown_sensor" in lines[-1]


def test_a_last_will_after_a_synced_status_is_its_own_later_point(tmp_path: Path) -> None:
    """A synced status is stored at the gateway's ``ts``, a last will (no
    ``ts``) at the edge's receive time: arriving in the same millisecond, or
    with the gateway's clock a little ahead, the will must neither overwrite
    the status nor be stamped before it."""
    topic = "farm/v1/c1/f1/gw-1/status"
    will = encode_status(gateway="gw-1", online=False)
    ing = _edge(tmp_path / "s.sqlite3")
    for ahead in (0, 40):
        alive = encode_status(gateway="gw-1", online=True, clock="synced",
                              ts=NOW + ahead + 100_000 * (ahead > 0))
        [on] = _lines(ing, _msg(alive, topic=topic, received=NOW + 100_000 * (ahead > 0)))
        [off] = _lines(ing, _msg(will, topic=topic, received=NOW + 100_000 * (ahead > 0)))
        t_on, t_off = int(on.rsplit(" ", 1)[1]), int(off.rsplit(" ", 1)[1])
        assert t_off > t_on, (ahead, on, off)
