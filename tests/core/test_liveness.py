"""PROTOCOL.md §6.3: the decaying-average liveness tracker, checked numerically."""

import math
import sys

import pytest

from pushjobs.core.liveness import Liveness

I = 10.0  # production heartbeat interval (s)


def steady(until: float, start: float = 0.0) -> Liveness:
    """A node beating once per interval (at start+0.5, start+10.5, ...) up to `until`."""
    lv = Liveness(start, I, 4, 0.6)
    t = start + I + 0.5
    while t <= until:
        assert lv.heartbeat(t)
        t += I
    return lv


def test_first_heartbeat_creates_the_record():
    lv = Liveness(100.0, I, 4, 0.6)
    assert lv.avg == pytest.approx(1.2)  # 2 x down_threshold
    assert lv.interval_start == 100.0
    assert lv.heartbeats == 1
    assert lv.check(100.0)


def test_steady_node_converges_to_one():
    lv = steady(2000.0)
    assert lv.check(2000.9)
    assert lv.avg == pytest.approx(1.0, abs=1e-6)


def test_steady_node_one_silent_interval_075_two_05625_dead():
    lv = steady(1000.0)  # last beat at 990.5, in the interval [990, 1000)
    lv.check(1009.9)  # interval [990,1000) closed with its one beat
    assert lv.avg == pytest.approx(1.0, abs=1e-6)
    assert lv.check(1019.9)  # [1000,1010) silent
    assert lv.avg == pytest.approx(0.75, abs=1e-6)
    assert not lv.check(1020.0)  # [1010,1020) silent too
    assert lv.avg == pytest.approx(0.5625, abs=1e-6)


def test_node_dying_right_after_connecting_needs_four_silent_intervals():
    lv = Liveness(0.0, I, 4, 0.6)
    seen = []
    for k in range(1, 5):
        alive = lv.check(k * I)
        seen.append(round(lv.avg, 4))
        assert alive == (k < 4)
    assert seen == [1.15, 0.8625, 0.6469, 0.4852]


def test_dead_node_is_killed_by_its_own_next_heartbeat():
    lv = steady(1000.0)
    assert not lv.heartbeat(1035.0)


def test_declared_dead_20_to_70_s_after_last_heartbeat_with_a_40_s_scanner():
    """Whatever the scanner's phase, a steady node that stops is seen dead
    within roughly 20-70 s of its last beat (§6.3)."""
    delays = []
    for phase in range(0, 40, 3):
        for last_offset in (0.1, 5.0, 9.9):
            lv = Liveness(0.0, I, 4, 0.6)
            t = last_offset
            while t < 200:
                lv.heartbeat(t)
                t += I
            last = t - I
            scan = phase
            while scan <= last:
                scan += 40
            while lv.check(scan):
                scan += 40
            delays.append(scan - last)
    assert min(delays) >= 20
    assert max(delays) <= 70 + 1e-9


def test_parameters_come_from_settings():
    lv = Liveness(0.0, 0.1, decay_window=2, down_threshold=0.5)  # w_now = 0.5
    assert lv.w_now == 0.5 and lv.w_hist == 0.5
    lv.check(0.1)  # (1.0 * 0.5 + 1 * 0.5)
    assert lv.avg == pytest.approx(1.0)
    assert lv.check(0.25)  # [0.1, 0.2) silent: 0.5, not below 0.5
    assert lv.avg == pytest.approx(0.5)
    assert not lv.check(0.35)  # 0.25


def test_threshold_boundary_is_strict_less_than():
    lv = Liveness(0.0, 1.0, decay_window=2, down_threshold=0.5)
    lv.avg, lv.heartbeats = 1.0, 0
    assert lv.check(1.0)  # avg = 0.5, not < 0.5
    assert lv.avg == pytest.approx(0.5)
    assert not lv.check(2.0)


def test_clock_going_backwards_changes_nothing():
    lv = Liveness(100.0, I)
    assert lv.check(50.0)
    assert lv.avg == pytest.approx(1.2) and lv.interval_start == 100.0


@pytest.mark.parametrize("kw", [dict(interval=0), dict(interval=-1), dict(interval=1, decay_window=0.5)])
def test_bad_parameters_raise(kw):
    with pytest.raises(ValueError):
        Liveness(0.0, **kw)


def test_cheap_slots_and_no_growth():
    lv = Liveness(0.0, 1.0)
    assert not hasattr(lv, "__dict__")
    for i in range(1000):  # warm up
        lv.heartbeat(i * 1.0)
    before = sys.getallocatedblocks()
    for i in range(1000, 21000):
        lv.heartbeat(i * 1.0)
    assert sys.getallocatedblocks() - before < 50
    assert math.isclose(lv.avg, 1.0, rel_tol=1e-6)
