"""The one back-off (farmedge/backoff.py), with an injected random source
and clock: no servers, no sleeping."""

from __future__ import annotations

import random

import pytest

from farmedge.backoff import STABLE_AFTER_S, Backoff


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_waits_double_up_to_the_cap_each_drawn_between_half_and_all() -> None:
    b = Backoff(0.5, 4.0, random.Random(1))
    waits = [b.next() for _ in range(8)]
    for w, d in zip(waits, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True):
        assert d / 2 <= w <= d
    assert len({round(w, 6) for w in waits[3:]}) == 5  # jittered, not in lock step


def test_jitter_spans_the_whole_half_interval() -> None:
    class Edges(random.Random):
        def __init__(self) -> None:
            super().__init__()
            self.side = 0

        def uniform(self, a: float, b: float) -> float:
            self.side ^= 1
            return a if self.side else b

    b = Backoff(1.0, 60.0, Edges())
    assert [b.next() for _ in range(4)] == [0.5, 2.0, 2.0, 8.0]


def test_a_short_connection_does_not_start_the_back_off_over() -> None:
    clock = Clock()
    b = Backoff(1.0, 60.0, random.Random(2), clock=clock)
    for _ in range(3):
        b.next()
    b.up()
    clock.t += STABLE_AFTER_S - 1  # refused or dropped soon after the CONNACK
    assert b.down() == pytest.approx(STABLE_AFTER_S - 1)
    assert 4.0 <= b.next() <= 8.0


def test_a_connection_that_held_starts_it_over() -> None:
    clock = Clock()
    b = Backoff(1.0, 60.0, random.Random(3), clock=clock)
    for _ in range(5):
        b.next()
    b.up()
    clock.t += STABLE_AFTER_S
    assert b.next() <= 1.0  # next() ends the connection still marked up
    assert 1.0 <= b.next() <= 2.0


def test_down_without_up_and_a_custom_stable_period() -> None:
    clock = Clock()
    b = Backoff(1.0, 8.0, random.Random(4), stable_after_s=5, clock=clock)
    assert b.down() == 0.0
    b.next()
    b.next()
    b.up()
    clock.t += 5
    b.down()
    assert b.attempt == 0
    b.next()
    b.reset()
    assert b.attempt == 0


def test_a_max_below_the_min_caps_every_wait() -> None:
    b = Backoff(5.0, 2.0, random.Random(5))
    assert all(1.0 <= b.next() <= 2.0 for _ in range(5))
    with pytest.raises(ValueError, match="positive"):
        Backoff(0, 1)
