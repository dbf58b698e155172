"""The range scheduler without a network: layout, takeover of a silent range, hand-over, failures."""

from __future__ import annotations

import time

from lora_trainer.download.segments import MIN_PIECE, PIECES, Scheduler

MB = 1 << 20


def test_layout_one_range_per_connection_or_pieces_on_big_files():
    assert Scheduler.initial(10 * MB, 16, MB) == [(i * MB, (i + 1) * MB) for i in range(10)]
    ranges = Scheduler.initial(200 * MB, 16, MB)
    assert len(ranges) == 16 * PIECES and ranges[0][0] == 0 and ranges[-1][1] == 200 * MB
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # in order, no gaps
    assert len(Scheduler.initial(200 * MB, 16, MB, piece=50 * MB)) == 16  # long round trips: fewer, longer
    assert Scheduler.initial(None, 16, MB) == [(0, None)] and MIN_PIECE >= MB


def test_idle_connection_takes_over_a_silent_range():
    s = Scheduler([(0, 8 * MB), (8 * MB, 16 * MB)], min_split=MB, stall_steal=0.5)
    a, b = s.assign(0), s.assign(1)
    s.commit(a, 0, 8 * MB)  # connection 0 is done
    s.commit(b, 1, 300_000)  # connection 1 got 300 kB, then nothing
    b.last -= 10  # ... for ten seconds
    taken = s.assign(0)
    assert (taken.start, taken.end) == (8 * MB + 300_000, 16 * MB) and b.end == b.cursor  # all of the rest


def test_a_slow_but_alive_range_is_split_not_taken():
    s = Scheduler([(0, 8 * MB), (8 * MB, 16 * MB)], min_split=MB, stall_steal=0.5)
    a, b = s.assign(0), s.assign(1)
    s.commit(a, 0, 8 * MB)
    s.commit(b, 1, 300_000)
    b.speed, b.last = 100_000.0, time.monotonic()  # slow, but a byte just arrived
    taken = s.assign(0)
    assert b.end == taken.start > b.cursor + MB - 1  # the slow one keeps a part


def test_hand_over_makes_an_unowned_rest_and_counts_silent_starts():
    s = Scheduler([(0, 4 * MB)], min_split=MB)
    seg = s.assign(0)
    s.commit(seg, 0, MB)
    rest = s.hand_over(seg, failed=False)
    assert (rest.start, rest.end, rest.owner, rest.failures) == (MB, 4 * MB, None, 0) and seg.end == MB
    again = s.assign(1)
    assert again is rest
    rest2 = s.hand_over(again, failed=True)  # stalled before its first byte
    assert rest2.failures == 1 and s.pending() == [[MB, 4 * MB]]
