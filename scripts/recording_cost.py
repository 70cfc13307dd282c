#!/usr/bin/env python3
"""What recording costs, offline and repeatable (not a test): the worker fed a spool in-process, and the proxy's calls.

`spool` turns recordings (e.g. those `scripts/bench_profile.py --config d --workload paced --keep DIR` leaves in
DIR/recordings) back into the spool the proxy would have written for them: the same RemoteRecorder calls, in the order
and at the clock of their events. `worker` runs the recording worker's loop over that spool (written to a spool file
in 10 ms slices of the proxy's clock, as the worker polls it), prints its process CPU, and compares what it wrote with
a directory of recordings (--compare: the recordings the spool came from, or another version's output, --keep). `proxy`
prints the CPU of the proxy-side record calls for the same events (minus a run with a sink that drops them).

Process CPU on a shared machine is noisy; instruction counts are not:
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python scripts/recording_cost.py worker SPOOL --repeats 1      (minus the same with --repeats 0)
Run another version's code with PYTHONPATH=its/src.

Run: .venv/bin/python scripts/recording_cost.py spool DIR/recordings SPOOL
     .venv/bin/python scripts/recording_cost.py worker SPOOL --repeats 5 --compare DIR/recordings
     .venv/bin/python scripts/recording_cost.py proxy DIR/recordings --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import filecmp
import json
import os
import pickle
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from codexbridge.recording import pipe
from codexbridge.recording import worker as worker_module
from codexbridge.recording.pipe import OPEN, RECORD, SPOOL_START, RecordingSink, RemoteRecorder

Event = tuple[float, int, dict[str, Any] | None]  # the proxy's clock, the session, the event (None: its start)


class Clock:
    """Stands in for the proxy's monotonic clock: the time of the event being replayed."""

    now = 0.0

    @staticmethod
    def monotonic() -> float:
        return Clock.now


class FileSink(RecordingSink):
    """A sink writing the spool to a file of ours, with no worker behind it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._spool = open(path, "w+b")
        self._fd = self._spool.fileno()
        os.lseek(self._fd, SPOOL_START, os.SEEK_SET)

    def _check_worker(self) -> None:
        pass

    def close_file(self) -> None:
        self._spool.close()


class NullSink(FileSink):
    """Drops every record: what the calls cost without the sink."""

    def put(self, key: int, op: int, payload: bytes = b"") -> None:
        pass

    def durable(self, key: int, op: int, payload: bytes = b"") -> None:
        pass


def load_events(recordings: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[Event]]:
    sessions: list[tuple[str, dict[str, Any]]] = []
    timed: list[tuple[float, int, int, dict[str, Any] | None]] = []
    for i, path in enumerate(sorted(recordings.glob("*.jsonl"))):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        start = dt.datetime.fromisoformat(lines[0]["started_at"]).timestamp()
        sessions.append((path.name, lines[0]))
        timed.append((start, i, 0, None))
        timed.extend((start + event["t"], i, j, event) for j, event in enumerate(lines[1:], 1))
    timed.sort(key=lambda e: e[:3])
    base = timed[0][0] if timed else 0.0
    return sessions, [(1000.0 + at - base, i, event) for at, i, _, event in timed]


def _payload(event: dict[str, Any]) -> bytes | str:
    return event["text"] if event.get("text") is not None else base64.b64decode(event.get("b64") or "")


def drive(sink: RecordingSink, sessions: list[tuple[str, dict[str, Any]]], events: list[Event],
          yield_every: int = 0) -> None:
    """Makes the proxy's record calls for the events; every `yield_every` events the flush timer fires."""
    pipe.time = types.SimpleNamespace(monotonic=Clock.monotonic)  # type: ignore[assignment]
    recorders: dict[int, RemoteRecorder] = {}
    for n, (at, i, event) in enumerate(events):
        Clock.now = at
        if event is None:
            name, header = sessions[i]
            sink.put(i + 1, OPEN, pickle.dumps((".", header["mode"], header["upstream"], header["request"],
                                                header.get("redaction") or [], header.get("elide_over") or 0, "x",
                                                name, header["started_at"]), protocol=5))
            recorders[i] = RemoteRecorder(sink, i + 1, Path(name))
            continue
        _call(recorders[i], event)
        if yield_every and n % yield_every == 0 and sink._flush_timer is not None:
            sink._flush_timer.cancel()
            sink._timed_flush()
    sink.flush()


def _call(rec: RemoteRecorder, event: dict[str, Any]) -> None:
    kind = event["kind"]
    if kind == "upstream_chunk":
        data = _payload(event)
        rec.upstream_chunk(data.encode() if isinstance(data, str) else data)
    elif kind == "to_client":
        if event.get("relayed") is not None:
            rec.relayed_next()
            rec.to_client([b"x"] * event["relayed"])
        else:
            rec.to_client([f.encode() for f in event["frames"]], event["synthetic"])
    elif kind == "client_frame":
        rec.client_frame(_payload(event))
    elif kind == "server_frame":
        rec.server_frame(_payload(event))
    elif kind == "upstream_request":
        rec.upstream_request(event["method"], event["url"], event["headers"], event["body"].encode())
    elif kind == "upstream_response":
        rec.upstream_response(event["status"], event["headers"])
    elif kind == "upstream_end":
        rec.upstream_end(event["error"])
    elif kind == "close":
        rec.close(event["code"], event["reason"], event["by"])
    elif kind == "ping":
        rec.ping(event["payload"].encode())
    elif kind == "pong":
        rec.pong(event["payload"].encode(), None if event.get("rtt_ms") is None else event["rtt_ms"] / 1000)
    elif kind == "text_keepalive":
        rec.text_keepalive()
    elif kind == "error":
        rec.error(event["where"], event["message"])
    elif kind == "complete":
        if event.get("reason") == "shutdown":
            rec.shutdown()
        else:
            rec.complete()
    else:
        raise ValueError(f"unknown event kind {kind!r}")


def slices(spool: Path, into: Path, slice_s: float = 0.01) -> list[bytes]:
    """The spool's records in slices of the proxy's clock, each session's file placed in `into`."""
    data = spool.read_bytes()[SPOOL_START:]
    out: list[bytes] = []
    current: list[bytes] = []
    window = None
    pos = 0
    while pos < len(data):
        size, key, op, clock = RECORD.unpack_from(data, pos)
        record = data[pos:pos + RECORD.size + size]
        pos += RECORD.size + size
        if op == OPEN:
            fields = list(pickle.loads(record[RECORD.size:]))
            fields[0], fields[7] = str(into), str(into / fields[7])
            payload = pickle.dumps(tuple(fields), protocol=5)
            record = RECORD.pack(len(payload), key, op, clock) + payload
        if window is not None and int(clock / slice_s) != window and current:
            out.append(b"".join(current))
            current = []
        window = int(clock / slice_s)
        current.append(record)
    if current:
        out.append(b"".join(current))
    return out


def worker_run(batches: list[bytes], flush_every: int = 25) -> float:
    """The worker's loop (serve) over the slices, each written to the spool file first; its process CPU."""
    with tempfile.TemporaryFile(prefix="codexbridge-spool-") as f:
        fd = f.fileno()
        os.pwrite(fd, bytes(SPOOL_START), 0)
        written = SPOOL_START
        c0 = time.process_time()
        spool: Any = worker_module.Spool(fd)
        worker: Any = worker_module.Worker()
        legacy = not hasattr(spool, "keep")  # a version whose Spool.read() found where the records end
        for k, batch in enumerate(batches):
            os.pwrite(fd, batch, written)  # the proxy's writes of one poll interval
            written += len(batch)
            if legacy:
                data, end, _more = spool.read()
                if end:
                    worker.records(data, end)
            else:
                data, _more = spool.read()
                end = worker.records(data)
                spool.keep(data, end)
            if end:
                spool.progress()
            if k % flush_every == 0:
                worker.flush()
        worker.close_all()
        return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spool", help="Write the spool for a directory of recordings.")
    s.add_argument("recordings", type=Path)
    s.add_argument("spool", type=Path)
    w = sub.add_parser("worker", help="Feed the spool to the worker, in-process.")
    w.add_argument("spool", type=Path)
    w.add_argument("--repeats", type=int, default=5)
    w.add_argument("--compare", type=Path, help="Recordings the output must equal, byte for byte.")
    w.add_argument("--keep", type=Path, help="Keep the last run's recordings in this (new) directory.")
    p = sub.add_parser("proxy", help="The proxy-side record calls for a directory of recordings.")
    p.add_argument("recordings", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    if args.cmd == "spool":
        sessions, events = load_events(args.recordings)
        sink = FileSink(str(args.spool))
        drive(sink, sessions, events)
        sink.close_file()
        print(f"{len(sessions)} sessions, {len(events) - len(sessions)} events, {args.spool.stat().st_size:,} bytes")
    elif args.cmd == "worker":
        times = []
        with tempfile.TemporaryDirectory(prefix="codexbridge-recording-cost-") as tmp:
            out = Path(tmp) / "out"
            for _ in range(args.repeats):
                if out.exists():
                    for old in out.iterdir():
                        old.unlink()
                    out.rmdir()
                out.mkdir()
                times.append(worker_run(slices(args.spool, out)))
            if times and args.compare is not None:
                names = sorted(p.name for p in args.compare.glob("*.jsonl"))
                same, differ, missing = filecmp.cmpfiles(args.compare, out, names, shallow=False)
                print(f"compared with {args.compare}: {len(same)} identical, {len(differ)} different, "
                      f"{len(missing)} missing" + (f" (first: {(differ + missing)[0]})" if differ or missing else ""))
            if times and args.keep is not None:
                out.rename(args.keep)
        if times:
            print(f"worker: {min(times):.3f} s CPU (min of {len(times)}; all {', '.join(f'{t:.3f}' for t in times)})")
    else:
        sessions, events = load_events(args.recordings)

        async def once(sink_class: type[FileSink]) -> float:
            with tempfile.NamedTemporaryFile(prefix="codexbridge-spool-") as f:
                sink = sink_class(f.name)
                c0 = time.process_time()
                drive(sink, sessions, events, yield_every=50)
                spent = time.process_time() - c0
                sink.close_file()
                return spent

        real = [asyncio.run(once(FileSink)) for _ in range(args.repeats)]
        null = [asyncio.run(once(NullSink)) for _ in range(args.repeats)]
        reads = sum(1 for _, _, e in events if e is not None and e["kind"] == "upstream_chunk")
        print(f"proxy: record calls {min(real) - min(null):.3f} s CPU over {reads:,} upstream reads (min of "
              f"{args.repeats}: {min(real):.3f} s with the spool, {min(null):.3f} s with a sink that drops them)")


if __name__ == "__main__":
    main()
