"""Which bytes each connection fetches: equal segments at start, then idle connections split the
segment that would finish last, in proportion to measured speeds (a slow or throttled segment is
cut so that both halves end together), and take over a segment that has gone silent.

Thread-safe; the engine calls it from its workers. `cursor` counts bytes already written to disk.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

PIECES = 8  # ranges per connection on a big file (each is one request on a kept-alive connection)
MIN_PIECE = 1 << 20  # bytes; the engine asks for bigger ones on links with long round trips


@dataclass
class Segment:
    start: int
    end: int | None  # exclusive; None = until the server stops (size unknown)
    cursor: int = -1
    owner: int | None = None
    speed: float = 0.0  # bytes/s, smoothed
    failures: int = 0  # failed tries in a row on this range, whichever connection made them
    last: float = field(default_factory=time.monotonic, repr=False)  # when a byte was last committed
    _t: float = field(default=0.0, repr=False)
    _c: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.cursor < 0:
            self.cursor = self.start

    @property
    def remaining(self) -> int:
        return 0 if self.end is None else max(0, self.end - self.cursor)


class Scheduler:
    def __init__(self, pending: list[tuple[int, int | None]], min_split: int, stall_steal: float = 1.5,
                 read_size: int = 64 << 10):
        self.segments = [Segment(s, e) for s, e in pending if e is None or e > s]
        self.min_split = max(1, min_split)
        self.stall_steal = stall_steal  # seconds without a byte before an idle connection takes over
        self.read_size = read_size  # smallest read of a stream: bytes arrive (are committed) in such steps
        self.lock = threading.Lock()
        self.worker_speed: dict[int, float] = {}
        self.restarted = False

    @staticmethod
    def initial(size: int | None, connections: int, min_split: int,
                piece: int = MIN_PIECE) -> list[tuple[int, int | None]]:
        """Equal ranges in file order, one per connection or (on a big file) up to PIECES per connection
        of at least `piece` bytes: connections then move through the file together, so the finished
        prefix grows during the download and the in-order SHA-256 keeps up instead of running at the
        end. One open range when the size is unknown."""
        if not size:
            return [(0, size)]
        n = max(1, min(connections, size // max(1, min_split)), min(connections * PIECES, size // max(1, piece)))
        step = -(-size // n)
        return [(i, min(size, i + step)) for i in range(0, size, step)]

    def assign(self, worker: int) -> Segment | None:
        """An unowned segment, else a split of the one expected to finish last; None when nothing is left."""
        with self.lock:
            for seg in self.segments:
                if seg.owner is None and (seg.end is None or seg.cursor < seg.end):
                    seg.owner = worker
                    seg._t, seg._c = time.monotonic(), seg.cursor
                    seg.last = seg._t
                    return seg
            now = time.monotonic()
            best, best_eta = None, 0.0
            for seg in self.segments:
                if seg.owner is None or seg.end is None or seg.remaining <= 0:
                    continue
                rate = seg.speed or (seg.cursor - seg._c) / max(seg.last - seg._t, 1e-3)  # while it streamed
                quiet = now - seg.last
                if quiet > self.stall_steal and (rate <= 0 or quiet > 4 * self.read_size / rate):
                    # no byte for a while (on a slow stream, whose reads take long: well past one of
                    # them): take the whole rest; the stalled reader stops at its new end
                    new = Segment(seg.cursor, seg.end, owner=worker)
                    new._t, new._c = now, seg.cursor
                    seg.end = seg.cursor
                    self.segments.append(new)
                    return new
                if seg.remaining < 2 * self.min_split:
                    continue
                eta = seg.remaining / max(self._speed(seg, now), 1.0)
                if eta > best_eta:
                    best, best_eta = seg, eta
            if best is None:
                return None
            mine = self.worker_speed.get(worker, 0.0)
            theirs = self._speed(best, now)
            share = 0.5 if mine <= 0 or theirs <= 0 else theirs / (theirs + mine)
            keep = int(best.remaining * share)
            keep = min(max(keep, self.min_split), best.remaining - self.min_split)
            cut = best.cursor + keep
            new = Segment(cut, best.end, owner=worker)
            new._t, new._c = now, cut
            best.end = cut
            self.segments.append(new)
            return new

    def take_at(self, position: int, worker: int) -> Segment | None:
        """The unstarted, unowned segment beginning exactly at position (a stream can run on into it)."""
        with self.lock:
            for seg in self.segments:
                if seg.owner is None and seg.start == position == seg.cursor and seg.end != seg.start:
                    seg.owner = worker
                    seg._t, seg._c = time.monotonic(), seg.cursor
                    seg.last = seg._t
                    return seg
            return None

    @staticmethod
    def _speed(seg: Segment, now: float) -> float:
        """Smoothed speed, pulled down when the segment has gone quiet since the last sample."""
        quiet = now - seg._t
        if quiet > 1.0:
            return min(seg.speed, (seg.cursor - seg._c) / quiet)
        return seg.speed

    def allowed(self, seg: Segment, n: int) -> int:
        """How many of n freshly read bytes still belong to seg (its end may have been cut)."""
        with self.lock:
            return n if seg.end is None else max(0, min(n, seg.end - seg.cursor))

    def commit(self, seg: Segment, worker: int, n: int) -> None:
        """n bytes at seg.cursor are on disk; update the speed estimate."""
        with self.lock:
            seg.cursor += n
            now = time.monotonic()
            seg.last = now
            dt = now - seg._t
            if dt >= 0.5:
                rate = (seg.cursor - seg._c) / dt
                seg.speed = rate if seg.speed == 0 else 0.5 * seg.speed + 0.5 * rate
                self.worker_speed[worker] = seg.speed
                seg._t, seg._c = now, seg.cursor

    def hand_over(self, seg: Segment, failed: bool) -> Segment | None:
        """A stalled connection lets go of the rest of its range: it becomes a new, unowned segment
        that the first idle connection takes (the stalled one is closed and asks for work again).
        `failed`: it stalled before its first byte (counts as a failed try of that range)."""
        with self.lock:
            seg.owner = None
            if seg.end is None or seg.cursor >= seg.end:
                return None
            rest = Segment(seg.cursor, seg.end, failures=seg.failures + 1 if failed else 0)
            seg.end = seg.cursor
            self.segments.append(rest)
            return rest

    def release(self, seg: Segment) -> None:
        with self.lock:
            seg.owner = None
            seg.speed = 0.0

    def reset(self, seg: Segment) -> None:
        """Start a segment over (a server without ranges cannot continue a dropped stream)."""
        with self.lock:
            seg.cursor = seg.start
            self.restarted = True

    def prefix(self) -> int:
        """Bytes from 0 that are all on disk (what can be hashed already): bytes outside the
        unfinished ranges are done, so it is the lowest cursor of an unfinished segment."""
        with self.lock:
            open_cursors = [s.cursor for s in self.segments if s.end is None or s.cursor < s.end]
            return min(open_cursors) if open_cursors else 1 << 62

    def done_bytes(self, size: int | None) -> int:
        with self.lock:
            if size is None:
                return sum(s.cursor - s.start for s in self.segments)
            return size - sum(s.remaining for s in self.segments)

    def pending(self) -> list[list[int | None]]:
        with self.lock:
            return [[s.cursor, s.end] for s in self.segments if s.end is None or s.cursor < s.end]

    def finished(self) -> bool:
        with self.lock:
            return all(s.end is not None and s.cursor >= s.end for s in self.segments)
