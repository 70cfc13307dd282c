"""The recording worker process: reads the proxy's spool (see pipe.py) and writes the recordings.

Run by the proxy as `python -m codexbridge.recording.worker SPOOL_FD`, with the spool inherited and a pipe from the
proxy on stdin that is never written: its EOF (the proxy closed it, or died) means drain the spool and finish.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from codexbridge.recording.pipe import (
    CALL,
    CLIENT_BINARY,
    CLIENT_TEXT,
    COMPLETE,
    COUNT,
    DISCARD,
    OPEN,
    PROGRESS,
    RECORD,
    SERVER_BINARY,
    SERVER_TEXT,
    SHUTDOWN,
    SPOOL_START,
    TEXT_KEEPALIVE,
    TO_CLIENT,
    TO_CLIENT_RELAYED,
    TO_CLIENT_SYNTHETIC,
    UPSTREAM_CHUNK,
)
from codexbridge.recording.schema import HttpMessage, Redactor
from codexbridge.recording.writer import SessionRecorder

log = logging.getLogger("codexbridge.recording.writer")

READ_SIZE = 1 << 20  # bytes taken from the spool at once
BUSY_POLL = 0.01  # seconds between two looks at the spool while events come
IDLE_POLL = 0.1  # ... backing off to this while none come
FLUSH_EVERY = 0.25  # seconds a recording's written lines may wait in its file buffer while events keep coming
PUBLISH_EVERY = 1 << 20  # bytes read between two updates of the progress the proxy reads
RELEASE_EVERY = 8 << 20  # bytes read between two releases of the spool's read part
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


def _frames(payload: bytes) -> tuple[bytes, bytes]:
    """The joined frames and their lengths (array 'I' bytes) of a TO_CLIENT payload."""
    n = COUNT.unpack_from(payload)[0]
    start = COUNT.size + 4 * n
    return payload[start:], payload[COUNT.size:start]


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "surrogatepass")


# What each op calls on the session's recorder, with its payload (besides the most frequent, UPSTREAM_CHUNK and
# TO_CLIENT_RELAYED: Worker.records' own).
HANDLERS: dict[int, Callable[[SessionRecorder, bytes], None]] = {
    TO_CLIENT: lambda r, p: r.to_client_packed(*_frames(p), synthetic=False),
    TO_CLIENT_SYNTHETIC: lambda r, p: r.to_client_packed(*_frames(p), synthetic=True),
    CLIENT_TEXT: lambda r, p: r.client_frame(_text(p)),
    CLIENT_BINARY: lambda r, p: r.client_frame(p),
    SERVER_TEXT: lambda r, p: r.server_frame(_text(p)),
    SERVER_BINARY: lambda r, p: r.server_frame(p),
    TEXT_KEEPALIVE: lambda r, p: r.text_keepalive(),
    CALL: lambda r, p: _call(r, *pickle.loads(p)),
}
ENDS = {COMPLETE: SessionRecorder.complete, SHUTDOWN: SessionRecorder.shutdown, DISCARD: SessionRecorder.discard}


def _call(recorder: SessionRecorder, name: str, args: tuple[object, ...]) -> None:
    getattr(recorder, name)(*args)


class Spool:
    """Reads the spool's records in order; publishes its progress and frees what it has read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.read_to = SPOOL_START  # the spool offset of the first byte not read yet
        self.rest = b""  # a record read only in part (the proxy is writing it, or was killed while writing it)
        self._published = self._released = SPOOL_START
        self._punch: Callable[..., int] | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            punch = libc.fallocate
            punch.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            punch.restype = ctypes.c_int
            self._punch = punch
        except (OSError, AttributeError):
            pass

    def read(self) -> tuple[bytes, bool]:
        """The bytes available (after the part record held back), and whether more are waiting. The caller says
        with keep() where the complete records in them end."""
        # Only what is there: a read of READ_SIZE costs its buffer's allocation and page faults (~50 us) however
        # little it returns, and the worker looks every 10 ms.
        size = os.fstat(self.fd).st_size
        want = min(READ_SIZE, size - self.read_to)
        if len(self.rest) >= RECORD.size:  # a record larger than one read: the rest of it at once
            want = max(want, RECORD.size + RECORD.unpack_from(self.rest)[0] - len(self.rest))
        if want <= 0:
            return self.rest, False
        chunk = os.pread(self.fd, want, self.read_to)
        self.read_to += len(chunk)
        return (self.rest + chunk if self.rest else chunk), self.read_to < size

    def keep(self, data: bytes, end: int) -> None:
        """The bytes from `end` on are a record read in part: read again with what follows."""
        self.rest = data[end:]

    @property
    def consumed(self) -> int:
        return self.read_to - len(self.rest)

    def progress(self) -> None:
        consumed = self.consumed
        if consumed - self._published >= PUBLISH_EVERY:
            self._published = consumed
            try:
                os.pwrite(self.fd, PROGRESS.pack(consumed), 0)
            except OSError:
                pass
        release_to = consumed - consumed % 4096
        if self._punch is not None and release_to - self._released >= RELEASE_EVERY:
            if self._punch(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, self._released,
                           release_to - self._released) != 0:
                log.warning("the recording spool cannot free what was read on this file system (%s); it grows "
                            "until the proxy stops", os.strerror(ctypes.get_errno()))
                self._punch = None
            self._released = release_to


class Worker:
    """The open recordings, fed record by record."""

    def __init__(self) -> None:
        self.sessions: dict[int, SessionRecorder] = {}
        self.failed: set[int] = set()  # sessions whose failure was reported to the proxy
        self.redactors: dict[tuple[str, ...], Redactor] = {}

    def records(self, data: bytes) -> int:
        """Processes the complete records in `data`; returns where they end."""
        pos = 0
        unpack, count = RECORD.unpack_from, COUNT.unpack_from
        header = RECORD.size
        n = len(data)
        limit = n - header  # where the last record header that fits starts
        sessions, handlers = self.sessions, HANDLERS
        while pos <= limit:
            size, key, op, clock = unpack(data, pos)
            start = pos + header
            if start + size > n:
                break  # the proxy is writing it, or was killed while writing it
            pos = start + size
            recorder = sessions.get(key)
            if recorder is None:
                if op == OPEN:
                    self.open(key, clock, data[start:pos])
                continue
            recorder.clock = clock
            if op == UPSTREAM_CHUNK:  # the most frequent ops first, without a call in between
                recorder.upstream_chunk(data[start:pos])
            elif op == TO_CLIENT_RELAYED:
                recorder.to_client_relayed(count(data, start)[0])
            elif op in handlers:
                handlers[op](recorder, data[start:pos])
            elif op in ENDS:
                ENDS[op](recorder)
                del sessions[key]
            if recorder.failed:
                self.report(key)
        return pos

    def open(self, key: int, clock: float, payload: bytes) -> None:
        directory, mode, upstream, request, patterns, elide_over, label, path, started = pickle.loads(payload)
        redactor = self.redactors.get(tuple(patterns))
        if redactor is None:
            redactor = self.redactors[tuple(patterns)] = Redactor(patterns)
        recorder = SessionRecorder(directory, mode, upstream, HttpMessage.model_validate(request), redactor,
                                   elide_over, label, path=Path(path), started=dt.datetime.fromisoformat(started))
        recorder.flush_each = False
        recorder.clock0 = clock
        self.sessions[key] = recorder
        if recorder.failed:
            self.report(key)

    def flush(self) -> None:
        for recorder in self.sessions.values():
            if recorder.dirty:
                recorder.flush()

    def close_all(self) -> None:
        """The proxy went away mid-session: the files end where the spool did (no completion line)."""
        self.flush()
        for still_open in self.sessions.values():
            still_open.close_file()
        self.sessions.clear()

    def report(self, key: int) -> None:
        """One byte on stdout per recording that failed, for the proxy's metrics (the proxy reads them when scraped)."""
        if key not in self.failed:
            self.failed.add(key)
            try:
                os.write(1, b"F")
            except OSError:
                pass


def serve(spool_fd: int, lifeline: int) -> None:
    """Processes the spool until the lifeline ends and the spool is drained."""
    spool = Spool(spool_fd)
    worker = Worker()
    proxy_gone = False
    idle_wait = BUSY_POLL
    last_flush = time.monotonic()
    while True:
        data, more = spool.read()
        end = worker.records(data)
        spool.keep(data, end)
        if end:
            spool.progress()
        if more:
            continue
        if proxy_gone:
            break  # drained; a record the proxy was killed in the middle of writing stays out
        now = time.monotonic()
        if end:
            idle_wait = BUSY_POLL
            if now - last_flush >= FLUSH_EVERY:
                worker.flush()
                last_flush = now
        else:
            worker.flush()  # nothing new: what was written reaches the files
            last_flush = now
            idle_wait = min(idle_wait * 2, IDLE_POLL)
        try:
            ready = select.select([lifeline], [], [], idle_wait)[0]
        except InterruptedError:
            continue
        if ready:
            try:
                proxy_gone = not os.read(lifeline, 4096)
            except OSError:
                proxy_gone = True
            if proxy_gone:
                _full_speed()  # no live traffic to give way to any more
    worker.close_all()


def _full_speed() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # unprivileged, with the default RLIMIT_NICE: the best allowed
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, OSError):
            pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stop only when the proxy is gone, after the last event is written
    try:
        # Live traffic first: the recorder runs when a core is otherwise idle (and catches up then), not in
        # the middle of a burst. The spool holds what waits, and the proxy stops recording past MAX_LAG.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] codexbridge recorder: %(message)s", stream=sys.stderr)
    serve(int(sys.argv[1]), sys.stdin.fileno())


if __name__ == "__main__":
    main()
