"""Recording off the proxy's event loop: events go down a pipe to a worker process that redacts and writes.

Redaction and JSON encoding cost a few microseconds per event; on the proxy's single event loop that
would cap throughput. Here the loop only pickles each event and writes it to a pipe (non-blocking;
what does not fit waits for the loop's writer callback), and a child process on the other core does
the rest. A proxy killed with SIGKILL loses nothing that reached the pipe: the worker drains it to EOF.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

from codexbridge.recording.schema import HttpMessage
from codexbridge.recording.writer import recording_path

log = logging.getLogger("codexbridge.recording.writer")
_HEADER = struct.Struct("!I")
_MAX_BACKLOG = 256 * 1024 * 1024
_F_SETPIPE_SZ = 1031  # Linux


class RecordingSink:
    """The worker process and the pipe to it; one per proxy."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._backlog: deque[memoryview] = deque()
        self._backlog_bytes = 0
        self._writer_armed = False
        self.failed = False
        self._pipe_failures = 0
        self._file_failures = 0  # recordings the worker could not write (it reports each on its stdout)
        self._reports = -1
        self._ids = itertools.count(1)
        self._open: dict[int, RemoteRecorder] = {}  # sessions not complete yet: marked ended by shutdown at close()

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen([sys.executable, "-m", "codexbridge.recording.worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._fd = self._proc.stdin.fileno()
        self._reports = self._proc.stdout.fileno()
        os.set_blocking(self._reports, False)
        try:
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        os.set_blocking(self._fd, False)

    @property
    def failures(self) -> int:
        """Times recording stopped working: the pipe to the worker, and each recording the worker could not write
        (read by the metrics addon, from any thread)."""
        if self._reports >= 0:
            try:
                self._file_failures += len(os.read(self._reports, 4096))
            except (BlockingIOError, OSError, ValueError):
                pass
        return self._pipe_failures + self._file_failures

    def session(self, directory: str, mode: str, upstream: str, request: HttpMessage, extra_patterns: list[str],
                elide_over: int, label: str) -> RemoteRecorder:
        self.start()
        started = dt.datetime.now(dt.UTC)
        path = recording_path(directory, mode, label, started)
        key = next(self._ids)
        self.send((key, "open", (directory, mode, upstream, request.model_dump(), list(extra_patterns), elide_over,
                                 label, str(path), started.isoformat())))
        recorder = self._open[key] = RemoteRecorder(self, key, path)
        return recorder

    def ended(self, key: int) -> None:
        self._open.pop(key, None)

    def send(self, message: tuple[Any, ...]) -> None:
        if self.failed or self._fd < 0:
            return
        data = pickle.dumps(message, protocol=5)
        header = _HEADER.pack(len(data))
        if self._backlog:
            self._queue(memoryview(header + data))
            return
        try:
            written = os.writev(self._fd, (header, data))  # no copy to join them
        except BlockingIOError:
            written = 0
        except OSError as e:
            self._fail(f"the recording worker is gone ({e})")
            return
        if written < len(header) + len(data):
            rest = memoryview(header + data)[written:] if written < len(header) else memoryview(data)[written - len(header):]
            self._queue(rest)

    def _queue(self, rest: memoryview) -> None:
        self._backlog.append(rest)
        self._backlog_bytes += len(rest)
        if self._backlog_bytes > _MAX_BACKLOG:
            self._fail(f"the recording worker fell {self._backlog_bytes} bytes behind")
            return
        if not self._writer_armed:
            try:
                asyncio.get_running_loop().add_writer(self._fd, self._drain)
                self._writer_armed = True
            except RuntimeError:
                self.flush()

    def _drain(self) -> None:
        while self._backlog:
            head = self._backlog[0]
            try:
                written = os.write(self._fd, head)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(f"the recording worker is gone ({e})")
                return
            self._backlog_bytes -= written
            if written < len(head):
                self._backlog[0] = head[written:]
                return
            self._backlog.popleft()
        self._disarm()

    def _disarm(self) -> None:
        if self._writer_armed:
            try:
                asyncio.get_running_loop().remove_writer(self._fd)
            except RuntimeError:
                pass
            self._writer_armed = False

    def flush(self, timeout: float = 10.0) -> None:
        """Writes the backlog out, blocking (at shutdown)."""
        deadline = time.monotonic() + timeout
        while self._backlog and not self.failed and time.monotonic() < deadline:
            try:
                self._drain()
            except RuntimeError:
                pass
            if self._backlog:
                time.sleep(0.005)

    def close(self, timeout: float = 10.0) -> None:
        """Marks every session still open as ended by shutdown, writes out what is queued, and waits for the
        worker to finish the files."""
        if self._proc is None:
            return
        for recorder in list(self._open.values()):
            recorder.shutdown()
        self._disarm()
        self.flush(timeout)
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # through its file object: closing the bare fd left it to fail at exit
        except OSError:
            pass
        self._fd = -1
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("RECORDING: the worker did not finish writing within %ss; stopping it", timeout)
            self._proc.kill()
        self.failures  # noqa: B018 - the last reports, before their pipe closes
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._reports = -1
        self._proc = None

    def _fail(self, why: str) -> None:
        if not self.failed:
            self._pipe_failures += 1
            log.error("RECORDING FAILED: %s. Sessions go on, but they are no longer recorded.", why)
        self.failed = True
        self._backlog.clear()
        self._disarm()


class RemoteRecorder:
    """The proxy-side stand-in for one session's recorder: same calls, carried out by the worker."""

    __slots__ = ("_sink", "_key", "path", "_t0", "_relayed_next")

    def __init__(self, sink: RecordingSink, key: int, path: Path) -> None:
        self._sink = sink
        self._key = key
        self.path = path
        self._t0 = time.monotonic()
        self._relayed_next = False

    def _send(self, name: str, *args: Any) -> None:
        self._sink.send((self._key, name, (round(time.monotonic() - self._t0, 6), *args)))

    def client_frame(self, data: bytes | str) -> None:
        self._send("client_frame", data)

    def relayed_next(self) -> None:
        """The next non-synthetic to_client() carries exactly the events of the upstream reads recorded since
        the previous one: the worker, which decodes those reads too, needs no copy of them."""
        self._relayed_next = True

    def to_client(self, frames: list[bytes], synthetic: bool = False) -> None:
        if self._relayed_next and not synthetic:
            self._relayed_next = False
            self._send("to_client_relayed")
        elif len(frames) > 8:  # one bytes object and their lengths pickle far faster than many small ones
            self._send("to_client_packed", b"".join(frames), array("I", map(len, frames)).tobytes(), synthetic)
        else:
            self._send("to_client", frames, synthetic)

    def server_frame(self, data: bytes | str) -> None:
        self._send("server_frame", data)

    def upstream_request(self, method: str, url: str, headers: Any, body: bytes) -> None:
        self._send("upstream_request", method, url, [(str(n), str(v)) for n, v in headers], body)

    def upstream_response(self, status: int, headers: Any) -> None:
        self._relayed_next = False
        self._send("upstream_response", status, [(str(n), str(v)) for n, v in headers])

    def upstream_chunk(self, data: bytes) -> None:
        self._send("upstream_chunk", data)

    def upstream_end(self, error: str | None = None) -> None:
        self._send("upstream_end", error)

    def ping(self, payload: bytes) -> None:
        self._send("ping", payload)

    def pong(self, payload: bytes, rtt: float | None) -> None:
        self._send("pong", payload, rtt)

    def text_keepalive(self) -> None:
        self._send("text_keepalive")

    def close(self, code: int, reason: str, by: str) -> None:
        self._send("close", code, reason, by)

    def error(self, where: str, message: str) -> None:
        self._send("error", where, message)

    def complete(self) -> None:
        self._send("complete")
        self._sink.ended(self._key)

    def shutdown(self) -> None:
        """The proxy stops while the session is open: its recording ends here, marked as ended by shutdown."""
        self._send("shutdown")
        self._sink.ended(self._key)

    def discard(self) -> None:
        self._send("discard")
        self._sink.ended(self._key)

