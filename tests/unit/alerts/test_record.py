"""The ``alerts`` line of an event: one line whatever the registry's free
text holds (contact names, URLs' schemes), through the one line-protocol
encoder (farmedge/storage/lineproto.py)."""

from __future__ import annotations

from farmedge.alerts.record import AlertEvent, line_protocol


def _event(**kw: object) -> AlertEvent:
    base: dict[str, object] = dict(ts_ms=1_780_000_000_000, event="failed", county="c1",
                                   farm="wang-12", rule="device/offline", family="offline",
                                   severity="warning", scope="gateway", scope_id="gw-1",
                                   group="g", text={"zh": "离线", "en": "offline"})
    base.update(kw)
    return AlertEvent(**base)  # type: ignore[arg-type]


def test_a_contact_name_with_a_line_break_stays_one_line() -> None:
    """A registry contact named across two lines (or a crafted one) would
    have cut the line in two: the alert record lost, the rest read as
    another point."""
    lp = line_protocol(_event(contact="Wang\nreadings,county=c1 soil=1 0",
                              channel="json\r", error="timed\nout"))
    assert "\n" not in lp and "\r" not in lp
    assert r",contact=Wang\ readings\,county\=c1\ soil\=1\ 0 " in lp
    assert lp.endswith(" 1780000000000")


def test_a_value_that_is_not_a_number_is_left_out() -> None:
    assert "value=" not in line_protocol(_event(value=float("nan")))
    assert ",value=12.5" in line_protocol(_event(value=12.5))


def test_empty_tags_are_written_as_a_dash() -> None:
    assert ",family=-," in line_protocol(_event(family=""))
