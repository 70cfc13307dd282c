"""`codexbridge bench`: the same workloads direct, through plain mitmproxy, the bridge, the bridge with
recording, and passthrough with keepalive, on loopback, in one run.

Configurations (columns):
  a_sse  direct to the loopback upstream over POST + SSE (the bridge's baseline)
  a_ws   direct to the loopback upstream over its WebSocket mode (baseline of b_ws and e)
  a_wss  a_ws with the client speaking TLS to the upstream (its own self-signed certificate): the baseline of f's
         handshake under load (paced and handshake only)
  b_sse  plain mitmdump (no script, stream_large_bodies=1 so SSE is streamed) relaying POST + SSE
  b_ws   plain mitmdump relaying the WebSocket
  c      mitmdump -s bridge.py (codexbridge_mode=bridge): WebSocket in, POST + SSE out
  d      c with codexbridge_record=DIR
  e      mitmdump -s bridge.py codexbridge_mode=passthrough: WebSocket relayed, downstream pings
  f      c with the client speaking TLS to the proxy (certificate checks off; mitmproxy's generated certificate)
  g      c with codexbridge_metrics=HOST:PORT, its /metrics scraped once per second (as Prometheus would) while
         g's workloads run

Workloads (rows): burst (one session, N deltas as fast as possible), paced (S concurrent sessions of 100
deltas 20 ms apart), first (time to first event over a warm connection), handshake (WebSocket upgrade
latency while the paced load runs; the probes of 3 paced runs pooled), idle (many idle sessions: RSS per session of the process that holds
them, ping lateness measured by the client as arrival minus last activity plus the interval), storm (S
clients open their connection at once: the time each waits for its upgrade).

Paired figures (d, f and g against a reference bridge without recording, TLS or metrics, both up at once,
alternating): recording cost as throughput of bursts and as CPU of proxy plus recording worker for the
paced sessions; TLS cost as proxy CPU for the paced sessions; metrics cost as throughput of bursts and as
proxy CPU for the paced sessions, with the scrapes going on. Each figure is the median of the pairs' own ratios.

The clients are lean on purpose (raw asyncio streams; WebSocket frames are counted from their headers and
the terminal event is found with one bytes search per read), so that they are not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from codexbridge import __version__
from codexbridge.responses.events import TERMINAL_EVENTS, type_marker
from codexbridge.tools.bench_servers import bench_request, dumps, ws_masked_frame
from codexbridge.tools.procs import Child, child_pids, die_with_parent, free_ports, script_path

perf = time.perf_counter
READ = 1 << 18
HOST = "127.0.0.1"
PATH = "/v1/responses"
WORKLOADS = ("burst", "paced", "first", "handshake", "idle", "storm")
GROUPS = ("a", "b", "c", "d", "e", "f", "g")
PAIRED_GROUPS = ("d", "f", "g")  # measured against the reference bridge too
SCRAPE_EVERY = 1.0  # seconds between two scrapes of g's /metrics (Prometheus' scrape_interval, shortened)
_TERMINAL_OK = type_marker("response.completed")
_TERMINAL_BAD = tuple(type_marker(kind) for kind in sorted(TERMINAL_EVENTS - {"response.completed"}))


class BenchError(Exception):
    pass


# -- statistics -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))  # (round() rounds half to even: 95.5 -> 96)
    return s[k]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired_ratio(subject: list[float], reference: list[float]) -> float | None:
    """The median of the ratios of the pairs (the i-th run of each, measured next to each other): the machine's
    drift between pairs (a shared 2-vCPU VM: the same run's CPU spreads by +-20 % from minute to minute) cancels
    within a pair, which a ratio of the two medians keeps."""
    if len(subject) != len(reference):  # a run failed: the pairs no longer line up
        a, b = median(subject), median(reference)
        return a / b if a is not None and b else None
    ratios = [s / r for s, r in zip(subject, reference, strict=True) if r]
    return statistics.median(ratios) if ratios else None


# -- lean clients ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Turn:
    first: float  # seconds from the request to the first event
    total: float  # seconds from the request to the terminal event
    events: int


class WsClient:
    """A measuring WebSocket client: counts frames from their headers, answers pings, notes their lateness."""

    __slots__ = ("reader", "writer", "buf", "closed", "close_code", "last_rx", "prev_rx", "interval", "pings",
                 "lateness", "ping_at", "_error")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.closed = False
        self.close_code: int | None = None
        self.last_rx = perf()
        self.prev_rx = self.last_rx
        self.interval = 0.0
        self.pings = 0
        self.lateness: list[float] = []
        self.ping_at: list[float] = []
        self._error: bytes | None = None

    @classmethod
    async def connect(cls, port: int, path: str = PATH, timeout: float = 10.0,
                      tls: bool = False) -> tuple[WsClient, float]:
        """Opens a connection (TLS without certificate checks when `tls`) and upgrades it; returns the client and
        the handshake time (connect to 101, the TLS handshake included)."""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: codexbridge-bench\r\n"
                   f"Authorization: Bearer sk-bench\r\n\r\n").encode()
        t0 = perf()
        async with asyncio.timeout(timeout):
            if tls:
                reader, writer = await asyncio.open_connection(HOST, port, limit=READ, ssl=insecure_tls(),
                                                               server_hostname="localhost")
            else:
                reader, writer = await asyncio.open_connection(HOST, port, limit=READ)
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
            except BaseException:
                writer.close()
                raise
        elapsed = perf() - t0
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            writer.close()
            raise BenchError(f"upgrade refused: {status.decode('latin-1')}")
        return cls(reader, writer), elapsed

    def _parse(self, now: float) -> tuple[int, bool]:
        """Consumes complete frames; returns (data frames, terminal event seen)."""
        buf = self.buf
        n = len(buf)
        i = 0
        count = 0
        while n - i >= 2:
            b0 = buf[i]
            b1 = buf[i + 1]
            ln = b1 & 0x7F
            h = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2:i + 10], "big")
                h = 10
            if b1 & 0x80:
                h += 4
            end = i + h + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op < 8:
                if b0 & 0x80:
                    count += 1
            else:
                self._control(op, bytes(buf[i + h:end]), now)
            i = end
        done = False
        if count:
            if buf.find(_TERMINAL_OK, 0, i) >= 0:
                done = True
            else:
                for marker in _TERMINAL_BAD:
                    at = buf.find(marker, 0, i)
                    if at >= 0:
                        self._error = bytes(buf[max(0, at - 2):min(i, at + 300)])
                        done = True
                        break
        del buf[:i]
        return count, done

    def _control(self, op: int, payload: bytes, now: float) -> None:
        if op == 9:
            self.pings += 1
            if self.interval:
                self.lateness.append(now - (self.prev_rx + self.interval))
                self.ping_at.append(now)
            with contextlib.suppress(Exception):
                self.writer.write(ws_masked_frame(payload, 10))
        elif op == 8:
            self.closed = True
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    async def turn(self, deltas: int, pace_ms: int, timeout: float) -> Turn:
        frame = ws_masked_frame(dumps({"type": "response.create", **bench_request(deltas, pace_ms)}))
        reader = self.reader
        self.writer.write(frame)
        t0 = perf()
        first = 0.0
        events = 0
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(READ)
                now = perf()
                if not data:
                    self.closed = True
                    raise BenchError(f"connection closed after {events} events")
                self.buf += data
                self.prev_rx, self.last_rx = self.last_rx, now
                got, done = self._parse(now)
                if got:
                    if not events:
                        first = now
                    events += got
                if done:
                    if self._error is not None:
                        raise BenchError(f"error event: {self._error[:300]!r}")
                    return Turn(first - t0, now - t0, events)
                if self.closed:
                    raise BenchError(f"closed by the server with {self.close_code} after {events} events")

    async def idle(self, interval: float) -> None:
        """Reads (answering pings, noting their lateness) until cancelled or closed."""
        self.interval = interval
        reader = self.reader
        with contextlib.suppress(ConnectionError, OSError):
            while not self.closed:
                data = await reader.read(READ)
                now = perf()
                if not data:
                    self.closed = True
                    return
                self.buf += data
                self.prev_rx, self.last_rx = self.last_rx, now
                self._parse(now)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.closed:
                self.writer.write(ws_masked_frame(b"\x03\xe8", 8))
            self.writer.close()


_TLS: ssl.SSLContext | None = None


def insecure_tls() -> ssl.SSLContext:
    """The bench clients' TLS: no certificate checks (the proxy shows a certificate mitmproxy generated)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _TLS.check_hostname = False
        _TLS.verify_mode = ssl.CERT_NONE
    return _TLS


class SseClient:
    """A measuring HTTP/1.1 keep-alive client for streaming POSTs; counts events by their blank lines."""

    __slots__ = ("reader", "writer", "port", "buf")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, timeout: float = 10.0) -> tuple[SseClient, float]:
        t0 = perf()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port, limit=READ)
        return cls(reader, writer, port), perf() - t0

    async def _more(self) -> float:
        data = await self.reader.read(READ)
        if not data:
            raise BenchError("connection closed mid-response")
        self.buf += data
        return perf()

    async def turn(self, deltas: int, pace_ms: int, timeout: float) -> Turn:
        body = dumps(bench_request(deltas, pace_ms))
        head = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nAuthorization: Bearer sk-bench\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        t0 = perf()
        first = 0.0
        events = 0
        carry = b""
        buf = self.buf
        async with asyncio.timeout(timeout):
            while (end := buf.find(b"\r\n\r\n")) < 0:
                now = await self._more()
            status = bytes(buf[:buf.find(b"\r\n")])
            headers = bytes(buf[:end]).lower()
            del buf[:end + 4]
            if b" 200 " not in status + b" ":
                raise BenchError(f"upstream answered {status.decode('latin-1')}")
            chunked = b"transfer-encoding: chunked" in headers
            length: int | None = None
            if not chunked:
                for line in headers.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
            now = perf()
            state = "size"
            remaining = length if length is not None else -1

            def count(take: int, now: float) -> None:
                """Counts the SSE events that end in the next `take` body bytes (a blank line ends one)."""
                nonlocal carry, events, first
                piece = carry + bytes(buf[:take])
                del buf[:take]
                got = piece.count(b"\n\n")
                carry = b"\n" if piece.endswith(b"\n") and not piece.endswith(b"\n\n") else b""
                if got:
                    if not events:
                        first = now
                    events += got
            while True:
                progressed = False
                if chunked:
                    if state == "size":
                        at = buf.find(b"\r\n")
                        if at >= 0:
                            size = int(bytes(buf[:at]).split(b";")[0], 16)
                            del buf[:at + 2]
                            progressed = True
                            if size == 0:
                                state = "trailer"
                            else:
                                state, remaining = "data", size
                    elif state == "data" and buf:
                        take = min(remaining, len(buf))
                        count(take, now)
                        remaining -= take
                        progressed = True
                        if not remaining:
                            state = "crlf"
                    elif state == "crlf" and len(buf) >= 2:
                        del buf[:2]
                        state = "size"
                        progressed = True
                    elif state == "trailer":
                        at = buf.find(b"\r\n")
                        if at == 0:
                            del buf[:2]
                            return Turn(first - t0, now - t0, events)
                        if at > 0:
                            del buf[:at + 2]
                            progressed = True
                else:
                    if buf:
                        take = len(buf) if remaining < 0 else min(remaining, len(buf))
                        count(take, now)
                        if remaining >= 0:
                            remaining -= take
                        progressed = True
                    if remaining == 0:
                        return Turn(first - t0, now - t0, events)
                if not progressed:
                    try:
                        now = await self._more()
                    except BenchError:
                        if remaining < 0 and not chunked:
                            return Turn(first - t0, perf() - t0, events)
                        raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


Client = WsClient | SseClient


# -- processes ------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


_CLK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time all processes of the machine used (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return sum(fields[:3]) / _CLK  # user + nice + system: what processes can be charged with


def loadavg() -> list[float]:
    with contextlib.suppress(OSError, ValueError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def _child_limits() -> None:
    raise_nofile()
    die_with_parent()  # no upstream or proxy outlives a bench that was killed


async def start_child(name: str, cmd: list[str], port: int, workdir: Path, timeout: float = 30.0) -> Child:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_child_limits, cwd=workdir)
    child = Child(name, proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}:\n{child.tail()}")
        try:
            _, w = await asyncio.open_connection(HOST, port)
            w.close()
            return child
        except OSError:
            await asyncio.sleep(0.05)
    child.stop()
    raise BenchError(f"{name} did not listen on {port} within {timeout:.0f}s:\n{child.tail()}")


def mitmdump_cmd(group: str, upstream_port: int, port: int, record_dir: Path, params: Params,
                 confdir: Path, metrics_port: int | None = None) -> list[str]:
    """The proxy of a configuration; `confdir` is its own (mitmproxy creates its CA there at the first start:
    a TLS client of f gets a certificate signed by it); g serves its metrics on `metrics_port`."""
    cmd = [str(Path(sys.executable).parent / "mitmdump"), "--mode", f"reverse:http://{HOST}:{upstream_port}",
           "--listen-host", HOST, "--listen-port", str(port), "--set", "connection_strategy=lazy", "-q",
           "--set", f"confdir={confdir}"]
    if group == "b":
        return cmd + ["--set", "stream_large_bodies=1"]
    cmd += ["-s", str(script_path("bridge")), "--set", f"codexbridge_ping_interval={params.ping_interval}",
            "--set", f"codexbridge_ping_timeout={params.ping_timeout}"]
    if group == "d":
        cmd += ["--set", f"codexbridge_record={record_dir}"]
    if group == "e":
        cmd += ["--set", "codexbridge_mode=passthrough"]
    if group == "g":
        cmd += ["--set", f"codexbridge_metrics={HOST}:{metrics_port or 0}"]
    elif params.metrics:
        cmd += ["--set", f"codexbridge_metrics={HOST}:0"]
    return cmd


# -- configuration and parameters -----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    group: str
    label: str
    proto: str  # "sse" or "ws"
    baseline: str | None  # for burst, paced, first
    pings: bool  # the idle workload sees pings
    tls: bool = False  # the client speaks TLS to the proxy
    quick_workloads: tuple[str, ...] | None = None  # a quick run measures only these (None: all that apply)
    only: tuple[str, ...] | None = None  # the workloads this configuration measures at all (None: all that apply)

    def applies(self, workload: str) -> bool:
        if self.only is not None and workload not in self.only:
            return False
        return self.proto == "ws" or workload in ("burst", "paced", "first")

    def baseline_for(self, workload: str) -> str | None:
        if workload in ("handshake", "idle", "storm"):
            if self.key in ("a_ws", "a_wss"):
                return None
            return "a_wss" if self.tls and workload == "handshake" else "a_ws"
        return self.baseline


CONFIGS = (
    Config("a_sse", "a", "a direct SSE", "sse", None, False),
    Config("a_ws", "a", "a direct WS", "ws", None, True),
    Config("a_wss", "a", "a direct WS TLS", "ws", None, True, tls=True, only=("paced", "handshake")),
    Config("b_sse", "b", "b mitmproxy SSE", "sse", "a_sse", False),
    Config("b_ws", "b", "b mitmproxy WS", "ws", "a_ws", False),
    Config("c", "c", "c bridge", "ws", "a_sse", True),
    Config("d", "d", "d bridge+rec", "ws", "a_sse", True),
    Config("e", "e", "e passthrough", "ws", "a_ws", True),
    Config("f", "f", "f bridge TLS", "ws", "a_sse", True, tls=True),
    Config("g", "g", "g bridge+metrics", "ws", "a_sse", True, quick_workloads=("burst", "paced")),
)
BY_KEY = {c.key: c for c in CONFIGS}


@dataclass
class Params:
    burst: int = 20_000
    burst_repeats: int = 5
    paired_bursts: int = 6  # recording cost: d and an identical proxy without recording, alternating
    paired_paced: int = 5  # pairs of paced runs (d, f or g, and the reference bridge, in ABBA order) for CPU ratios
    storm: int = 200  # clients opening at once
    storm_rounds: int = 3
    sessions: int = 200
    paced_deltas: int = 100
    pace_ms: int = 20
    repeats: int = 200
    idle: int = 2000
    idle_hold: float = 15.0
    ping_interval: int = 5
    ping_timeout: int = 2
    handshake_gap: float = 0.1  # one new client every 100 ms while the paced sessions stream
    handshake_max: int = 100
    handshake_rounds: int = 3  # paced runs with probes: a run gives ~20 probes, too few for a steady p50
    open_concurrency: int = 64
    burst_budget_s: float = 30.0  # stop repeating a burst after this long (at least 3 repeats)
    settle_after_open_s: float = 1.0
    max_seconds: float = 1500.0
    groups: tuple[str, ...] = GROUPS
    workloads: tuple[str, ...] = WORKLOADS
    quiet_budget_s: float = 90.0  # total time the run may wait for other processes to calm down
    quick: bool = False
    label: str = "full"
    metrics: bool = False  # the bridge and passthrough proxies count and serve Prometheus metrics (on a free port)

    def runs(self, cfg: Config, workload: str) -> bool:
        """Whether `cfg` measures `workload` in this run."""
        return (workload in self.workloads and cfg.applies(workload)
                and not (self.quick and cfg.quick_workloads is not None and workload not in cfg.quick_workloads))


def _chosen(option: str, what: str, value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The comma-separated choices of `option`, in the order of `allowed`; an unknown one exits with a message."""
    chosen = {v.strip() for v in value.split(",") if v.strip()}
    bad = sorted(chosen - set(allowed))
    if bad:
        raise SystemExit(f"{option}: unknown {what}(s) {', '.join(bad)}; choose from {','.join(allowed)}")
    return tuple(a for a in allowed if a in chosen)


def params_from(args: argparse.Namespace) -> Params:
    p = Params()
    if args.quick:
        p = Params(burst=2000, burst_repeats=3, paired_bursts=2, paired_paced=1, storm=20, storm_rounds=1,
                   sessions=20, paced_deltas=25, repeats=20, idle=50, idle_hold=2.5,
                   ping_interval=2, ping_timeout=1, handshake_gap=0.05, handshake_max=40, handshake_rounds=1,
                   max_seconds=150.0,
                   burst_budget_s=10.0, settle_after_open_s=0.3, quiet_budget_s=0.0, quick=True, label="quick")
    for name, attr in (("burst", "burst"), ("sessions", "sessions"), ("repeats", "repeats"), ("idle", "idle")):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise SystemExit(f"--{name} must be at least 1")
            setattr(p, attr, value)
            if name == "sessions":
                p.storm = value
            p.label = "custom"
    if getattr(args, "idle_hold", None) is not None:
        p.idle_hold = max(1.0, float(args.idle_hold))
    if args.only:
        p.groups, p.label = _chosen("--only", "configuration", args.only, GROUPS), "partial"
    if args.workloads:
        p.workloads, p.label = _chosen("--workloads", "workload", args.workloads, WORKLOADS), "partial"
    p.metrics = bool(getattr(args, "metrics", False))
    # the idle session must outlive at least two ping intervals to see a ping, and its pong deadline
    p.idle_hold = max(p.idle_hold, p.ping_interval + 0.5)
    return p


# -- measurement helpers --------------------------------------------------------------------------


class Watch:
    """CPU of the processes involved and the lag of the bench's own event loop during one workload."""

    def __init__(self, pids: dict[str, int], ours: Callable[[], list[int]], foreign_at_start: float = 0.0) -> None:
        self.pids = pids
        self.foreign_at_start = foreign_at_start
        self.ours = ours  # every process of this run, to tell foreign CPU load apart
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}

    async def _monitor(self) -> None:
        while True:
            t = perf()
            await asyncio.sleep(0.005)
            self.lags.append(perf() - t - 0.005)

    def __enter__(self) -> Watch:
        self._t0 = perf()
        self._cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._ours0 = {p: cpu_seconds(p) for p in self.ours()}
        self._busy0 = busy_seconds()
        self._task = asyncio.get_running_loop().create_task(self._monitor())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        wall = perf() - self._t0
        ours = sum(cpu_seconds(p) - c0 for p, c0 in self._ours0.items())
        foreign = max(0.0, busy_seconds() - self._busy0 - ours)
        self.result = {
            "foreign_cpu_percent": round(100.0 * foreign / wall, 1) if wall > 0 else None,
            "foreign_cpu_percent_at_start": round(100.0 * self.foreign_at_start, 1),
            "wall_s": round(wall, 3),
            "cpu_percent": {k: round(100.0 * (cpu_seconds(p) - self._cpu0[k]) / wall, 1) if wall > 0 else None
                            for k, p in self.pids.items()},
            "bench_loop_lag_ms": {"p50": _ms(median(self.lags)), "p99": _ms(pct(self.lags, 99)),
                                  "max": _ms(max(self.lags) if self.lags else None)},
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 3)


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


class Quiet:
    """Before a workload, waits (within a budget for the whole run) while other processes load the machine."""

    def __init__(self, budget: float, ours: Callable[[], list[int]]) -> None:
        self.budget = budget
        self.ours = ours
        self.waited = 0.0

    async def sample(self, window: float = 0.3) -> float:
        pids = self.ours()
        c0 = {p: cpu_seconds(p) for p in pids}
        b0, t0 = busy_seconds(), perf()
        await asyncio.sleep(window)
        ours = sum(cpu_seconds(p) - c for p, c in c0.items())
        return max(0.0, busy_seconds() - b0 - ours) / (perf() - t0)

    async def wait(self, threshold: float = 0.3, limit: float = 10.0) -> float:
        """Returns the foreign load (fraction of a core) when the workload may start."""
        if self.budget <= 0:
            return 0.0
        t0 = perf()
        load = await self.sample()
        while load >= threshold and perf() - t0 < limit and self.waited + (perf() - t0) < self.budget:
            load = await self.sample(0.5)
        self.waited += perf() - t0
        return load


def runnable(pid: int) -> bool:
    """The process wants a CPU (running, or waiting for one), from /proc: a recording worker that runs only on idle
    cores may burn no CPU for a while and still have work."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        return False


async def settle(pid: int | None, limit: float = 5.0) -> None:
    """Waits until the process stops burning CPU and wanting it (teardown of the previous workload, a recording
    worker's backlog), at most `limit` s."""
    if pid is None:
        await asyncio.sleep(0.2)
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0, t0 = cpu_seconds(pid), perf()
        busy = False
        for _ in range(3):
            await asyncio.sleep(0.05)
            busy = busy or runnable(pid)
        if not busy and (cpu_seconds(pid) - c0) / (perf() - t0) < 0.1:  # at most one 10 ms tick in the window
            return


async def bounded_gather(n: int, limit: int, make: Callable[[int], Awaitable[Any]],
                         tick: Callable[[], None] | None = None) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            try:
                return await make(i)
            finally:
                if tick is not None:
                    tick()

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Scraper:
    """GET /metrics every `every` s from each of `ports` (as Prometheus would), in the bench's own loop, until
    stopped; the last scrape's text is kept (it shows what the proxy counted)."""

    def __init__(self, ports: list[int], every: float = SCRAPE_EVERY) -> None:
        self.ports, self.every = ports, every
        self.scrapes = 0
        self.bytes = 0
        self.errors: list[str] = []
        self.last: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def scrape(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        if not data.startswith(b"HTTP/1.") or b" 200 " not in data[:16]:
            raise BenchError(f"/metrics answered {data[:40]!r}")
        self.scrapes += 1
        self.bytes += len(data)
        self.last[port] = data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            for port in self.ports:
                try:
                    async with asyncio.timeout(5.0):
                        await self.scrape(port)
                except (BenchError, TimeoutError, OSError) as e:
                    self.errors.append(_err(e))
            n += 1
            await asyncio.sleep(max(0.0, start + n * self.every - loop.time()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def counted(self, name: str) -> float:
        """The sum of a metric's samples (every label) over the last scrape of each port."""
        total = 0.0
        for text in self.last.values():
            for line in text.splitlines():
                if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
                    with contextlib.suppress(ValueError):
                        total += float(line.rsplit(" ", 1)[1])
        return total

    def result(self) -> dict[str, Any]:
        return {"scrapes": self.scrapes, "every_s": self.every, "bytes": self.bytes,
                "sessions_counted": self.counted("codexbridge_sessions_total"),
                "frames_counted": self.counted("codexbridge_frames_total"),
                "errors": self.errors[:20], "error_count": len(self.errors)}


class Runner:
    def __init__(self, params: Params, progress: Progress, say: Callable[[str], None]) -> None:
        self.p = params
        self.progress = progress
        self.say = say
        self.step = progress.add_task("", total=1, visible=False)

    def _step(self, description: str, total: float) -> None:
        self.progress.reset(self.step, description=f"  {description}", total=total, completed=0, visible=True)

    def _advance(self, n: float = 1) -> None:
        self.progress.advance(self.step, n)

    async def connect(self, cfg: Config, port: int, path: str = PATH) -> Client:
        if cfg.proto == "ws":
            return (await WsClient.connect(port, path, tls=cfg.tls))[0]
        return (await SseClient.connect(port))[0]

    # burst --------------------------------------------------------------------------------------

    async def burst(self, cfg: Config, port: int, pid: int | None = None) -> dict[str, Any]:
        n, repeats = self.p.burst, self.p.burst_repeats
        self._step(f"{cfg.label}: burst {n:,} deltas × {repeats}", repeats)
        rates, seconds, errors = [], [], []
        timeout = 30.0 + n / 1000.0
        t0 = perf()
        for r in range(repeats):
            if r >= 3 and perf() - t0 > self.p.burst_budget_s:
                break
            if r:
                await settle(pid, limit=3.0)  # the previous session's teardown must not overlap this one
            client = await self.connect(cfg, port)
            try:
                t = await client.turn(n, 0, timeout)
                if t.events != n + 2:
                    errors.append(f"got {t.events} events, expected {n + 2}")
                rates.append(t.events / t.total)
                seconds.append(t.total)
            except (BenchError, TimeoutError, OSError) as e:
                errors.append(_err(e))
            finally:
                client.close()
            self._advance()
        return {"events_per_s": _r(median(rates), 1), "events_per_s_min": _r(min(rates, default=None), 1),
                "events_per_s_max": _r(max(rates, default=None), 1), "deltas": n, "raw_events_per_s": rates,
                "raw_seconds": seconds, "repeats": len(rates), "errors": errors}

    async def paired_burst(self, cfg: Config, rec: tuple[int, int], base: tuple[int, int],
                           feature: str = "recording") -> dict[str, Any]:
        """The cost of `feature` (recording, metrics) from bursts alternating (ABBA) between the proxy with it and
        an identical one without it, both up at once: the two medians share the machine's state, which separate
        cells minutes apart do not (one cell's repeats spread by +-20 % here)."""
        pairs = self.p.paired_bursts
        self._step(f"{cfg.label}: {feature} cost, {pairs} alternating burst pairs", pairs)
        with_rec: list[float] = []
        without: list[float] = []
        errors: list[str] = []
        timeout = 30.0 + self.p.burst / 1000.0
        for i in range(pairs):
            order = [(rec, with_rec), (base, without)]
            for (port, pid), out in (order if i % 2 == 0 else order[::-1]):
                for quiet_pid in (pid, *child_pids(pid)):  # the recording worker too: its backlog is part of d
                    await settle(quiet_pid, limit=5.0)
                client = await self.connect(cfg, port)
                try:
                    t = await client.turn(self.p.burst, 0, timeout)
                    out.append(t.events / t.total)
                except (BenchError, TimeoutError, OSError) as e:
                    errors.append(_err(e))
                finally:
                    client.close()
            self._advance()
        a, b = median(with_rec), median(without)
        kept = paired_ratio(with_rec, without)
        return {"cost": _r(1 - kept, 4) if kept is not None else None, f"with_{feature}_events_per_s": _r(a, 1),
                f"without_{feature}_events_per_s": _r(b, 1), "pairs": pairs,
                f"raw_with_{feature}": with_rec, f"raw_without_{feature}": without, "errors": errors}

    # first event --------------------------------------------------------------------------------

    async def first(self, cfg: Config, port: int) -> dict[str, Any]:
        repeats = self.p.repeats
        self._step(f"{cfg.label}: first event × {repeats}", repeats)
        client = await self.connect(cfg, port)
        firsts, totals, errors = [], [], []
        try:
            for _ in range(5):  # warm: pool connections, caches
                await client.turn(1, 0, 10.0)
            for _ in range(repeats):
                try:
                    t = await client.turn(1, 0, 10.0)
                except (BenchError, TimeoutError) as e:
                    errors.append(_err(e))
                    client.close()
                    client = await self.connect(cfg, port)
                else:
                    firsts.append(t.first)
                    totals.append(t.total)
                self._advance()
        finally:
            client.close()
        return {"p50_ms": _ms(median(firsts)), "p90_ms": _ms(pct(firsts, 90)), "p99_ms": _ms(pct(firsts, 99)),
                "turn_p50_ms": _ms(median(totals)), "raw_ms": [round(x * 1000, 4) for x in firsts],
                "errors": errors}

    # paced, with handshakes under that load -----------------------------------------------------

    async def paced(self, cfg: Config, port: int, probes: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
        p = self.p
        n = p.sessions
        self._step(f"{cfg.label}: {n} paced sessions, connecting", n)
        opened = await bounded_gather(n, 50, lambda i: self.connect(cfg, port), self._advance)
        clients = [c for c in opened if not isinstance(c, BaseException)]
        connect_errors = [_err(c) for c in opened if isinstance(c, BaseException)]
        self._step(f"{cfg.label}: {len(clients)} sessions × {p.paced_deltas} deltas / {p.pace_ms} ms", len(clients))
        timeout = 30.0 + p.paced_deltas * p.pace_ms / 1000.0 * 10
        stop = asyncio.Event()
        shakes: list[float] = []
        shake_errors: list[str] = []

        async def one_probe(slot: asyncio.Semaphore) -> None:
            try:
                c, dt_ = await WsClient.connect(port, timeout=10.0, tls=cfg.tls)
            except (BenchError, TimeoutError, OSError) as e:
                shake_errors.append(_err(e))
            else:
                shakes.append(dt_)
                c.close()
            finally:
                slot.release()

        async def probe() -> None:
            """Open loop: one new upgrade at a random moment of every handshake_gap s slot while the load runs,
            whether or not the previous one is done (at most 32 outstanding), so a stalled period weighs by its
            duration. The moment is random because the load is periodic (a delta every pace_ms): probes a fixed
            gap apart keep one phase against it for a whole run, and the run's p50 then follows that phase."""
            slot = asyncio.Semaphore(32)
            launched: list[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            start = loop.time()
            arrival = random.Random()
            while not stop.is_set() and len(launched) < p.handshake_max:
                at = start + (len(launched) + arrival.random()) * p.handshake_gap
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, at - loop.time())):
                        await stop.wait()
                if stop.is_set():
                    break
                await slot.acquire()
                launched.append(asyncio.create_task(one_probe(slot)))
            await asyncio.gather(*launched, return_exceptions=True)

        async def run(c: Client) -> Turn:
            try:
                return await c.turn(p.paced_deltas, p.pace_ms, timeout)
            finally:
                self._advance()

        prober = asyncio.create_task(probe()) if probes else None
        t0 = perf()
        turns = await asyncio.gather(*(run(c) for c in clients), return_exceptions=True)
        wall = perf() - t0
        stop.set()
        if prober is not None:
            await prober
        for c in clients:
            c.close()
        done = [t.total for t in turns if isinstance(t, Turn)]
        errors = connect_errors + [_err(t) for t in turns if isinstance(t, BaseException)]
        short = sum(1 for t in turns if isinstance(t, Turn) and t.events != p.paced_deltas + 2)
        ideal = p.paced_deltas * p.pace_ms / 1000.0
        paced = {"p50_s": _r(median(done)), "p90_s": _r(pct(done, 90)), "p99_s": _r(pct(done, 99)),
                 "max_s": _r(max(done, default=None)), "ideal_s": ideal, "sessions": n, "completed": len(done),
                 "short_streams": short, "wall_s": _r(wall), "raw_s": [round(x, 4) for x in done],
                 "errors": errors[:20], "error_count": len(errors)}
        hs = None
        if probes:
            hs = {"p50_ms": _ms(median(shakes)), "p90_ms": _ms(pct(shakes, 90)), "p99_ms": _ms(pct(shakes, 99)),
                  "n": len(shakes), "raw_ms": [round(x * 1000, 3) for x in shakes], "errors": shake_errors[:20],
                  "error_count": len(shake_errors)}
        return paced, hs

    async def paired_paced_cpu(self, cfg: Config, subject: tuple[int, int], ref_cfg: Config,
                               ref: tuple[int, int]) -> dict[str, Any]:
        """CPU seconds of a proxy and its children (the recording worker) for the paced sessions, alternating
        (ABBA) between `cfg` on `subject` and the reference bridge: from all sessions connected to all of them
        closed and the processes quiet again; the connecting is counted apart."""
        pairs = self.p.paired_paced
        self._step(f"{cfg.label}: CPU of {self.p.sessions} paced sessions, {pairs} pair(s) with the reference bridge",
                   pairs * 2)
        runs: dict[str, list[dict[str, float]]] = {"subject": [], "reference": []}
        errors: list[str] = []
        order = [("subject", cfg, subject), ("reference", ref_cfg, ref)]
        try:  # a first paced run on each, not counted: the upstream pool fills, caches warm
            for _, c, (port, pid) in order:
                await self._paced_cpu(c, port, pid)
        except (BenchError, TimeoutError, OSError) as e:
            errors.append(_err(e))
        for i in range(pairs):
            for name, c, (port, pid) in (order if i % 2 == 0 else order[::-1]):
                try:
                    runs[name].append(await self._paced_cpu(c, port, pid))
                except (BenchError, TimeoutError, OSError) as e:
                    errors.append(_err(e))
                self._advance()

        def med(name: str, key: str) -> float | None:
            return median([r[key] for r in runs[name]])

        s_stream, r_stream = med("subject", "stream_cpu_s"), med("reference", "stream_cpu_s")
        s_connect, r_connect = med("subject", "connect_cpu_s"), med("reference", "connect_cpu_s")
        ratio = paired_ratio([r["stream_cpu_s"] for r in runs["subject"]], [r["stream_cpu_s"] for r in runs["reference"]])
        return {"ratio": _r(ratio, 3),
                "subject_cpu_s": _r(s_stream), "reference_cpu_s": _r(r_stream),
                "connect_ratio": _r(s_connect / r_connect, 3) if s_connect is not None and r_connect else None,
                "subject_connect_cpu_s": _r(s_connect), "reference_connect_cpu_s": _r(r_connect),
                "sessions": self.p.sessions, "pairs": pairs, "raw": runs, "errors": errors[:20],
                "error_count": len(errors)}

    async def _paced_cpu(self, cfg: Config, port: int, pid: int) -> dict[str, float]:
        p = self.p
        procs = [pid, *child_pids(pid)]
        for quiet_pid in procs:
            await settle(quiet_pid, limit=5.0)

        def cpu() -> float:
            return sum(cpu_seconds(x) for x in procs)

        c0 = cpu()
        opened = await bounded_gather(p.sessions, 50, lambda i: self.connect(cfg, port))
        clients = [c for c in opened if not isinstance(c, BaseException)]
        try:
            if len(clients) < len(opened):
                raise BenchError(f"{len(opened) - len(clients)} of {len(opened)} sessions did not connect")
            for quiet_pid in procs:
                await settle(quiet_pid, limit=5.0)
            c1 = cpu()
            timeout = 30.0 + p.paced_deltas * p.pace_ms / 1000.0 * 10
            turns = await asyncio.gather(*(c.turn(p.paced_deltas, p.pace_ms, timeout) for c in clients),
                                         return_exceptions=True)
        finally:
            for c in clients:
                c.close()
        bad = [t for t in turns if isinstance(t, BaseException)]
        if bad:
            raise BenchError(f"{len(bad)} paced sessions failed, first: {_err(bad[0])}")
        for quiet_pid in procs:  # the worker's backlog and every session's teardown are part of the cost
            await settle(quiet_pid, limit=10.0)
        return {"connect_cpu_s": c1 - c0, "stream_cpu_s": cpu() - c1}

    # storm --------------------------------------------------------------------------------------

    async def storm(self, cfg: Config, port: int, pid: int | None) -> dict[str, Any]:
        """`storm` clients open their connection at the same moment (a gateway restart, a CI fleet starting):
        the time each waits from its connect to the 101, over `storm_rounds` rounds."""
        n, rounds = self.p.storm, self.p.storm_rounds
        self._step(f"{cfg.label}: {n} clients connecting at once × {rounds}", rounds)
        times: list[float] = []
        walls: list[float] = []
        errors: list[str] = []
        for _ in range(rounds):
            await settle(pid)
            t0 = perf()
            outcomes = await asyncio.gather(*(WsClient.connect(port, timeout=30.0, tls=cfg.tls) for _ in range(n)),
                                            return_exceptions=True)
            walls.append(perf() - t0)
            for o in outcomes:
                if isinstance(o, BaseException):
                    errors.append(_err(o))
                else:
                    times.append(o[1])
                    o[0].close()
            self._advance()
        await settle(pid)
        return {"p50_ms": _ms(median(times)), "p95_ms": _ms(pct(times, 95)), "p99_ms": _ms(pct(times, 99)),
                "max_ms": _ms(max(times, default=None)), "all_upgraded_ms": _ms(median(walls)), "clients": n,
                "rounds": rounds, "n": len(times), "raw_ms": [round(x * 1000, 3) for x in times],
                "errors": errors[:20], "error_count": len(errors)}

    # idle -----------------------------------------------------------------------------------------

    async def idle(self, cfg: Config, port: int, pid: int) -> dict[str, Any]:
        p = self.p
        n = p.idle
        path = f"{PATH}?ping={p.ping_interval}" if cfg.key == "a_ws" else PATH
        rss0 = rss_kb(pid)
        self._step(f"{cfg.label}: opening {n} idle sessions", n)
        readers: list[asyncio.Task[None]] = []
        clients: list[WsClient] = []

        async def open_one(i: int) -> None:
            c, _ = await WsClient.connect(port, path, timeout=30.0, tls=cfg.tls)
            try:
                await c.turn(1, 0, 30.0)
            except BaseException:
                c.close()
                raise
            clients.append(c)
            readers.append(asyncio.create_task(c.idle(float(p.ping_interval))))

        t0 = hold_start = perf()
        outcomes = await bounded_gather(n, p.open_concurrency, open_one, self._advance)
        open_s = perf() - t0
        errors = [_err(o) for o in outcomes if isinstance(o, BaseException)]
        try:
            await asyncio.sleep(p.settle_after_open_s)
            rss1 = rss_kb(pid)
            self._step(f"{cfg.label}: {len(clients)} idle sessions, holding {p.idle_hold:.0f} s", p.idle_hold)
            hold_start = perf()
            held = 0.0
            while held < p.idle_hold:
                step = min(0.5, p.idle_hold - held)
                await asyncio.sleep(step)
                held += step
                self._advance(step)
            rss2 = rss_kb(pid)
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            lost = sum(1 for c in clients if c.closed)
            for c in clients:
                c.close()
        opened = len(clients)
        lateness = [x for c in clients for x in c.lateness]
        during_hold = [x for c in clients for x, at in zip(c.lateness, c.ping_at, strict=False) if at >= hold_start]
        pings = sum(c.pings for c in clients)
        per = (max(rss1, rss2) - rss0) / opened if opened else None
        return {"kb_per_session": _r(per, 2),
                "kb_per_session_after_open": _r((rss1 - rss0) / opened if opened else None, 2),
                "rss_kb_before": rss0, "rss_kb_after_open": rss1, "rss_kb_after_hold": rss2,
                "sessions": n, "opened": opened, "open_s": _r(open_s), "lost": lost, "pings": pings,
                "sessions_pinged": sum(1 for c in clients if c.pings),
                "lateness_p50_ms": _ms(median(lateness)) if cfg.pings else None,
                "lateness_p99_ms": _ms(pct(lateness, 99)) if cfg.pings else None,
                "lateness_max_ms": _ms(max(lateness)) if cfg.pings and lateness else None,
                "lateness_hold_p50_ms": _ms(median(during_hold)) if cfg.pings else None,
                "lateness_hold_p99_ms": _ms(pct(during_hold, 99)) if cfg.pings else None,
                "pings_while_opening": len(lateness) - len(during_hold),
                "raw_lateness_ms": [round(x * 1000, 2) for x in lateness],
                "ping_interval_s": p.ping_interval, "hold_s": p.idle_hold,
                "measured_pid": "upstream" if cfg.group == "a" else "mitmdump",
                "errors": errors[:20], "error_count": len(errors)}

    async def warm(self, cfg: Config, port: int) -> None:
        client = await self.connect(cfg, port)
        try:
            await client.turn(min(1000, self.p.burst), 0, 30.0)
            for _ in range(3):
                await client.turn(3, 0, 10.0)
        finally:
            client.close()


def merge_probes(hs: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Two paced runs' handshake probes as one sample."""
    raw = hs["raw_ms"] + more["raw_ms"]
    return {**hs, "p50_ms": median(raw), "p90_ms": pct(raw, 90), "p99_ms": pct(raw, 99), "n": len(raw),
            "raw_ms": raw, "errors": (hs["errors"] + more["errors"])[:20],
            "error_count": hs["error_count"] + more["error_count"], "rounds": hs.get("rounds", 1) + 1}


# -- the run --------------------------------------------------------------------------------------


MAIN_FIGURE = {"burst": "events_per_s", "paced": "p50_s", "first": "p50_ms", "handshake": "p50_ms",
               "idle": "kb_per_session", "storm": "p50_ms", "recording_cost": "cost", "recording_cpu": "ratio",
               "tls_cpu": "ratio", "metrics_cost": "cost", "metrics_cpu": "ratio", "metrics_scrapes": "scrapes"}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import PackageNotFoundError, version

    try:
        mitm_version = version("mitmproxy")
    except PackageNotFoundError:  # pragma: no cover
        mitm_version = "unknown"
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_kb": mem_kb,
            "python": platform.python_version(), "mitmproxy": mitm_version, "codexbridge": __version__,
            "platform": platform.platform(), "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


async def run_all(p: Params, progress: Progress, say: Callable[[str], None]) -> dict[str, Any]:
    runner = Runner(p, progress, say)
    configs = [c for c in CONFIGS if c.group in p.groups]
    cells = [(c.key, w) for c in configs for w in p.workloads if p.runs(c, w)]
    overall = progress.add_task("codexbridge bench", total=len(cells))
    results: dict[str, dict[str, Any]] = {c.key: {} for c in configs}
    cpu: dict[str, dict[str, Any]] = {c.key: {} for c in configs}
    children: list[Child] = []
    workdir = Path(tempfile.mkdtemp(prefix="codexbridge-bench-"))
    record_dir = workdir / "recordings"
    recordings: dict[str, int] = {}
    bench_pid = os.getpid()
    keep = False  # the work directory (process logs) stays when something went wrong
    try:
        up_port, up_tls_port = free_ports(2)
        upstream = await start_child("upstream", [sys.executable, "-m", "codexbridge.tools.bench_servers", "--host", HOST,
                                                   "--port", str(up_port), "--tls-port", str(up_tls_port)],
                                     up_port, workdir)
        children.append(upstream)
        # the upstream renders a burst once per size and caches it: do that before anything is measured
        for proto in ("sse", "ws"):
            client = await runner.connect(BY_KEY[f"a_{proto}"], up_port)
            try:
                await client.turn(p.burst, 0, 60.0)
            finally:
                client.close()

        def ours() -> list[int]:
            live = [c.proc.pid for c in children if c.proc.poll() is None]
            return [bench_pid, *live, *(kid for pid in live for kid in child_pids(pid))]  # + recording workers

        quiet = Quiet(p.quiet_budget_s, ours)

        async def prepare(pid: int | None) -> float:
            await settle(pid)
            return await quiet.wait()

        # Every proxy starts now, in parallel, and stays idle and fresh until its turn. The idle workload gets a
        # process of its own: its RSS is measured from a fresh start, and the other workloads do not run on a
        # process that has just seen 2,000 sessions come and go (that changes their figures).
        proxy_groups = [g for g in p.groups if g != "a"]
        wants_idle = "idle" in p.workloads
        say(f"starting mitmdump for {', '.join(proxy_groups) or 'nothing'}"
            + (" (twice each: one for the idle workload)" if wants_idle and proxy_groups else ""))
        proxies: dict[str, Child] = {}
        names = list(proxy_groups)
        if wants_idle:
            names += [f"{g}-idle" for g in proxy_groups if any(p.runs(c, "idle") for c in configs if c.group == g)]
        # the reference bridge (c's options) for the paired figures of d (recording), f (TLS) and g (metrics)
        wants_ref = bool(set(PAIRED_GROUPS) & set(proxy_groups)) and bool({"burst", "paced"} & set(p.workloads))
        if wants_ref:
            names.append("ref")
        metered = [name for name in names if name[0] == "g"]
        ports = free_ports(len(names) + len(metered))  # distinct: every proxy and metrics port at once
        starting = dict(zip(names, ports, strict=False))
        metrics_ports = dict(zip(metered, ports[len(names):], strict=True))
        confdirs = workdir / "confdirs"  # one mitmproxy confdir (and CA) per proxy: none is shared, none is the user's
        started = await asyncio.gather(*(start_child(f"mitmdump-{name}",
                                                     mitmdump_cmd("c" if name == "ref" else name[0], up_port, port,
                                                                  record_dir, p, confdirs / name,
                                                                  metrics_ports.get(name)),
                                                     port, workdir, timeout=60.0) for name, port in starting.items()),
                                       return_exceptions=True)
        for name, child in zip(starting, started, strict=False):
            if not isinstance(child, BaseException):
                proxies[name] = child
                children.append(child)
        for child in started:
            if isinstance(child, BaseException):
                raise child
        for group in p.groups:
            group_cfgs = [c for c in configs if c.group == group]
            mitm = proxies.get(group)
            idle_mitm = proxies.get(f"{group}-idle")
            port = mitm.port if mitm else up_port
            pid = mitm.proc.pid if mitm else upstream.proc.pid
            pids = {"bench": bench_pid, "upstream": upstream.proc.pid}
            if mitm:
                pids["proxy"] = mitm.proc.pid
            scraper = None
            if group == "g":  # scraped while g's workloads run, as Prometheus would
                scraper = Scraper([metrics_ports[n] for n in (f"{group}-idle", group) if n in proxies])
                scraper.start()

            def record(cfg: Config, workload: str, figures: dict[str, Any], watch: Watch) -> None:
                results[cfg.key][workload] = figures
                cpu[cfg.key][workload] = watch.result
                progress.advance(overall)
                main = figures.get(MAIN_FIGURE[workload])
                extra = ""
                if figures.get("error_count") or figures.get("errors"):
                    extra = f" [yellow]({figures.get('error_count') or len(figures['errors'])} errors)[/yellow]"
                say(f"  {cfg.label} · {workload}: {fmt_main(workload, main)}{extra}  "
                    f"[dim]cpu% {watch.result['cpu_percent']}[/dim]")

            for cfg in group_cfgs:  # idle first, on a fresh process, so that RSS is not flattered by freed arenas
                if p.runs(cfg, "idle"):
                    i_port = idle_mitm.port if idle_mitm else port
                    i_pid = idle_mitm.proc.pid if idle_mitm else pid
                    i_pids = {**pids, "proxy": i_pid} if idle_mitm else pids
                    await runner.warm(cfg, i_port)
                    with Watch(i_pids, ours, await prepare(i_pid if idle_mitm else None)) as watch:
                        figures = await runner.idle(cfg, i_port, i_pid)
                    record(cfg, "idle", figures, watch)
                    await settle(i_pid if idle_mitm else None, limit=15.0)
            if idle_mitm is not None:
                if idle_mitm.proc.poll() is not None:
                    keep = True
                    say(f"[red]mitmdump for {group} (idle) died[/red]:\n{idle_mitm.tail()}")
                idle_mitm.stop()
                children.remove(idle_mitm)
                if scraper is not None:
                    scraper.ports = [port for port in scraper.ports if port != metrics_ports.get(f"{group}-idle")]
            for cfg in group_cfgs:
                cfg_port = up_tls_port if cfg.key == "a_wss" else port  # (a_wss: the upstream's TLS port)
                await runner.warm(cfg, cfg_port)
                if group == "d" and mitm is not None:
                    for kid in child_pids(mitm.proc.pid):  # the recording worker: its CPU is part of d's cost
                        pids["recorder"] = kid
                for workload in ("burst", "first"):
                    if p.runs(cfg, workload):
                        with Watch(pids, ours, await prepare(pid if mitm else None)) as watch:
                            if workload == "burst":
                                figures = await runner.burst(cfg, cfg_port, pid if mitm else None)
                            else:
                                figures = await runner.first(cfg, cfg_port)
                        record(cfg, workload, figures, watch)
                want_paced = p.runs(cfg, "paced")
                want_hs = p.runs(cfg, "handshake")
                if want_paced or want_hs:
                    with Watch(pids, ours, await prepare(pid if mitm else None)) as watch:
                        paced, hs = await runner.paced(cfg, cfg_port, probes=want_hs)
                    for _ in range(p.handshake_rounds - 1 if hs is not None else 0):  # their probes pooled
                        await prepare(pid if mitm else None)
                        _, more = await runner.paced(cfg, cfg_port, probes=True)
                        assert hs is not None and more is not None
                        hs = merge_probes(hs, more)
                    if want_paced:
                        record(cfg, "paced", paced, watch)
                    if hs is not None:
                        if not want_paced:
                            hs["load"] = {k: paced[k] for k in ("p50_s", "completed", "sessions")}
                        record(cfg, "handshake", hs, watch)
                if p.runs(cfg, "storm"):
                    with Watch(pids, ours, await prepare(pid if mitm else None)) as watch:
                        figures = await runner.storm(cfg, cfg_port, pid if mitm else None)
                    record(cfg, "storm", figures, watch)
            ref = proxies.get("ref") if group in PAIRED_GROUPS else None
            if ref is not None and mitm is not None:
                subject_cfg = group_cfgs[0]
                ref_cfg = BY_KEY["c"]
                await runner.warm(ref_cfg, ref.port)
                paired_pids = {**pids, "reference": ref.proc.pid}
                feature = {"d": "recording", "g": "metrics"}.get(group)
                if feature is not None and "burst" in p.workloads:
                    with Watch(paired_pids, ours, await prepare(pid)) as watch:
                        figures = await runner.paired_burst(subject_cfg, (mitm.port, mitm.proc.pid),
                                                            (ref.port, ref.proc.pid), feature)
                    results[subject_cfg.key][f"{feature}_cost"] = figures
                    cpu[subject_cfg.key][f"{feature}_cost"] = watch.result
                    cost = figures["cost"]
                    say(f"  {subject_cfg.label} · {feature} cost (paired bursts): "
                        f"{'—' if cost is None else f'{cost * 100:.1f} % (×{1 - cost:.2f} throughput)'}")
                if "paced" in p.workloads:
                    name = {"d": "recording_cpu", "f": "tls_cpu", "g": "metrics_cpu"}[group]
                    with Watch(paired_pids, ours, await prepare(pid)) as watch:
                        figures = await runner.paired_paced_cpu(subject_cfg, (mitm.port, mitm.proc.pid), ref_cfg,
                                                                (ref.port, ref.proc.pid))
                    results[subject_cfg.key][name] = figures
                    cpu[subject_cfg.key][name] = watch.result
                    ratio = figures["ratio"]
                    say(f"  {subject_cfg.label} · {name.replace('_', ' ')} (paired paced, vs the reference bridge): "
                        f"{'—' if ratio is None else f'×{ratio:.2f}'} [dim]({figures['subject_cpu_s']} s vs "
                        f"{figures['reference_cpu_s']} s)[/dim]")
                if not set(PAIRED_GROUPS) & set(p.groups[p.groups.index(group) + 1:]):  # its last use
                    ref.stop()
                    children.remove(ref)
            if scraper is not None:
                scraper.stop()
                results[group]["metrics_scrapes"] = scraper.result()
                say(f"  {group_cfgs[0].label} · /metrics scraped {scraper.scrapes} times, every {scraper.every:g} s"
                    f" [dim](the last scrape counted {scraper.counted('codexbridge_sessions_total'):,.0f} sessions)"
                    f"[/dim]")
            if group == "d" and record_dir.is_dir():  # proof that d really recorded
                files = list(record_dir.glob("*.jsonl"))
                recordings = {"files": len(files), "bytes": sum(f.stat().st_size for f in files if f.is_file())}
            if mitm is not None:
                if mitm.proc.poll() is not None:
                    keep = True
                    say(f"[red]mitmdump for {group} died[/red]:\n{mitm.tail()}")
                mitm.stop()
                children.remove(mitm)
        return {"results": results, "cpu": cpu, "cells": [list(c) for c in cells],
                "waited_for_quiet_s": round(quiet.waited, 1), "d_recordings": recordings}
    except BaseException:
        keep = True
        raise
    finally:
        for child in reversed(children):
            child.stop()
        if keep:
            say(f"[yellow]process logs kept in {workdir}[/yellow]")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- reporting ------------------------------------------------------------------------------------


def fmt_main(workload: str, v: Any) -> str:
    if v is None:
        return "—"
    if workload == "burst":
        return f"{v / 1000:,.1f}k ev/s"
    if workload == "paced":
        return f"{v:.3f} s"
    if workload in ("first", "handshake", "storm"):
        return f"{v:.2f} ms"
    return f"{v:.1f} KB/session"


ROWS: tuple[tuple[str, str, str, str, bool], ...] = (
    # workload, figure, label, unit, show ratio
    ("burst", "events_per_s", "burst: events/s (median)", "ev", True),
    ("paced", "p50_s", "paced: completion p50", "s", True),
    ("paced", "p99_s", "paced: completion p99", "s", False),
    ("first", "p50_ms", "first event p50", "ms", True),
    ("first", "p90_ms", "first event p90", "ms", False),
    ("handshake", "p50_ms", "handshake p50 (under paced load)", "ms", True),
    ("handshake", "p99_ms", "handshake p99", "ms", False),
    ("idle", "kb_per_session", "idle: RSS per session", "KB", True),
    ("idle", "lateness_p50_ms", "idle: ping lateness p50", "ms", False),
    ("idle", "lateness_p99_ms", "idle: ping lateness p99", "ms", False),
    ("idle", "lateness_hold_p99_ms", "idle: lateness p99, once all open", "ms", False),
    ("idle", "open_s", "idle: time to open all sessions", "s", False),
    ("idle", "pings", "idle: pings / lost sessions", "pings", False),
    ("storm", "p50_ms", "storm: upgrade p50 (all at once)", "ms", True),
    ("storm", "p95_ms", "storm: upgrade p95", "ms", False),
)


def fmt(v: Any, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "ev":
        return f"{v:,.0f}/s"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "ms":
        return f"{v:.2f} ms" if abs(v) < 100 else f"{v:.0f} ms"
    if unit == "KB":
        return f"{v:.1f} KB"
    return str(v)


def figure(results: dict[str, Any], key: str, workload: str, name: str) -> Any:
    return results.get(key, {}).get(workload, {}).get(name)


def build_targets(p: Params, results: dict[str, Any]) -> list[dict[str, Any]]:
    def fig(key: str, wl: str, name: str) -> Any:
        return figure(results, key, wl, name)

    targets: list[dict[str, Any]] = []

    def add(name: str, threshold: str, measured: Any, shown: str, met: bool | None) -> None:
        targets.append({"target": name, "threshold": threshold, "measured": measured, "shown": shown,
                        "met": met})

    v = fig("c", "burst", "events_per_s")
    if v is not None:
        add("burst, one session, through the bridge (c)", ">= 120,000 events/s", v, f"{v:,.0f} events/s",
            v >= 120_000)
    c, a = fig("c", "paced", "p50_s"), fig("a_sse", "paced", "p50_s")
    if c is not None and a:
        add(f"{p.sessions} paced sessions, completion p50 (c vs a SSE)", "<= 1.25 × direct", c / a,
            f"×{c / a:.3f} ({c:.3f} s vs {a:.3f} s)", c / a <= 1.25)
    c, a = fig("c", "first", "p50_ms"), fig("a_sse", "first", "p50_ms")
    if c is not None and a is not None:
        add("first event over a warm connection, p50 (c − a SSE)", "<= +0.5 ms", c - a,
            f"+{c - a:.3f} ms ({c:.3f} vs {a:.3f} ms)", c - a <= 0.5)
    for key, limit in (("c", 5.0), ("e", 50.0), ("f", 15.0)):
        v = fig(key, "handshake", "p50_ms")
        if v is not None:
            add(f"handshake p50 while {p.sessions} sessions stream ({BY_KEY[key].label})", f"<= {limit:g} ms", v,
                f"{v:.2f} ms", v <= limit)
    v, v95 = fig("c", "storm", "p50_ms"), fig("c", "storm", "p95_ms")
    if v is not None and v95 is not None:
        add(f"{p.storm} clients opening at once, upgrade p50 ({BY_KEY['c'].label})", "<= 100 ms", v, f"{v:.1f} ms",
            v <= 100)
        add(f"{p.storm} clients opening at once, upgrade p95 ({BY_KEY['c'].label})", "<= 250 ms", v95,
            f"{v95:.1f} ms", v95 <= 250)
    for key, limit in (("c", 48.0), ("e", 48.0), ("f", 64.0)):
        v = fig(key, "idle", "kb_per_session")
        if v is not None:
            add(f"{p.idle} idle sessions, RSS each ({BY_KEY[key].label})", f"<= {limit:g} KB", v, f"{v:.1f} KB",
                v <= limit)
        v = fig(key, "idle", "lateness_p99_ms")
        if v is not None:
            add(f"{p.idle} idle sessions, ping lateness p99 ({BY_KEY[key].label})", "<= 250 ms", v,
                f"{v:.1f} ms", v <= 250)
        elif fig(key, "idle", "opened"):
            add(f"{p.idle} idle sessions, ping lateness p99 ({BY_KEY[key].label})", "<= 250 ms", None,
                "no ping seen", False)
    paired = results.get("d", {}).get("recording_cost") or {}
    c, d = fig("c", "burst", "events_per_s"), fig("d", "burst", "events_per_s")
    if paired.get("cost") is not None:
        kept = 1 - paired["cost"]
        add("recording on: burst throughput (d vs the reference bridge without recording, paired bursts)",
            ">= 0.9 × without", kept, f"×{kept:.2f} ({paired['with_recording_events_per_s']:,.0f} vs "
            f"{paired['without_recording_events_per_s']:,.0f} ev/s)", kept >= 0.9)
    elif c and d is not None:
        add("recording on: burst throughput (d vs c)", ">= 0.9 × without", d / c, f"×{d / c:.2f}", d / c >= 0.9)
    paired = results.get("g", {}).get("metrics_cost") or {}
    if paired.get("cost") is not None:
        kept = 1 - paired["cost"]
        add("metrics on, scraped every second: burst throughput (g vs the reference bridge, paired bursts)",
            ">= 0.9 × without", kept, f"×{kept:.2f} ({paired['with_metrics_events_per_s']:,.0f} vs "
            f"{paired['without_metrics_events_per_s']:,.0f} ev/s)", kept >= 0.9)
    for key, name, what, limit in (("d", "recording_cpu", "recording on: CPU of proxy + recording worker", 1.25),
                                   ("f", "tls_cpu", "client over TLS: proxy CPU", 1.3),
                                   ("g", "metrics_cpu", "metrics on, scraped every second: proxy CPU", 1.1)):
        paired = results.get(key, {}).get(name) or {}
        ratio = paired.get("ratio")
        if ratio is not None:
            add(f"{what}, {p.sessions} paced sessions (vs the reference bridge, paired)", f"<= {limit:g} × without",
                ratio, f"×{ratio:.2f} ({paired['subject_cpu_s']:.2f} s vs {paired['reference_cpu_s']:.2f} s)",
                ratio <= limit)
    return targets


def render(out: Console, p: Params, report: dict[str, Any]) -> None:
    results = report["results"]
    keys = [c.key for c in CONFIGS if c.key in results]
    table = Table(title=f"codexbridge bench — medians, (×ratio) to the direct baseline "
                        f"({p.label} run, {report['duration_s']:.0f} s)",
                  title_justify="left", show_lines=False)
    table.add_column("workload / figure", no_wrap=True)
    for k in keys:
        table.add_column(BY_KEY[k].label, justify="right", no_wrap=True)
    last = None
    for workload, name, label, unit, ratio in ROWS:
        if workload not in p.workloads:
            continue
        if last is not None and workload != last:
            table.add_section()
        last = workload
        cells = []
        for k in keys:
            cfg = BY_KEY[k]
            if not p.runs(cfg, workload):
                cells.append("n/a")
                continue
            v = figure(results, k, workload, name)
            if name == "pings" and workload == "idle":
                r = results.get(k, {}).get("idle")
                cells.append("—" if r is None else f"{r['pings']:,} / {r['lost']}")
                continue
            if name.startswith("lateness") and not cfg.pings:
                cells.append("no pings")
                continue
            text = fmt(v, unit)
            base = cfg.baseline_for(workload)
            bv = figure(results, base, workload, name) if base else None
            if ratio and v is not None and bv:
                text += f" [dim](×{v / bv:.2f})[/dim]"
            cells.append(text)
        table.add_row(label, *cells)
    out.print(table)
    what = {
        "burst": f"burst: {p.burst:,} deltas × up to {p.burst_repeats} sessions",
        "paced": f"paced: {p.sessions} sessions × {p.paced_deltas} deltas {p.pace_ms} ms apart, started together "
                 f"(ideal {p.paced_deltas * p.pace_ms / 1000:.2f} s)",
        "first": f"first: {p.repeats} turns on one warm connection",
        "handshake": f"handshake: a new upgrade at a random moment of every {p.handshake_gap * 1000:.0f} ms (open "
                     f"loop) while the {p.sessions} paced sessions stream, {p.handshake_rounds} such run(s) pooled",
        "idle": f"idle: {p.idle} sessions (one tiny turn each) held {p.idle_hold:g} s after all opened, pings every "
                f"{p.ping_interval} s (a: the upstream pings; b: nobody pings); RSS of the process holding them",
        "storm": f"storm: {p.storm} clients connect at the same moment ({p.storm_rounds} round(s)); connect to 101",
    }
    out.print("[dim]" + "; ".join(what[w] for w in p.workloads) + ". Ratios: b SSE, c, d, f, g vs a SSE; b WS, e vs a WS; "
              "handshake, idle and storm vs a WS (f's handshake vs a WS TLS). f: the client speaks TLS to the proxy. "
              f"g: the bridge with codexbridge_metrics, its /metrics scraped every {SCRAPE_EVERY:g} s.[/dim]")
    m = report["machine"]
    walls = [(w["wall_s"], w.get("foreign_cpu_percent") or 0.0) for per in report["cpu"].values()
             for wl, w in per.items() if not (wl == "handshake" and "paced" in per)]
    total = sum(x for x, _ in walls)
    mean = sum(x * f for x, f in walls) / total if total else 0.0
    out.print(f"[dim]{m['cpu_count']} × {m['cpu_model']}, Python {m['python']}, mitmproxy {m['mitmproxy']}; "
              f"other processes used {mean:.0f}% of a core on average while measuring (max "
              f"{max((f for _, f in walls), default=0):.0f}%); waited {report.get('waited_for_quiet_s', 0):g} s "
              f"for quiet.[/dim]")
    targets = report["targets"]
    if targets:
        tt = Table(title="targets", title_justify="left")
        tt.add_column("target")
        tt.add_column("threshold", no_wrap=True)
        tt.add_column("measured", justify="right", no_wrap=True)
        tt.add_column("", no_wrap=True)
        for t in targets:
            verdict = "[green]met[/green]" if t["met"] else "[red]not met[/red]"
            tt.add_row(t["target"], t["threshold"], t["shown"], verdict)
        out.print(tt)
    warnings = report.get("warnings") or []
    for w in warnings:
        out.print(f"[yellow]note:[/yellow] {w}")


def measurement_warnings(report: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    foreign: list[str] = []
    lagging: list[str] = []
    for key, per in report["cpu"].items():
        for workload, w in per.items():
            if w["wall_s"] < 1.0:  # /proc CPU ticks are 10 ms: shorter windows say nothing
                continue
            if workload == "handshake" and "paced" in per:
                continue  # the same window as paced
            where = f"{BY_KEY[key].label} {workload}"
            bench = w["cpu_percent"].get("bench")
            if bench is not None and bench >= 85:
                notes.append(f"{where}: the bench client used {bench:.0f}% of a core; it may be the bottleneck")
            up = w["cpu_percent"].get("upstream")
            if up is not None and up >= 85:
                notes.append(f"{where}: the loopback upstream used {up:.0f}% of a core; it may be the bottleneck")
            lag = (w.get("bench_loop_lag_ms") or {}).get("p99")
            if lag is not None and lag >= 20:
                lagging.append(f"{where} ({lag:.0f} ms)")
            f = w.get("foreign_cpu_percent")
            if f is not None and f >= 25:
                foreign.append(f"{where} ({f:.0f}%)")
    if lagging:
        notes.append("the bench client's own event loop lagged >= 20 ms at p99 (latencies include it) during: "
                     + ", ".join(lagging))
    if foreign:
        notes.append("processes outside this benchmark used >= 25% of a core (figures are pessimistic) during: "
                     + ", ".join(foreign))
    for key, per in report["results"].items():
        for workload, figures in per.items():
            n = figures.get("error_count") if "error_count" in figures else len(figures.get("errors") or [])
            if n:
                first = (figures.get("errors") or ["?"])[0]
                notes.append(f"{BY_KEY[key].label} {workload}: {n} error(s), first: {first}")
    return notes


def run(args: argparse.Namespace) -> int:
    p = params_from(args)
    nofile = raise_nofile()
    need = p.idle * 2 + p.sessions * 2 + 256
    err = Console(stderr=True)
    if not err.is_terminal:
        err = Console(stderr=True, width=160)
    if nofile < need:
        err.print(f"[yellow]open-file limit {nofile} is below the {need} this run needs; lower --idle[/yellow]")
    out = Console()
    if not out.is_terminal:
        out = Console(width=220)
    json_path = Path(args.json or "codexbridge-bench.json")
    started = dt.datetime.now(dt.UTC)
    load_start = loadavg()
    t0 = time.monotonic()
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=False)

    def say(msg: str) -> None:
        progress.console.print(msg)

    async def main() -> dict[str, Any]:
        async with asyncio.timeout(p.max_seconds):
            return await run_all(p, progress, say)

    try:
        with progress:
            raw = asyncio.run(main())
    except TimeoutError:
        err.print(f"[red]the benchmark hit its {p.max_seconds:.0f} s limit and stopped[/red]")
        return 1
    except (BenchError, OSError) as e:
        err.print(f"[red]benchmark failed:[/red] {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    load_end = loadavg()
    report: dict[str, Any] = {
        "tool": "codexbridge bench",
        "started_at": started.isoformat(),
        "duration_s": round(time.monotonic() - t0, 1),
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": load_end},
        "params": {k: v for k, v in p.__dict__.items()},
        "configs": {c.key: {"label": c.label, "protocol": c.proto, "baseline": c.baseline}
                    for c in CONFIGS if c.group in p.groups},
        **raw,
    }
    report["figures"] = {k: {w: v.get(MAIN_FIGURE[w]) for w, v in per.items()} for k, per in raw["results"].items()}
    report["targets"] = build_targets(p, raw["results"])
    report["warnings"] = measurement_warnings(report)
    json_path.write_text(json.dumps(report, indent=1))
    render(out, p, report)
    out.print(f"[dim]wrote {json_path}[/dim]")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options (cli.py declares the same ones; this is for running the module alone)."""
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--idle", type=int)
    parser.add_argument("--burst", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--idle-hold", type=float)
    parser.add_argument("--only")
    parser.add_argument("--workloads")
    parser.add_argument("--json")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m codexbridge.tools.bench")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
