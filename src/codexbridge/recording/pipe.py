"""Recording off the proxy's event loop: events go into a spool file that a worker process redacts and writes.

Redaction and JSON encoding cost microseconds per event; on the proxy's single event loop that would cap
throughput. Here the loop appends each event, in a compact binary record, to an unnamed spool file (no path:
only the proxy and its worker hold it), and a worker process reads the spool, redacts and writes the recordings.

Why a file and not a pipe: what reached the spool survives the proxy. A frame for a client is in the spool
before it is written to the client's socket, so after a SIGKILL of the proxy the worker, which outlives it,
still drains the spool to its last complete record: every frame a client received is in its recording. A
pipe holds 1 MB; the rest of a burst waited in the proxy's memory and died with it. Writing to the page cache
never blocks and wakes nobody: the worker polls the spool (every 10 ms while busy, backing off to 100 ms when
idle) and takes whole batches, instead of being woken for every event.

The spool's first page is the worker's: it publishes how far it has read there; it frees what it has read
(fallocate punch-hole), so the spool holds only the backlog. The proxy stops recording (loudly) when the
worker dies or falls more than MAX_LAG bytes behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codexbridge.recording.schema import HttpMessage
from codexbridge.recording.writer import recording_path

log = logging.getLogger("codexbridge.recording.writer")

# -- the spool format (shared with worker.py) -------------------------------------------------------------------

RECORD = struct.Struct("<IIBd")  # payload length, session key, op, the proxy's monotonic clock at the event
COUNT = struct.Struct("<I")
PROGRESS = struct.Struct("<Q")  # at offset 0: the spool offset up to which the worker has read
SPOOL_START = 4096  # records start after the worker's page

# ops: how the payload is encoded
OPEN = 1  # pickle: the session's recording parameters
CALL = 2  # pickle: (method name, args), for the rare events
CLIENT_TEXT, CLIENT_BINARY = 3, 4  # the frame's bytes (text as UTF-8)
SERVER_TEXT, SERVER_BINARY = 5, 6
TO_CLIENT, TO_CLIENT_SYNTHETIC = 7, 8  # count, the lengths (array 'I'), the frames joined
TO_CLIENT_RELAYED = 9  # count: the frames are the events of the upstream reads recorded since the last batch
UPSTREAM_CHUNK = 10  # the read's bytes
TEXT_KEEPALIVE, COMPLETE, SHUTDOWN, DISCARD = 11, 12, 13, 14  # no payload

MAX_LAG = 1 << 30  # bytes the worker may fall behind before recording stops
_CHECK_EVERY = 4 << 20  # bytes written between two looks at the worker (alive, how far behind)
_FLUSH_AFTER = 0.005  # seconds a record that no client frame depends on may wait in memory for company
_WRITEV_MAX = 64  # records joined rather than handed to writev past this many pieces
_JOIN_UNDER = 1 << 16  # ... or below this many bytes: one copy of them costs less than writev's setup


class RecordingSink:
    """The spool, and the worker process reading it; one per proxy."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._spool: Any = None
        self._fd = -1
        self._pieces: list[bytes] = []  # records not in the spool yet (none a client frame depends on)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._written = SPOOL_START
        self._next_check = SPOOL_START + _CHECK_EVERY
        self.failed = False
        self._pipe_failures = 0
        self._file_failures = 0  # recordings the worker could not write (it reports each on its stdout)
        self._reports = -1
        self._worker_exited = False  # seen by failures (any thread); the loop's next look at the worker fails it
        self._ids = itertools.count(1)
        self._open: dict[int, RemoteRecorder] = {}  # sessions not complete yet: marked ended by shutdown at close()

    def start(self) -> None:
        if self._proc is not None or self.failed:
            return
        try:
            self._spool = tempfile.TemporaryFile(prefix="codexbridge-spool-")  # unnamed where the OS allows
            self._fd = self._spool.fileno()
            os.lseek(self._fd, SPOOL_START, os.SEEK_SET)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "codexbridge.recording.worker", str(self._fd)],
                stdin=subprocess.PIPE,  # its lifeline: EOF (our close, or our death) tells it to drain and finish
                stdout=subprocess.PIPE, pass_fds=(self._fd,), start_new_session=True,
            )
        except OSError as e:
            self._fail(f"cannot start the recording worker ({e})")
            return
        assert self._proc.stdout is not None
        self._reports = self._proc.stdout.fileno()
        os.set_blocking(self._reports, False)

    @property
    def failures(self) -> int:
        """Times recording stopped working: the spool or the worker, and each recording the worker could not write
        (read by the metrics addon, from any thread)."""
        if self._reports >= 0:
            try:
                got = os.read(self._reports, 4096)
            except (BlockingIOError, OSError, ValueError):
                got = None
            if got is not None:
                self._file_failures += len(got)
                if not got:  # EOF: the worker is gone
                    self._worker_exited = True
        return self._pipe_failures + self._file_failures + int(self._worker_exited and not self.failed)

    def session(self, directory: str, mode: str, upstream: str, request: HttpMessage, extra_patterns: list[str],
                elide_over: int, label: str) -> RemoteRecorder:
        self.start()
        if self._proc is not None and (self._worker_exited or self._proc.poll() is not None):
            self._check_worker()
        started = dt.datetime.now(dt.UTC)
        path = recording_path(directory, mode, label, started)
        key = next(self._ids)
        recorder = RemoteRecorder(self, key, path)
        self.put(key, OPEN, pickle.dumps((directory, mode, upstream, request.model_dump(), list(extra_patterns),
                                          elide_over, label, str(path), started.isoformat()), protocol=5))
        self._open[key] = recorder
        return recorder

    def ended(self, key: int) -> None:
        self._open.pop(key, None)

    # -- the hot path ----------------------------------------------------------------------------------------

    def put(self, key: int, op: int, payload: bytes = b"") -> None:
        """Queues one record; it reaches the spool with the next durable() or within _FLUSH_AFTER."""
        if self._fd < 0:
            return
        self._pieces.append(RECORD.pack(len(payload), key, op, time.monotonic()))
        if payload:
            self._pieces.append(payload)
        if self._flush_timer is None:
            try:
                self._flush_timer = asyncio.get_running_loop().call_later(_FLUSH_AFTER, self._timed_flush)
            except RuntimeError:  # no loop (shutdown, tests): at once
                self.flush()

    def durable(self, key: int, op: int, payload: bytes = b"") -> None:
        """Writes one record, and everything queued before it, to the spool now: for a frame about to be written
        to its client (after a SIGKILL, the worker still finds it)."""
        if self._fd < 0:
            return
        self._pieces.append(RECORD.pack(len(payload), key, op, time.monotonic()))
        if payload:
            self._pieces.append(payload)
        self.flush()

    def _timed_flush(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self) -> None:
        pieces = self._pieces
        if not pieces or self._fd < 0:
            return
        self._pieces = []
        data: bytes | None = None
        size = sum(map(len, pieces))
        try:
            if size < _JOIN_UNDER or len(pieces) > _WRITEV_MAX:
                data = b"".join(pieces)
                written = os.write(self._fd, data)
            else:
                written = os.writev(self._fd, pieces)
            if written < size:  # a regular file takes it all unless it is full; try the rest once
                rest = (data if data is not None else b"".join(pieces))[written:]
                written += os.write(self._fd, rest)
                if written < size:
                    raise OSError(f"short write to the spool ({written} of {size} bytes)")
        except OSError as e:
            self._fail(f"cannot write to the recording spool ({e})")
            return
        self._written += size
        if self._written >= self._next_check:
            self._next_check = self._written + _CHECK_EVERY
            self._check_worker()

    def _check_worker(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._fail(f"the recording worker exited with {self._proc.returncode}")
            return
        try:
            consumed = PROGRESS.unpack(os.pread(self._fd, PROGRESS.size, 0))[0] or SPOOL_START
        except (OSError, struct.error):
            return
        if self._written - consumed > MAX_LAG:
            self._fail(f"the recording worker fell {self._written - consumed} bytes behind")

    # -- the end ---------------------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Marks every session still open as ended by shutdown, writes out what is queued, and waits for the
        worker to finish the files."""
        if self._proc is None:
            return
        for recorder in list(self._open.values()):
            recorder.shutdown()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.flush()
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # the lifeline: the worker drains the spool and exits
        except OSError:
            pass
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("RECORDING: the worker did not finish writing within %ss; stopping it", timeout)
            self._proc.kill()
            self._proc.wait()
        self.failures  # noqa: B018 - the last reports, before their pipe closes
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._reports = -1
        self._proc = None
        self._close_spool()

    def _close_spool(self) -> None:
        self._fd = -1
        if self._spool is not None:
            try:
                self._spool.close()
            except OSError:
                pass
            self._spool = None

    def _fail(self, why: str) -> None:
        if not self.failed:
            self._pipe_failures += 1
            log.error("RECORDING FAILED: %s. Sessions go on, but they are no longer recorded.", why)
        self.failed = True
        self._pieces = []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._proc is not None:
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()  # a live worker finishes what it has
            except OSError:
                pass
        self._close_spool()


def _frames_payload(frames: list[bytes]) -> bytes:
    if len(frames) == 1:
        frame = frames[0]
        return struct.pack("<II", 1, len(frame)) + frame
    return COUNT.pack(len(frames)) + array("I", map(len, frames)).tobytes() + b"".join(frames)


class RemoteRecorder:
    """The proxy-side stand-in for one session's recorder: same calls, carried out by the worker."""

    __slots__ = ("_sink", "_key", "path", "_relayed_next", "_put", "_durable")

    def __init__(self, sink: RecordingSink, key: int, path: Path) -> None:
        self._sink = sink
        self._key = key
        self.path = path
        self._relayed_next = False
        self._put: Callable[..., None] = sink.put
        self._durable: Callable[..., None] = sink.durable

    def _call(self, name: str, *args: Any) -> None:
        self._put(self._key, CALL, pickle.dumps((name, args), protocol=5))

    def _call_durable(self, name: str, *args: Any) -> None:
        """A call recording a frame the client is about to get (a ping, a close)."""
        self._durable(self._key, CALL, pickle.dumps((name, args), protocol=5))

    def client_frame(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self._put(self._key, CLIENT_TEXT, data.encode("utf-8", "surrogatepass"))
        else:
            self._put(self._key, CLIENT_BINARY, data)

    def relayed_next(self) -> None:
        """The next non-synthetic to_client() carries exactly the events of the upstream reads recorded since
        the previous one: the worker, which has those reads, needs no copy of them."""
        self._relayed_next = True

    def to_client(self, frames: list[bytes], synthetic: bool = False) -> None:
        """Frames about to be written to the client: in the spool before this returns."""
        if self._relayed_next and not synthetic:
            self._relayed_next = False
            self._durable(self._key, TO_CLIENT_RELAYED, COUNT.pack(len(frames)))
        else:
            self._durable(self._key, TO_CLIENT_SYNTHETIC if synthetic else TO_CLIENT, _frames_payload(frames))

    def server_frame(self, data: bytes | str) -> None:
        """A passthrough frame from the upstream, forwarded to the client after this returns: durable too."""
        if isinstance(data, str):
            self._durable(self._key, SERVER_TEXT, data.encode("utf-8", "surrogatepass"))
        else:
            self._durable(self._key, SERVER_BINARY, data)

    def upstream_request(self, method: str, url: str, headers: Any, body: bytes) -> None:
        self._call("upstream_request", method, url, [(str(n), str(v)) for n, v in headers], body)

    def upstream_response(self, status: int, headers: Any) -> None:
        self._relayed_next = False
        self._call("upstream_response", status, [(str(n), str(v)) for n, v in headers])

    def upstream_chunk(self, data: bytes) -> None:
        self._put(self._key, UPSTREAM_CHUNK, data)

    def upstream_end(self, error: str | None = None) -> None:
        self._call("upstream_end", error)

    def ping(self, payload: bytes) -> None:
        self._call_durable("ping", payload)

    def pong(self, payload: bytes, rtt: float | None) -> None:
        self._call("pong", payload, rtt)

    def text_keepalive(self) -> None:
        self._durable(self._key, TEXT_KEEPALIVE)

    def close(self, code: int, reason: str, by: str) -> None:
        self._call_durable("close", code, reason, by)

    def error(self, where: str, message: str) -> None:
        self._call("error", where, message)

    def complete(self) -> None:
        self._put(self._key, COMPLETE)
        self._sink.ended(self._key)

    def shutdown(self) -> None:
        """The proxy stops while the session is open: its recording ends here, marked as ended by shutdown."""
        self._put(self._key, SHUTDOWN)
        self._sink.ended(self._key)

    def discard(self) -> None:
        self._put(self._key, DISCARD)
        self._sink.ended(self._key)
