"""The status fields a planned stop, a last will and a clock hold add
(docs/protocol.md, "Status payload"): ``reason`` a bounded enumeration that
can grow (a value this version does not know is read as no reason),
``held_unsynced`` and ``held_for_s`` counts like the others."""

from __future__ import annotations

import json

import pytest

from farmedge.contract import (
    MAX_INT,
    MAX_REASON_CHARS,
    MessageRejected,
    StatusReason,
    encode_status,
    parse_status,
)


def status(**fields: object) -> bytes:
    return json.dumps({"v": 1, "gateway": "gw-1", "online": False, **fields}).encode()


def test_the_will_and_the_planned_stop_are_told_apart() -> None:
    will = encode_status(gateway="gw-1", online=False, reason="lost")
    assert will == b'{"v":1,"gateway":"gw-1","online":false,"reason":"lost"}'
    stop = encode_status(gateway="gw-1", online=False, reason="stopping", ts=5, clock="synced")
    assert parse_status(will).reason is StatusReason.LOST
    assert parse_status(stop).reason is StatusReason.STOPPING
    # An older gateway's will says nothing: no reason.
    assert parse_status(status()).reason is None


def test_a_reason_this_version_does_not_know_is_read_as_none() -> None:
    for newer in ("rebooting", "updating-firmware", "x" * MAX_REASON_CHARS, "", "Stopping"):
        st = parse_status(status(reason=newer))
        assert st.online is False and st.reason is None, newer


@pytest.mark.parametrize("bad", ["x" * (MAX_REASON_CHARS + 1), 1, True, ["lost"], {"a": 1}])
def test_a_reason_stays_a_short_string(bad: object) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_status(status(reason=bad))
    assert err.value.reason == "bad_status" and "reason" in err.value.detail


def test_a_null_reason_is_no_reason() -> None:
    assert parse_status(status(reason=None)).reason is None


def test_the_hold_fields_are_counts() -> None:
    st = parse_status(status(online=True, held_unsynced=120, held_for_s=305.5))
    assert (st.held_unsynced, st.held_for_s) == (120, 305.5)
    for bad in ({"held_unsynced": -1}, {"held_unsynced": MAX_INT}, {"held_unsynced": 1.0},
                {"held_unsynced": "3"}, {"held_for_s": -0.5}, {"held_for_s": "5"}):
        with pytest.raises(MessageRejected) as err:
            parse_status(status(online=True, **bad))
        assert err.value.reason == "bad_status", bad


def test_the_encoder_writes_the_new_fields_after_the_others() -> None:
    data = encode_status(gateway="gw-1", online=True, ts=1, outbox_full=True,
                         held_unsynced=3, held_for_s=12.5)
    assert list(json.loads(data))[-4:] == ["ts", "outbox_full", "held_unsynced", "held_for_s"]


@pytest.mark.parametrize("v", [True, 1.0, "1", 2])
def test_the_version_is_the_integer_one_and_nothing_equal_to_it(v: object) -> None:
    """``true`` and ``1.0`` equal 1 in Python, and were taken as version 1:
    in telemetry and in a status, they are refused as the contract's other
    known fields are."""
    from farmedge.contract import parse_telemetry

    doc = {"v": v, "gateway": "gw-1", "seq": 1, "sent": 1_780_000_000_000,
           "clock": "synced", "readings": [{"sensor": "s1", "kind": "soil_moisture",
                                            "ts": 1_780_000_000_000, "value": 12.0,
                                            "unit": "%"}]}
    with pytest.raises(MessageRejected, match=r"\bv: "):
        parse_telemetry(json.dumps(doc).encode())
    with pytest.raises(MessageRejected, match=r"\bv: "):
        parse_status(json.dumps({"v": v, "gateway": "gw-1", "online": True}).encode())
    doc["v"] = 1
    assert len(parse_telemetry(json.dumps(doc).encode()).readings) == 1
