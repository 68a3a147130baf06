"""The gateway's clocks without touching the system's: the sync check is a
fake probe passed to the constructor."""

from __future__ import annotations

import time

from farmedge.gateway import FakeClock, SystemClock
from farmedge.gateway.clock import kernel_clock_synced


class Probe:
    def __init__(self, *answers: bool | None) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> bool | None:
        self.calls += 1
        return self.answers.pop(0) if self.answers else self.answers_left()

    def answers_left(self) -> bool | None:
        return True


def test_an_unsynced_clock_is_asked_again_only_after_recheck_s() -> None:
    probe = Probe(False, False, True)
    c = SystemClock("kernel", recheck_s=3600, probe=probe)
    assert [c.synced() for _ in range(5)] == [False] * 5
    assert probe.calls == 1  # asked once, the answer kept for recheck_s


def test_once_set_the_clock_stays_set_for_the_boot() -> None:
    probe = Probe(None, False, True, False)
    c = SystemClock("timedatectl", recheck_s=0, probe=probe)
    assert [c.synced() for _ in range(5)] == [False, False, True, True, True]
    assert probe.calls == 3  # not asked again once set


def test_trust_never_asks() -> None:
    probe = Probe(False)
    assert SystemClock("trust", probe=probe).synced() and probe.calls == 0


def test_the_system_clocks() -> None:
    c = SystemClock("kernel")
    assert abs(c.wall_ms() - time.time() * 1000) < 5000
    m1 = c.mono_ms()
    assert c.mono_ms() >= m1 > 0
    assert c.boot_id() == c.boot_id() and len(c.boot_id()) >= 32
    assert kernel_clock_synced() in (True, False, None)


def test_fake_clock_advances_both_clocks() -> None:
    c = FakeClock(wall=1000, mono=5, boot="b", is_synced=False)
    c.advance(250)
    assert (c.wall_ms(), c.mono_ms(), c.boot_id(), c.synced()) == (1250, 255, "b", False)
