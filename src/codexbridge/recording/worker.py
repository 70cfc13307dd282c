"""The recording worker process: reads events from the proxy on stdin and writes recordings."""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import select
import signal
import struct
import sys
from pathlib import Path
from typing import BinaryIO

from codexbridge.recording.schema import HttpMessage, Redactor
from codexbridge.recording.writer import SessionRecorder

log = logging.getLogger("codexbridge.recording.writer")
_HEADER = struct.Struct("!I")


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def _input_waiting(stream: BinaryIO) -> bool:
    """More bytes on the pipe right now (bytes the reader already buffered count as none: one flush more)."""
    try:
        return bool(select.select([stream], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def serve(stream: BinaryIO) -> None:
    """Processes messages until EOF; each open session is closed (not marked complete) at the end.

    Recordings are flushed whenever the input runs dry (not after every event): a burst costs one
    flush, and nothing the proxy sent stays unwritten once the worker is idle."""
    sessions: dict[int, SessionRecorder] = {}
    failed: set[int] = set()  # sessions whose failure was reported to the proxy
    redactors: dict[tuple[str, ...], Redactor] = {}
    dirty: set[SessionRecorder] = set()
    while True:
        if dirty and not _input_waiting(stream):
            for written in dirty:
                written.flush()
            dirty.clear()
        header = _read_exactly(stream, _HEADER.size)
        if header is None:
            break
        body = _read_exactly(stream, _HEADER.unpack(header)[0])
        if body is None:
            break
        key, name, args = pickle.loads(body)
        if name == "open":
            directory, mode, upstream, request, patterns, elide_over, label, path, started = args
            redactor = redactors.get(tuple(patterns))
            if redactor is None:
                redactor = redactors[tuple(patterns)] = Redactor(patterns)
            sessions[key] = SessionRecorder(
                directory, mode, upstream, HttpMessage.model_validate(request), redactor, elide_over, label,
                path=Path(path), started=dt.datetime.fromisoformat(started),
            )
            sessions[key].flush_each = False
            _report(sessions[key], key, failed)
            continue
        recorder = sessions.get(key)
        if recorder is None:
            continue
        recorder.fixed_t = args[0]
        getattr(recorder, name)(*args[1:])
        _report(recorder, key, failed)
        if name in ("complete", "shutdown", "discard"):
            del sessions[key]
            dirty.discard(recorder)
        elif recorder.dirty:
            dirty.add(recorder)
    for still_open in sessions.values():
        still_open.close_file()


def _report(recorder: SessionRecorder, key: int, failed: set[int]) -> None:
    """One byte on stdout per recording that failed, for the proxy's metrics (the proxy reads them when scraped)."""
    if recorder.failed and key not in failed:
        failed.add(key)
        try:
            os.write(1, b"F")
        except OSError:
            pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stop only at EOF, after the last event is written
    try:
        os.nice(10)  # live traffic first: on a busy machine the recorder catches up when the proxy idles
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] codexbridge recorder: %(message)s", stream=sys.stderr)
    serve(sys.stdin.buffer)


if __name__ == "__main__":
    main()
