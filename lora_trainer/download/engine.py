"""Moving bytes: probe the remote file, then N ranged connections (or one stream) into `<name>.part`.

The probe and every connection try their requests through the one retry loop (`retry.retrying`:
drops, stalls, 5xx, 429 with Retry-After, expired signed URLs re-resolved from the original link), and
every answer is checked against the file identity, so a file that changes on the server aborts the
transfer instead of splicing two versions together.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lora_trainer.download.errors import (
    CancelledError,
    DownloadError,
    LinkExpiredError,
    MalformedResponseError,
    NetworkError,
    RemoteChangedError,
    SpaceError,
)
from lora_trainer.download.fileio import open_rw, preallocate, sync_data, write_at
from lora_trainer.download.hashing import StreamHasher
from lora_trainer.download.http import Client, Opened, Slot, raise_for_status
from lora_trainer.download.options import DownloadOptions
from lora_trainer.download.ranges import check_partial
from lora_trainer.download.retry import GaveUp, MalformedBudget, Tries, retrying
from lora_trainer.download.segments import MIN_PIECE, Scheduler, Segment
from lora_trainer.download.state import PartState, Remote, state_path_for

BUF = 1 << 20  # largest read: one readinto, one pwrite, one hash update per MiB on a fast stream
MIN_CHUNK = 16 << 10  # first and smallest read: a slow stream still commits several times a second, and
# a connection with nothing committed for stall/2 seconds has really received (almost) nothing
FAST_READ, SLOW_READ = 0.05, 0.2  # seconds per read: below, double the read size; above, halve it
FLUSH_EVERY = 32 << 20  # bytes written between background flushes: the disk writes while the network
# reads, so the fdatasync before the rename finds little left (measured: 16/32/64 MiB alike, none slower)
SAVE_EVERY = 1.0  # seconds between resume records on a slow download
HASH_BEHIND = 16  # buffers (MiB) an in-order stream may have waiting for the hasher before it waits for it
HASH_WAIT = 0.2  # seconds it waits at most (then it goes on and the hasher reads those bytes back later)
RAMP_WINDOW = 0.1  # seconds the first stream runs alone
FAST_SINGLE = 48 << 20  # bytes/s: one stream this fast gains little from more connections
SNIFF = 64 << 10
PIECE_TRIPS = 50  # a range lasts at least this many round trips (the gap between two costs ≤ 2 %)


def remote_from(opened: Opened) -> Remote:
    """Identity and capabilities from the answer to `Range: bytes=0-` (a 206 must be a sane one)."""
    resp = opened.resp
    size = None
    ranges = False
    if resp.status == 206:
        _first, _last, size = check_partial(resp, 0, None)
        ranges = True
    if size is None and not resp.chunked:
        length = resp.getheader("Content-Length")
        size = int(length) if length and length.isdigit() else None
    return Remote(url=opened.url, size=size, etag=resp.getheader("ETag"),
                  last_modified=resp.getheader("Last-Modified"), ranges=ranges,
                  content_type=resp.getheader("Content-Type") or "",
                  disposition=resp.getheader("Content-Disposition"), linked_sha256=opened.linked_sha256)


def probe(client: Client, url: str, opts: DownloadOptions, slot: Slot) -> tuple[Remote, Opened, bytes]:
    """Open the link (following redirects) asking for all bytes from 0, and read the first bytes (to
    sniff for an error page); tried through the one retry loop."""

    def attempt(_tries: Tries) -> tuple[Remote, Opened, bytes]:
        t = time.monotonic()
        opened = client.open(url, {"Range": "bytes=0-"}, slot)
        opened.wait = time.monotonic() - t
        raise_for_status(opened, opts, slot, url)
        opened.open_ended = opened.checked = True  # this answer defines the identity
        remote = remote_from(opened)
        if getattr(opened.conn, "sock", None) is not None:  # silence this long in the body is a stall
            opened.conn.sock.settimeout(min(opts.stall_timeout, opts.read_timeout))
        t = time.monotonic()
        head = opened.resp.read(min(SNIFF, remote.size)) if remote.size else opened.resp.read1(SNIFF)
        opened.head_speed = len(head) / max(time.monotonic() - t, 1e-6)
        return remote, opened, head

    try:
        return retrying(attempt, opts, MalformedBudget(), slot.close, time.sleep)
    except NetworkError as exc:
        if not isinstance(exc, GaveUp):
            raise
        if isinstance(exc.last, DownloadError):
            raise exc.last from exc
        raise NetworkError(f"cannot reach {url}: {_describe(exc.last, None)}") from exc.last


class Transfer:
    """One file's bytes: fills `part` at the pending ranges, keeps `<part>.json` current for resume."""

    def __init__(self, client: Client, source_url: str, remote: Remote, part: Path, opts: DownloadOptions,
                 *, pending: list[list[int | None]] | None = None, first: Opened | None = None,
                 first_slot: Slot | None = None, first_at: int = 0, stop=None,
                 on_progress: Callable[[int, int | None, float], None] | None = None):
        self.client, self.source_url, self.remote, self.part, self.opts = client, source_url, remote, part, opts
        self.state_path = state_path_for(part)
        connections = opts.connections if remote.ranges and remote.size else 1
        if pending is None:
            # a range should last PIECE_TRIPS round trips, so the one between two ranges costs little
            piece = max(MIN_PIECE, int(PIECE_TRIPS * first.wait * first.head_speed)) if first is not None else MIN_PIECE
            pending = [list(p) for p in Scheduler.initial(remote.size, connections, opts.min_split, piece)]
        # a connection that receives nothing for `stall` seconds hands the rest of its range over (its
        # socket times out); an idle connection already takes it after half of that (see Scheduler.assign)
        self.stall = min(opts.stall_timeout, opts.read_timeout)
        self.sched = Scheduler([(p[0], p[1]) for p in pending], opts.min_split, stall_steal=self.stall / 2,
                               read_size=MIN_CHUNK)
        self._malformed = MalformedBudget()
        self.workers = max(1, connections)
        self.first, self.first_slot, self.first_at = first, first_slot, first_at
        if first is not None and first_at and self.sched.segments and self.sched.segments[0].start == 0:
            self.sched.segments[0].cursor = first_at  # those bytes were read (sniffed) and written already
        self.stop = stop
        self.on_progress = on_progress
        self.fatal: BaseException | None = None
        self.last_error: BaseException | None = None
        self._abort = threading.Event()
        self._url_lock = threading.Lock()
        self.fd = -1
        self.requests = 0
        self._slots: list[Slot] = []
        self._carry: dict[int, tuple[Segment, Opened]] = {}  # worker → next segment its open stream continues into
        self._carried: dict[int, Opened] = {}
        self._wake = threading.Event()  # a worker finished: the monitor looks at once
        self._dirty = 0  # bytes written since the last flush (approximate: workers add without a lock)
        self._flush_now = threading.Event()
        self._flush_stop = False
        self.sha256: str | None = None
        self.hasher: StreamHasher | None = None

    # -- public ------------------------------------------------------------------------------
    def run(self) -> None:
        self.fd = open_rw(self.part)
        try:
            if self.remote.size is not None:
                if os.fstat(self.fd).st_size != self.remote.size:
                    os.ftruncate(self.fd, self.remote.size)  # pwrite fills it
                if preallocate(self.fd, self.remote.size) == "full":
                    raise SpaceError(f"the disk is full: {self.part.name} needs {self.remote.size >> 20} MiB; free "
                                     "some space or choose another folder with --to")
            self._save_state(sync=False)  # claims no new bytes yet: no need to sync
            # a fresh ranged download starts on the probe's stream alone and opens the other
            # connections only if that one is not already fast (see _monitor): one fast stream keeps
            # the file in order, so hashing runs alongside instead of after the download
            ramp = self.first is not None and self.remote.ranges and self.workers > 1 and \
                self.first.head_speed >= FAST_SINGLE / 4  # a slow first read: no need to wait and see
            size = self.remote.size if self.remote.size is not None else 1 << 62
            self.hasher = StreamHasher(self.fd, lambda: min(self.sched.prefix(), size), BUF, HASH_BEHIND,
                                       HASH_WAIT).start()
            threads = [self._spawn(i) for i in range(1 if ramp else self.workers)]
            flusher = threading.Thread(target=self._flush_behind, daemon=True, name="dl-flush")
            flusher.start()
            self._monitor(threads, ramp)
            self._wake_stuck()
            for t in threads:
                t.join(timeout=5)
            self._flush_stop = True
            self._flush_now.set()
            flusher.join()
            if self.first is not None and self.first_slot is not None:
                self.first_slot.close()  # nobody needed byte 0 (resumed transfer)
            if self.remote.size is None:
                os.ftruncate(self.fd, self.sched.done_bytes(None))
            if not self.sched.finished():  # complete: the last record under-claims, which is safe
                self._save_state()
            if self.fatal:
                raise self.fatal
            if self.stop is not None and self.stop.requested:
                raise CancelledError("download cancelled; the .part file is kept for resume")
            if not self.sched.finished() and self.remote.size is not None:
                err = self.last_error
                raise NetworkError(
                    f"download failed after {self.opts.retries} retries per connection: {err}; "
                    "run the same command again to resume") from err
            # flush to disk and hash the unhashed tail at the same time (both release the GIL)
            syncer = threading.Thread(target=sync_data, args=(self.fd,), daemon=True)
            syncer.start()
            if self.sched.restarted:  # a stream without ranges started over: hashed bytes may be stale
                self.hasher.invalidate()
            self.sha256 = self.hasher.finish(os.fstat(self.fd).st_size)
            syncer.join()
        finally:
            if self.hasher is not None:
                self.hasher.close()
            os.close(self.fd)

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self, wid: int) -> threading.Thread:
        t = threading.Thread(target=self._worker, args=(wid,), daemon=True, name=f"dl-{wid}")
        t.start()
        return t

    def _monitor(self, threads: list[threading.Thread], ramp: bool = False) -> None:
        started = time.monotonic()
        samples: list[tuple[float, int]] = [(started, self.sched.done_bytes(self.remote.size))]
        while any(t.is_alive() for t in threads) and not (self.remote.size is not None and self.sched.finished()):
            if self.stop is not None and self.stop.requested:
                self._abort.set()
            wait = self.opts.progress_interval
            if ramp:
                wait = min(wait, max(0.005, started + RAMP_WINDOW - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            now = time.monotonic()
            done = self.sched.done_bytes(self.remote.size)
            samples.append((now, done))
            while len(samples) > 2 and now - samples[0][0] > 3.0:
                samples.pop(0)
            t0, d0 = samples[0]
            speed = (done - d0) / (now - t0) if now > t0 else 0.0
            if ramp and now - started >= RAMP_WINDOW and not self._abort.is_set():
                ramp = False
                if speed < FAST_SINGLE or not threads[0].is_alive():
                    threads += [self._spawn(i) for i in range(1, self.workers)]
            if self.on_progress:
                self.on_progress(done, self.remote.size, speed)
        if self.on_progress:
            self.on_progress(self.sched.done_bytes(self.remote.size), self.remote.size, 0.0)

    def _wake_stuck(self) -> None:
        """All bytes are in (or we abort): unblock readers still waiting on a stalled socket."""
        self._abort.set()
        for slot in list(self._slots):
            sock = getattr(slot.conn, "sock", None) if slot.conn is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _flush_behind(self) -> None:
        """Flush and record progress every FLUSH_EVERY bytes or SAVE_EVERY seconds, off the data path."""
        while True:
            self._flush_now.wait(SAVE_EVERY)
            self._flush_now.clear()
            if self._flush_stop:
                return
            self._dirty = 0
            self._save_state()

    def _save_state(self, sync: bool = True) -> None:
        """Data first (fdatasync), then the record that claims it: a crash never over-claims. The
        pending ranges are taken before the sync, so bytes committed during it are not claimed."""
        pending = self.sched.pending()
        if sync:
            sync_data(self.fd)
        PartState(self.source_url, self.remote, pending).save(self.state_path)

    def _worker(self, wid: int) -> None:
        slot = Slot()
        self._slots.append(slot)
        buf = [bytearray(BUF)]  # the stream may swap it for a spare one (see _feed)
        fd = open_rw(self.part)  # its own descriptor (Windows has no pwrite: seek+write per thread)
        try:
            while not self._abort.is_set():
                carried = self._carry.pop(wid, None)
                seg = carried[0] if carried else self.sched.assign(wid)
                if carried:
                    self._carried[wid] = carried[1]
                if seg is None:
                    if self.sched.finished() or not self.remote.ranges:
                        return
                    self._abort.wait(0.1)  # stay around: a segment may stall and need taking over
                    continue
                ok = self._fetch(wid, seg, slot, buf, fd)
                if not ok:
                    self.sched.release(seg)
                    return
        finally:
            slot.close()
            os.close(fd)
            self._wake.set()

    def _fetch(self, wid: int, seg: Segment, slot: Slot, buf: list[bytearray], fd: int) -> bool:
        """Fill seg through the one retry loop. True: seg is done or handed over; False: this connection
        gives up (seg goes back to the pool)."""
        start = seg.cursor  # where the current try began
        streaming = False  # the current try got its answer and reads the body

        def attempt(tries: Tries) -> bool:
            nonlocal start, streaming
            if self._abort.is_set():
                raise _Stopped
            if seg.end is not None and seg.cursor >= seg.end:  # done, or the rest went to another connection
                return True
            start, streaming = seg.cursor, False
            opened = self._open(wid, seg, slot, tries.refresh)
            tries.refresh, streaming = False, True
            finished = self._stream(wid, seg, opened, buf, fd)
            if finished is None:
                raise _Stopped
            if not finished:
                raise http.client.IncompleteRead(b"")  # a clean end before the range's end: a drop
            return True

        def on_stall() -> bool | None:
            """A stream that went silent hands the rest of its range to an idle connection."""
            if not (streaming and self.remote.ranges and seg.end is not None):
                return None
            rest = self.sched.hand_over(seg, failed=seg.cursor == start)
            if rest is not None and rest.failures > 2 * self.opts.retries:
                raise NetworkError(f"download failed: {_describe(TimeoutError(), seg)}, {rest.failures} times in a "
                                   "row; run the same command again to resume")
            return True

        def failed(tries: Tries) -> None:
            err = tries.last_error
            self.last_error = err if isinstance(err, DownloadError) else NetworkError(_describe(err, seg))
            if self._abort.is_set():
                raise _Stopped
            if not self.remote.ranges and seg.cursor > seg.start:
                self.sched.reset(seg)  # no Range support: the only way on is from the start
            seg.failures = (0 if seg.cursor > start else seg.failures) + 1
            if seg.failures > 2 * self.opts.retries:  # every connection that tried this range failed
                raise NetworkError(f"download failed after {seg.failures} tries at byte {seg.cursor}: "
                                   f"{self.last_error}; run the same command again to resume")

        def sleep(seconds: float) -> None:
            if self._abort.wait(seconds):  # set on cancel (by the monitor) and when another connection failed it
                raise _Stopped

        try:
            return retrying(attempt, self.opts, self._malformed, slot.close, sleep, failed=failed,
                            progressed=lambda: seg.cursor > start, on_stall=on_stall,
                            refreshable=self.remote.url != self.source_url)
        except _Stopped:  # cancelled, or another connection failed the download
            return False
        except GaveUp:  # this connection gives up; another may still get the range
            return False
        except DownloadError as exc:  # the file changed, the size cap, an error page, every try broken
            self._fail(exc)
            return False

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self._abort.set()

    def _open(self, wid: int, seg: Segment, slot: Slot, use_source: bool) -> Opened:
        """The next answer for seg: the stream carried over from the last range, the probe's stream (at
        byte 0), or a new ranged request (to the original link when the signed one expired)."""
        carried = self._carried.pop(wid, None) if self._carried else None
        if carried is not None:
            return carried
        with self._url_lock:  # the probe's open answer starts at byte 0: whoever needs byte 0 takes it
            opened = self.first if seg.cursor == self.first_at else None
            if opened is not None:
                self.first = None
        if opened is not None:
            if self.first_slot is not None:
                slot.close()
                slot.conn, slot.key, slot.absolute = (self.first_slot.conn, self.first_slot.key,
                                                      self.first_slot.absolute)
            return opened
        extra = {}
        if self.remote.ranges:
            extra["Range"] = f"bytes={seg.cursor}-{'' if seg.end is None else seg.end - 1}"
            validator = self.remote.etag if self.remote.etag and not self.remote.etag.startswith("W/") \
                else self.remote.last_modified
            if validator:
                extra["If-Range"] = validator
        url = self.source_url if use_source else self.remote.url
        self.requests += 1
        opened = self.client.open(url, extra, slot)
        raise_for_status(opened, self.opts, slot, self.source_url)
        if use_source:
            with self._url_lock:
                self.remote.url = opened.url
        return opened

    def _check_identity(self, opened: Opened, seg: Segment) -> None:
        resp, r = opened.resp, self.remote
        etag, lm = resp.getheader("ETag"), resp.getheader("Last-Modified")
        changed = (etag and r.etag and etag.removeprefix("W/") != r.etag.removeprefix("W/")) or (
            lm and r.last_modified and lm != r.last_modified)
        if resp.status == 206:
            _first, _last, total = check_partial(resp, seg.cursor, seg.end)
            if total is not None and r.size is not None and total != r.size:
                changed = True
        elif resp.status == 200:
            if "text/html" in (resp.getheader("Content-Type") or "").lower() and "html" not in r.content_type.lower():
                raise LinkExpiredError("the link answered with a web page (HTML) instead of the file: it has "
                                       "expired or needs a login; paste a fresh direct link")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and r.size is not None and int(length) != r.size:
                changed = True
            if not changed and seg.cursor != 0:  # the whole file again: another answer than asked
                raise MalformedResponseError(f"the server ignored the byte range bytes={seg.cursor}- and sent the "
                                             "whole file (HTTP 200)")
        if changed:
            raise RemoteChangedError(
                "the file on the server changed during the download (size/ETag/Last-Modified differ)")

    def _stream(self, wid: int, seg: Segment, opened: Opened, buf: list[bytearray], fd: int) -> bool | None:
        """Copy the body into the part file. True: segment complete; False: clean EOF before end."""
        resp = opened.resp
        if not opened.checked:  # the probe's and carried streams were checked when they were opened
            self._check_identity(opened, seg)
            opened.checked = True
        sock = getattr(opened.conn, "sock", None)
        if sock is not None:
            sock.settimeout(self.stall)  # from now on, silence this long is a stall
        view = memoryview(buf[0])
        cap = self.opts.max_bytes
        chunk = MIN_CHUNK
        while not self._abort.is_set():
            want = chunk if seg.end is None else min(chunk, seg.end - seg.cursor)
            if want <= 0:
                break
            t = time.monotonic()
            n = resp.readinto(view[:want])
            # big reads on fast streams (fewer calls per byte), small ones on slow streams (they
            # still commit, show progress and look alive to the stall check several times a second)
            t = time.monotonic() - t
            if t < FAST_READ and chunk < BUF:
                chunk *= 2
            elif t > SLOW_READ and chunk > MIN_CHUNK:
                chunk //= 2
            if not n:
                if seg.end is None:
                    with self.sched.lock:
                        seg.end = seg.cursor
                    return True
                return False
            n = self.sched.allowed(seg, n)
            if n:
                at = seg.cursor
                write_at(fd, view[:n], at)
                self.sched.commit(seg, wid, n)
                self._malformed.progressed()
                self._dirty += n
                if self._dirty >= FLUSH_EVERY:
                    self._flush_now.set()
                spare = self.hasher.feed(at, buf[0], n)
                if spare is not buf[0]:
                    buf[0] = spare
                    view = memoryview(spare)
            if cap is not None and seg.cursor > cap:
                raise SpaceError(f"the file is larger than the size cap ({cap} bytes); raise --max-size")
        if self._abort.is_set():
            opened.conn.close()
            return None
        # reached the (possibly cut) end. An open-ended stream (the probe's) runs on into the next
        # segment when nobody has started it; otherwise reuse the connection only if fully read.
        if not resp.isclosed():
            nxt = self.sched.take_at(seg.cursor, wid) if opened.open_ended and seg.end == seg.cursor else None
            if nxt is not None:
                self._carry[wid] = (nxt, opened)
            else:
                opened.conn.close()
        return True


class _Stopped(Exception):
    """The transfer is over for this connection (cancelled, or failed on another one)."""


def _describe(exc: BaseException | None, seg: Segment | None) -> str:
    at = f" at byte {seg.cursor}" if seg is not None else ""
    if isinstance(exc, TimeoutError):
        return f"the connection stalled (no data for a while){at}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the server closed the connection early{at} (fewer bytes than announced)"
    return f"connection error{at}: {type(exc).__name__}: {exc}"
